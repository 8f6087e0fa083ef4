"""Promises the README makes that a deliberate bug once broke without any test noticing: each
test here fails when its promise breaks (tried by hand: see each docstring)."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse.operators import RunTaskOperator
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from airflow_provider_browseruse.triggers import TaskStatusTrigger
from tests.conftest import TaskDeferred, first_event, task_context


def test_a_retry_uses_the_task_an_earlier_try_finished(emulator: BrowserUseEmulator) -> None:
    """Try 1 started a task and its worker died; the task finished meanwhile. Try 2 must use its
    output, not pay for a second run. (Broken by treating a finished earlier task as failed.)"""
    emulator.state.scenario = Scenario().add("report", duration=0.05, output="the first run's output")
    first = RunTaskOperator(task_id="run", task="write the report", poll_interval=0.05)
    first_ctx = task_context(try_number=1)
    tags = first._tags(first_ctx)
    first._start(first._request(first_ctx, tags), tags)
    time.sleep(0.3)
    [earlier] = emulator.state.tasks.values()
    assert earlier.status(emulator.state.clock()) == "finished"
    retry_ctx = task_context(try_number=2)
    output = RunTaskOperator(task_id="run", task="write the report", poll_interval=0.05).execute(retry_ctx)
    assert output == "the first run's output"
    assert emulator.count("POST", "/tasks") == 1
    assert retry_ctx["ti"].xcom["browser_use_task_id"] == earlier.id


def test_a_trigger_deadline_is_read_from_the_clock_not_counted_in_polls(emulator: BrowserUseEmulator) -> None:
    """With answers slower than the deadline, counting polls (start + polls * interval) would wait
    for many slow answers; the clock says stop after one. (Broken by a poll-counting deadline.)"""
    emulator.state.scenario = Scenario().add("job", duration=60)
    task_id = emulator.state.create_task({"task": "job"})["id"]
    emulator.add_fault(method="GET", path=rf"/tasks/{task_id}/status", latency=0.8, times=100)
    started = time.time()
    event = first_event(TaskStatusTrigger(task_id, poll_interval=0.01, end_time=started + 1.0))
    assert event["event"] == "timeout"
    assert emulator.count("GET", f"/tasks/{task_id}/status") <= 2  # one or two slow answers, then the deadline


def test_execute_complete_refuses_an_ended_event_about_another_task(emulator: BrowserUseEmulator) -> None:
    """The README: an event about another task's id fails the task. (Broken by not comparing ids.)"""
    emulator.state.scenario = Scenario().add("job", duration=60).add("other", duration=0, output="not mine")
    op = RunTaskOperator(task_id="run", task="job", poll_interval=0.05, deferrable=True)
    ctx = task_context()
    with pytest.raises(TaskDeferred):
        op.execute(ctx)
    other = emulator.state.create_task({"task": "other"})["id"]
    with pytest.raises(AirflowException, match=f"reported on browser_use_task_id '{other}'"):
        op.execute_complete(ctx, {"event": "ended", "browser_use_task_id": other, "task_status": "finished"})
    assert emulator.count("GET", f"/tasks/{other}") == 0  # nothing was fetched, nothing published
    assert "task" not in ctx["ti"].xcom


def test_a_deferred_kill_leaves_a_session_the_user_passed_in(emulator: BrowserUseEmulator) -> None:
    """The README: a passed-in session is left to its own teardown, also when a deferred task is
    killed. (Broken by stopping the session in the trigger's on_kill regardless.)"""
    emulator.state.scenario = Scenario().add("job", duration=60)
    session_id = emulator.state.create_session({"keepAlive": True})["id"]
    op = RunTaskOperator(task_id="run", task="job", session_id=session_id, poll_interval=0.05, deferrable=True)
    ctx = task_context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    asyncio.run(deferred.value.trigger.on_kill())  # what Airflow 3.3 runs when a user fails the task
    task_id = ctx["ti"].xcom["browser_use_task_id"]
    assert emulator.state.get_task(task_id)["status"] == "stopped"
    assert emulator.state.get_session(session_id)["status"] == "active"
    assert emulator.requests("PATCH", f"/tasks/{task_id}")[0].status == 200
    assert emulator.count("PATCH", f"/sessions/{session_id}") == 0
