"""API v4 at DAG level: each path of RunAgentOperator in a DAG run with dag.test() (Airflow's own
task runner, XCom and task state store) against the emulator; each ends with no active run and
no active browser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_browseruse import testing
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario

pytestmark = pytest.mark.dag

DAG_FILE = """
from datetime import timedelta
from airflow.sdk import DAG
from airflow_provider_browseruse.operators import RunAgentOperator

with DAG("v4_path", schedule=None, default_args={{"retries": {retries}, "retry_delay": timedelta(seconds=0)}}):
    RunAgentOperator(task_id="agent", task={task!r}, poll_interval=0.1, **{kwargs!r})
"""
PRICE = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "price_gbp": {"type": "number"}},
    "required": ["title", "price_gbp"],
}
REPAIR = "did not match the required JSON Schema"

CASES: dict[str, dict[str, Any]] = {
    "success, deferred": {
        "rules": [("job", {"output": "done", "duration": 0.5})],
        "kwargs": {"deferrable": True},
        "state": "success",
        "output": "done",
    },
    "failed": {"rules": [("job", {"status": "failed", "duration": 0.1})], "state": "failed", "status": "failed"},
    "cancelled": {"rules": [("job", {"status": "stopped", "duration": 0.1})], "state": "failed", "status": "cancelled"},
    "judge says no": {
        "rules": [("job", {"output": "done", "judge_verdict": False, "duration": 0.1})],
        "kwargs": {"judge": True, "success_policy": "judge"},
        "state": "failed",
        "status": "completed",
    },
    "budget reached": {
        "rules": [("job", {"cost_per_second": "1.0", "duration": 30})],
        "kwargs": {"max_cost_usd": 0.5},
        "retries": 2,  # a budget failure is final: no retry pays again
        "state": "failed",
        "runs": 1,
    },
    "structured, valid": {
        "rules": [("job", {"output_json": {"title": "Dune", "price_gbp": 12.5}, "duration": 0.1})],
        "kwargs": {"structured_output": PRICE},
        "state": "success",
        "output": {"title": "Dune", "price_gbp": 12.5},
    },
    "structured, repaired": {
        "rules": [
            (REPAIR, {"output_json": {"title": "Dune", "price_gbp": 12.5}, "duration": 0.1}),
            ("job", {"output": "twelve pounds fifty", "duration": 0.1}),
        ],
        "kwargs": {"structured_output": PRICE, "deferrable": True},
        "state": "success",
        "output": {"title": "Dune", "price_gbp": 12.5},
        "runs": 2,
    },
    "structured, still invalid": {
        "rules": [
            (REPAIR, {"output": "Sorry: twelve fifty", "duration": 0.1}),
            ("job", {"output": "12.50", "duration": 0.1}),
        ],
        "kwargs": {"structured_output": PRICE},
        "state": "failed",
        "runs": 2,
    },
    "timeout": {
        "rules": [("job", {"duration": 60})],
        "kwargs": {"timeout": 1},
        "state": "failed",
        "status": "cancelled",
    },
    "retry adopts the run": {
        "rules": [("job", {"output": "adopted", "duration": 3})],
        "kwargs": {"timeout": 1, "stop_on_give_up": False},
        "retries": 3,
        "state": "success",
        "output": "adopted",
        "runs": 1,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_v4_path_in_a_dag_run(emulator: BrowserUseEmulator, tmp_path: Path, case: str) -> None:
    spec = CASES[case]
    scenario = Scenario()
    for match, script in spec["rules"]:
        scenario.add(match, **script)
    emulator.state.scenario = scenario
    dag_file = tmp_path / "v4_path.py"
    dag_file.write_text(
        DAG_FILE.format(retries=spec.get("retries", 0), task="the job: price of Dune", kwargs=spec.get("kwargs", {}))
    )
    result = testing.run_dag(dag_file)
    assert result.task_states == {"agent": spec["state"]}, case
    runs = list(emulator.state.v4.runs.values())
    assert len(runs) == spec.get("runs", 1), [run.prompt for run in runs]
    if "output" in spec:
        assert result.xcom("agent") == spec["output"]
    if "status" in spec:  # what the remote run came to, the operator's final read or not
        assert [emulator.state.v4.get_run(run.id)["status"] for run in runs] == [spec["status"]]
    if case == "budget reached":
        assert 0.5 <= result.xcom("agent", "cost_usd") < 1.0
    assert emulator.active_run_count() == 0 and emulator.active_browser_count() == 0
