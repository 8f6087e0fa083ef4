"""Never leak a browser: StopSessionOperator as a teardown stops the session even when the work
upstream fails, and the DAG run still reports that failure.

Trigger with ``{"fail_work": true}`` to see it: ``work`` fails, ``stop_session`` still runs.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airflow_provider_browseruse.operators import (
    CreateSessionOperator,
    RunTaskOperator,
    StopSessionOperator,
)

with DAG(
    dag_id="browser_use_teardown",
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
    params={"fail_work": Param(False, type="boolean", description="make the work fail on purpose")},
    tags=["browser_use", "example"],
    doc_md=__doc__,
):
    session = CreateSessionOperator(task_id="create_session", keep_alive=True)
    visit = RunTaskOperator(
        task_id="visit",
        session_id=session.output,
        task="Open https://example.com and report the page title.",
        poll_interval=1,
        timeout=300,
    )

    @task
    def work(title: str, params: dict | None = None) -> str:
        if params and params["fail_work"]:
            raise RuntimeError("the work failed (on purpose, to show the teardown)")
        return title.upper()

    stop = StopSessionOperator(task_id="stop_session", session_id=session.output, missing_ok=True)

    session >> visit >> work(visit.output) >> stop.as_teardown(setups=session)
