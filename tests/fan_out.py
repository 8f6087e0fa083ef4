"""A wide fan-out against a capped account, under a real scheduler: shared by
tests/test_scheduler.py (which asserts) and `make bench` (which prints the figures)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.local_airflow import local_airflow

POOL = "browser_use"
ENDED = "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')"
DAG_FILE = """
from airflow.sdk import DAG
from airflow_provider_browseruse.operators import RunTaskOperator

for dag_id, pool in (("fan_out_pooled", {pool!r}), ("fan_out_unpooled", "default_pool")):
    with DAG(dag_id, schedule=None, default_args={{"retries": 0}}) as dag:
        RunTaskOperator.partial(task_id="run", poll_interval=0.5, timeout=900, pool=pool).expand(
            task=[f"capped job {{n}} of {{dag_id}}" for n in range({tasks})]
        )
    globals()[dag_id] = dag
"""


def fan_out_runs(
    home: Path, emulator: BrowserUseEmulator, *, tasks: int, cap: int, duration: float, key: str
) -> dict[str, Any]:
    """Run the fan-out with a pool sized to the cap, then without one; return what each did."""
    emulator.state.api_key = key
    emulator.state.max_concurrent_sessions = cap
    emulator.state.retry_after = 1
    emulator.state.scenario = Scenario().add("capped job", duration=duration, start_delay=0)
    dags = {"fan_out.py": DAG_FILE.format(pool=POOL, tasks=tasks)}
    # parallelism above the cap: without a pool, Airflow would start more tasks than the API allows.
    with local_airflow(home, dags, emulator.base_url, key, {"AIRFLOW__CORE__PARALLELISM": str(2 * cap + 2)}) as airflow:
        limit = airflow.session_limit()
        airflow.cli("pools", "set", POOL, limit, "Browser Use concurrent sessions", "--include-deferred")
        parsed = "SELECT count(*) FROM dag WHERE dag_id LIKE 'fan_out_%'"
        airflow.wait_for("the DAGs to be parsed", lambda: airflow.query(parsed)[0][0] == 2)
        figures: dict[str, Any] = {"pool_slots": int(limit)}
        for name in ("pooled", "unpooled"):
            dag_id = f"fan_out_{name}"
            airflow.cli("dags", "unpause", dag_id)
            emulator.state.peak_active_sessions = emulator.state.refused_at_cap = 0
            before = len(emulator.requests("POST", "/tasks"))
            started = time.monotonic()
            airflow.cli("dags", "trigger", dag_id)
            airflow.wait_for(f"{dag_id} to end", lambda d=dag_id: bool(airflow.query(ENDED, d)), timeout=900)
            wall = time.monotonic() - started
            posts = emulator.requests("POST", "/tasks")[before:]
            prompts = Counter(t.prompt for t in emulator.state.tasks.values() if t.prompt.endswith(dag_id))
            states = Counter(
                row[0] for row in airflow.query("SELECT state FROM task_instance WHERE dag_id = ?", dag_id)
            )
            figures[name] = {
                "run_state": airflow.query(ENDED, dag_id)[0][0],
                "task_states": dict(states),
                "wall_seconds": round(wall, 1),
                "answered_429": sum(r.status == 429 for r in posts),
                "peak_active_sessions": emulator.state.peak_active_sessions,
                "tasks_created": len(prompts),
                "most_tasks_for_one_prompt": max(prompts.values(), default=0),
                "active_sessions_after": emulator.active_session_count(),
            }
        figures["ideal_seconds"] = round(tasks * duration / cap, 1)
    return figures
