"""After every scenario: the API key and a task secret reached the API and nothing else: no
component or task log, and no row of the PostgreSQL metadata database."""

from __future__ import annotations

from airflow_provider_browseruse.testing import BrowserUseEmulator
from deploy.cluster import Cluster
from deploy.conftest import API_KEY, SECRET, Scoreboard


def test_the_key_and_a_task_secret_are_in_no_log_and_no_database_row(
    cluster: Cluster, emulator: BrowserUseEmulator, scoreboard: Scoreboard
) -> None:
    # Both were used: the key on every request, the secret sent with the login example's task.
    assert any(task.secrets == {"password": SECRET} for task in emulator.state.tasks.values())
    assert len(emulator.requests()) > 100
    root = cluster.home.parent
    logs = [
        path
        for path in root.rglob("*")
        if path.is_file() and "pgdata" not in path.parts and path.suffix != ".py" and path.suffix != ".csv"
    ]
    leaks = [
        f"{path.relative_to(root)}: {word}"
        for path in logs
        for word in (API_KEY, SECRET)
        if word in path.read_text(errors="replace")
    ]
    task_logs = [path for path in logs if "dag_id=" in str(path)]
    components = {path.stem for path in logs if path.parent == cluster.home}
    assert len(task_logs) >= 40, "the search did not cover the task logs"
    assert {"scheduler", "triggerer", "worker1", "worker2", "api-server", "dag-processor"} <= components
    dump = cluster.database.dump()  # XCom, rendered fields, trigger rows, next_kwargs, connections
    for table in ("xcom", "rendered_task_instance_fields", "trigger", "task_instance", "connection"):
        assert f"COPY public.{table} " in dump
    leaks += [f"metadata database: {word}" for word in (API_KEY, SECRET) if word in dump]
    assert leaks == []
    scoreboard.tasks = len(task_logs)  # here: the task logs searched
