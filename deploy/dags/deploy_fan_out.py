"""40 prompts, each on a one-off session, through the ``browser_use`` pool sized to the account's cap."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_provider_browseruse.operators import RunTaskOperator

with DAG("deploy_fan_out", schedule=None, default_args={"retries": 0}, tags=["deploy"]):
    RunTaskOperator.partial(task_id="run", poll_interval=0.5, timeout=900, pool="browser_use").expand(
        task=[f"fan-out job {n}" for n in range(40)]
    )
