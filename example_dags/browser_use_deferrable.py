"""Deferrable waiting: every wait happens in the triggerer, so agent tasks that run for minutes
hold no worker slot. The same operators and sensors as the other examples, with deferrable=True
(or set ``[operators] default_deferrable = True`` for all of them).
"""

from __future__ import annotations

from airflow.sdk import DAG, XComArg

from airflow_provider_browseruse.operators import CreateSessionOperator, RunTaskOperator, StopSessionOperator
from airflow_provider_browseruse.sensors import SessionStoppedSensor, TaskCompletedSensor

with DAG(
    dag_id="browser_use_deferrable",
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
    tags=["browser_use", "example"],
    doc_md=__doc__,
):
    session = CreateSessionOperator(task_id="create_session", keep_alive=True)
    summarise = RunTaskOperator(
        task_id="summarise",
        session_id=session.output,
        task="Summarise the front page of https://news.ycombinator.com in three sentences.",
        poll_interval=2,
        timeout=1800,
        deferrable=True,
    )
    stop = StopSessionOperator(task_id="stop_session", session_id=session.output, deferrable=True)
    session >> summarise >> stop.as_teardown(setups=session)

    start = RunTaskOperator(task_id="start_one_off", task="Find today's weather in Paris.", wait_for_completion=False)
    finished = TaskCompletedSensor(
        task_id="wait_one_off", browser_use_task_id=start.output, poke_interval=2, timeout=1800, deferrable=True
    )
    closed = SessionStoppedSensor(
        task_id="wait_one_off_session",
        session_id=XComArg(start, key="session_id"),
        poke_interval=2,
        timeout=600,
        deferrable=True,
    )
    start >> finished >> closed
