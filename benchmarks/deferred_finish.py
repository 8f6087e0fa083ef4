"""What a deferred RunTaskOperator costs in workers, under a real scheduler and triggerer.

Two DAGs map the same deferrable RunTaskOperator over N prompts against the emulator (in its own
process): one ends each task in the triggerer (``end_from_trigger=True``, the default), the
other resumes it on a worker (``end_from_trigger=False``: dbt Cloud's pattern, the baseline).
They run one after the other on one Airflow (LocalExecutor, SQLite; tests/local_airflow.py).

Per task: worker seconds (the spans of the task's log written by worker processes: start to
deferral, and resume to end; process start-up before the first line is not counted), worker
runs, and the delay from the remote task's ``finishedAt``
to the Airflow task's ``end_date``. Nothing here asserts a time.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.local_airflow import local_airflow  # noqa: E402

ENDED = "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')"
PATHS = {"triggerer": "bench_ends_in_triggerer", "worker": "bench_resumes_on_worker"}

DAG_FILE = """
from airflow.sdk import DAG
from airflow_provider_browseruse.operators import RunTaskOperator

for dag_id, end_from_trigger in (({triggerer!r}, True), ({worker!r}, False)):
    with DAG(dag_id, schedule=None, default_args={{"retries": 0}}) as dag:
        RunTaskOperator.partial(
            task_id="run", deferrable=True, poll_interval={poll}, timeout=600, end_from_trigger=end_from_trigger
        ).expand(task=[f"bench job {{i}}" for i in range({tasks})])
    globals()[dag_id] = dag
"""


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def worker_spans(log: Path) -> list[float]:
    """Seconds of each worker run in a task's log (first to last line; each run opens with the
    task runner's "Pre Execute" group). Trigger lines go to a file of their own."""
    runs: list[list[datetime]] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            moment = _utc(record["timestamp"])
        except (ValueError, KeyError, TypeError):
            continue
        if record.get("event") == "::group::Pre Execute" or not runs:
            runs.append([])
        runs[-1].append(moment)
    return [(run[-1] - run[0]).total_seconds() for run in runs]


def run_once(airflow: Any, dag_id: str, run_id: str) -> str:
    airflow.cli("dags", "trigger", dag_id, "--run-id", run_id)
    ended = "SELECT state FROM dag_run WHERE run_id = ? AND state IN ('success', 'failed')"
    airflow.wait_for(f"{run_id} to end", lambda: bool(airflow.query(ended, run_id)), timeout=600)
    return airflow.query(ended, run_id)[0][0]


def measure(tasks: int, duration: float, poll: float, key: str, env: dict[str, str]) -> dict[str, Any]:
    from airflow_provider_browseruse.testing import EmulatorProcess

    figures: dict[str, Any] = {"deferred_tasks": tasks, "deferred_task_seconds": duration}
    dag_file = DAG_FILE.format(tasks=tasks, poll=poll, **PATHS)
    with (
        tempfile.TemporaryDirectory(prefix="bench-deferred-") as home,
        EmulatorProcess(key, task_duration=duration, env=env) as emulator,
        local_airflow(Path(home), {"bench_deferred.py": dag_file}, emulator.base_url, key) as airflow,
    ):
        parsed = "SELECT count(*) FROM dag WHERE dag_id IN (?, ?)"
        airflow.wait_for("the DAGs to be parsed", lambda: airflow.query(parsed, *PATHS.values())[0][0] == 2)
        for dag_id in PATHS.values():
            airflow.cli("dags", "unpause", dag_id)
        run_once(airflow, PATHS["worker"], "warm_up")  # the first task processes pay cold imports
        api = requests.Session()
        api.headers["X-Browser-Use-API-Key"] = key
        for path, dag_id in PATHS.items():
            run_id = f"measured_{path}"
            figures[f"deferred_{path}_state"] = run_once(airflow, dag_id, run_id)
            rows = airflow.query(
                "SELECT ti.map_index, ti.end_date, x.value FROM task_instance ti JOIN xcom x ON x.dag_id = ti.dag_id "
                "AND x.run_id = ti.run_id AND x.task_id = ti.task_id AND x.map_index = ti.map_index "
                "AND x.key = 'browser_use_task_id' WHERE ti.run_id = ?",
                run_id,
            )
            delays, seconds, runs = [], [], []
            for map_index, end_date, remote_id in rows:
                remote = api.get(f"{emulator.base_url}/tasks/{json.loads(remote_id)}", timeout=10).json()
                delays.append((_utc(end_date) - _utc(remote["finishedAt"])).total_seconds())
                log = Path(home) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=run"
                spans = worker_spans(log / f"map_index={map_index}" / "attempt=1.log")
                seconds.append(sum(spans))
                runs.append(len(spans))
            figures[f"deferred_{path}_worker_seconds"] = statistics.mean(seconds)
            figures[f"deferred_{path}_worker_runs"] = statistics.mean(runs)
            figures[f"deferred_{path}_end_delay_s"] = statistics.median(delays)
    return figures
