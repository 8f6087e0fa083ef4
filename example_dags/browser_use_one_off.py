"""A one-off task watched by sensors: RunTaskOperator starts it without waiting (its one-off
session closes when it ends), TaskCompletedSensor waits for it and judges it, and
SessionStoppedSensor hands on what every task of the session produced. StopTaskOperator, as a
teardown, stops the task if anything upstream gave up on it.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, XComArg, task

from airflow_provider_browseruse.operators import RunTaskOperator, StopTaskOperator
from airflow_provider_browseruse.sensors import SessionStoppedSensor, TaskCompletedSensor

with DAG(
    dag_id="browser_use_one_off",
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
    tags=["browser_use", "example"],
    doc_md=__doc__,
):
    start = RunTaskOperator(
        task_id="start_task",
        task="Find the opening hours of the Louvre on its official site.",
        wait_for_completion=False,
    )
    done = TaskCompletedSensor(task_id="wait_for_task", browser_use_task_id=start.output, poke_interval=1, timeout=600)
    closed = SessionStoppedSensor(
        task_id="wait_for_session",
        session_id=XComArg(start, key="session_id"),
        poke_interval=1,
        timeout=300,
    )

    @task
    def report(outputs: list[dict[str, Any]]) -> int:
        for item in outputs:
            print(f"task {item['id']}: {item['status']}, cost ${item['cost']}: {item['output']}")
        return len(outputs)

    stop = StopTaskOperator(task_id="stop_task", browser_use_task_id=start.output)

    # The sensor returns the session view; the per-task list is pushed under "task_outputs".
    summary = report(XComArg(closed, key="task_outputs"))
    start >> done >> closed >> summary >> stop.as_teardown(setups=start)
