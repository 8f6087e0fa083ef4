"""A synchronous task whose worker dies mid-run: Airflow's retry must adopt the remote task, and
the teardown must stop the session whatever became of the work."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_browseruse.operators import CreateSessionOperator, RunTaskOperator, StopSessionOperator

with DAG("deploy_worker_killed", schedule=None, default_args={"retries": 0}, tags=["deploy"]):
    session = CreateSessionOperator(task_id="create_session", keep_alive=True)
    work = RunTaskOperator(
        task_id="work",
        task="worker-kill job: read the long report",
        session_id=session.output,
        poll_interval=1,
        timeout=600,
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
    stop = StopSessionOperator(task_id="stop_session", session_id=session.output)
    session >> work >> stop.as_teardown(setups=session)
