"""Deferred waits on v2 and v4, for a triggerer restart (the survivors) and a user marking tasks
failed through the REST API (the victims: their remote work must be stopped)."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_provider_browseruse.operators import RunAgentOperator, RunTaskOperator

with DAG("deploy_deferred", schedule=None, default_args={"retries": 0}, tags=["deploy"]):
    for name in ("survivor", "victim"):
        RunTaskOperator(task_id=f"v2_{name}", task=f"deferred v2 {name}", deferrable=True, poll_interval=1)
        RunAgentOperator(task_id=f"v4_{name}", task=f"deferred v4 {name}", deferrable=True, poll_interval=1)
