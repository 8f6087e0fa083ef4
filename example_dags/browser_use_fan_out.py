"""Fan-out inside one session: one kept-alive browser, several prompts mapped over it.

A session runs one task at a time. Under a real scheduler the mapped instances start together;
each one that finds the session busy waits for it (its log says which task holds the session)
and starts when it is free: never a failure, never a duplicate. The waits count against each
instance's ``timeout``.

Use one session when the prompts need the same browser state (a login, cookies, a cart). For
independent prompts, leave ``session_id`` out: each instance then gets a one-off session and
they run side by side, up to the account's concurrent-session cap.
"""

from __future__ import annotations

from airflow.sdk import DAG, task

from airflow_provider_browseruse.operators import CreateSessionOperator, RunTaskOperator, StopSessionOperator

PAGES = [f"https://example.com/page/{number}" for number in range(1, 7)]

with DAG(
    dag_id="browser_use_fan_out",
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
    tags=["browser_use", "example"],
    doc_md=__doc__,
):
    session = CreateSessionOperator(task_id="create_session", keep_alive=True)
    titles = RunTaskOperator.partial(
        task_id="read_title", session_id=session.output, poll_interval=1, timeout=900
    ).expand(task=[f"Open {page} and return the page title." for page in PAGES])

    @task
    def report(found: list[str]) -> int:
        for title in found:
            print(title)
        return len(found)

    stop = StopSessionOperator(task_id="stop_session", session_id=session.output)
    session >> titles >> report(titles.output) >> stop.as_teardown(setups=session)
