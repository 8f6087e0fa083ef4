"""Maintenance, hourly: stop forgotten Browser Use sessions, the browsers nobody is watching.

A safety net for what teardowns cannot catch: a worker killed hard (no ``on_kill`` runs), a DAG
without a teardown, a session left from a manual test. Only sessions the provider started are
touched (see StopIdleSessionsOperator), never one with a task still running. Its return value
lists what it stopped, with each session's age and cost.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_browseruse.operators import StopIdleSessionsOperator

with DAG(
    dag_id="browser_use_sweeper",
    schedule="@hourly",
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["browser_use", "example", "maintenance"],
    doc_md=__doc__,
):
    StopIdleSessionsOperator(
        task_id="stop_forgotten_sessions",
        max_idle=timedelta(minutes=30),
        max_age=timedelta(hours=6),
    )
