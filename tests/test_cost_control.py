"""Money: a budget per task, costs in XCom, waiting at the account's session cap."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_browseruse.__main__ import main as cli_main
from airflow_provider_browseruse._compat import AirflowException, AirflowFailException
from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook
from airflow_provider_browseruse.operators.browser_use import (
    CreateSessionOperator,
    RunTaskOperator,
    StopSessionOperator,
    StopTaskOperator,
)
from airflow_provider_browseruse.sensors.browser_use import TaskCompletedSensor
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from airflow_provider_browseruse.triggers.browser_use import TaskStatusTrigger
from tests.conftest import TaskDeferred, first_event, task_context

RATE = Decimal("0.50")  # USD a second
CAP = 0.40
POLL = 0.2


def pricey(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("pricey", duration=10, start_delay=0, cost_per_second=str(RATE))


def assert_stopped_at_budget(emulator: BrowserUseEmulator, ctx: dict[str, Any], error: Exception) -> None:
    [task] = emulator.state.tasks.values()
    assert emulator.state.get_task(task.id)["status"] == "stopped"
    assert emulator.active_session_count() == 0  # its one-off session went with it
    cost = ctx["ti"].xcom["cost_usd"]
    # Stopped within one poll of crossing the cap (plus a request's latency).
    assert CAP < cost <= CAP + float(RATE) * (POLL + 0.3)
    message = str(error)
    assert f"Browser Use task {task.id} has cost $" in message and f"past max_cost_usd={CAP}" in message
    assert isinstance(error, AirflowFailException)  # not retried: a retry would pay again


@pytest.mark.parametrize("stop_on_give_up", [True, False])  # a budget stops the task either way
def test_a_task_past_its_budget_is_stopped_and_fails(emulator: BrowserUseEmulator, stop_on_give_up: bool) -> None:
    pricey(emulator)
    ctx = task_context()
    op = RunTaskOperator(
        task_id="run", task="pricey job", poll_interval=POLL, max_cost_usd=CAP, stop_on_give_up=stop_on_give_up
    )
    with pytest.raises(AirflowFailException) as failed:
        op.execute(ctx)
    assert_stopped_at_budget(emulator, ctx, failed.value)


def test_a_deferred_task_past_its_budget_is_stopped_and_fails(emulator: BrowserUseEmulator) -> None:
    pricey(emulator)
    ctx = task_context()
    op = RunTaskOperator(task_id="run", task="pricey job", poll_interval=POLL, max_cost_usd=CAP, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    event = first_event(deferred.value.trigger)
    assert event["event"] == "over_budget" and Decimal(event["cost"]) > Decimal(str(CAP))
    # The trigger stopped it at once: a worker may take minutes to pick the event up.
    assert event["stopped"] is True
    [task] = emulator.state.tasks.values()
    assert emulator.state.get_task(task.id)["status"] == "stopped"
    with pytest.raises(AirflowFailException) as failed:
        RunTaskOperator(task_id="run", task="pricey job", max_cost_usd=CAP, deferrable=True).execute_complete(
            ctx, event
        )
    assert_stopped_at_budget(emulator, ctx, failed.value)
    assert emulator.count("PATCH", f"/tasks/{task.id}") == 1  # stopped once, by the trigger


def test_a_failed_stop_at_the_budget_says_so(emulator: BrowserUseEmulator) -> None:
    pricey(emulator)
    emulator.add_fault(method="PATCH", path=r"/tasks/.+", status=404, times=5)
    ctx = task_context()
    with pytest.raises(AirflowFailException, match="stopping it FAILED: stop it by hand"):
        RunTaskOperator(task_id="run", task="pricey job", poll_interval=POLL, max_cost_usd=CAP).execute(ctx)
    [task] = emulator.state.tasks.values()
    emulator.state.stop_task(task.id, and_session=True)


def test_a_cost_that_is_not_a_finite_number_counts_as_nothing() -> None:
    from airflow_provider_browseruse import _wire

    for garbage in ("NaN", "Infinity", "-inf", "1e999999", "lots"):
        assert _wire.over_budget({"cost": garbage}, 0.01) is None
        assert _wire.to_decimal(garbage) == 0


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_sensor_stops_a_task_past_its_budget(emulator: BrowserUseEmulator, deferrable: bool) -> None:
    pricey(emulator)
    created = emulator.state.create_task({"task": "pricey job"})
    sensor = TaskCompletedSensor(
        task_id="wait", browser_use_task_id=created["id"], poke_interval=POLL, max_cost_usd=CAP, deferrable=deferrable
    )
    ctx = task_context()
    with pytest.raises(AirflowFailException) as failed:
        if deferrable:
            try:
                sensor.execute(ctx)
            except TaskDeferred as deferred:
                sensor.execute_complete(ctx, first_event(deferred.trigger))
        else:
            sensor.execute(ctx)
    assert_stopped_at_budget(emulator, ctx, failed.value)


def test_a_task_within_its_budget_finishes(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("cheap", duration=0.5, start_delay=0, cost_per_second="0.10")
    ctx = task_context()
    RunTaskOperator(task_id="run", task="cheap job", poll_interval=0.1, max_cost_usd=1.0).execute(ctx)
    assert 0.04 <= ctx["ti"].xcom["cost_usd"] <= 0.05  # 0.5 s at $0.10 a second
    assert emulator.active_session_count() == 0


def test_the_trigger_stays_quiet_within_the_budget(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.3, cost_per_second="0.01")
    task_id = emulator.state.create_task({"task": "job"})["id"]
    trigger = TaskStatusTrigger(task_id, poll_interval=0.05, end_time=time.time() + 10, max_cost_usd=1.0)
    assert first_event(trigger)["event"] == "ended"


# --- cost_usd in XCom --------------------------------------------------------------------------


def test_every_operator_that_runs_or_stops_work_pushes_its_cost(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.1, cost="0.07").add("long", duration=60, cost="0.30")
    ran = task_context()
    RunTaskOperator(task_id="run", task="job", poll_interval=0.05).execute(ran)
    assert ran["ti"].xcom["cost_usd"] == 0.07

    session_id = CreateSessionOperator(task_id="create", keep_alive=True).execute(task_context())
    long_task = emulator.state.create_task({"task": "long job", "sessionId": session_id})["id"]
    time.sleep(0.3)
    stopped_task = task_context()
    StopTaskOperator(task_id="stop_task", browser_use_task_id=long_task).execute(stopped_task)
    assert 0 < stopped_task["ti"].xcom["cost_usd"] < 0.30  # what it had cost when stopped

    emulator.state.create_task({"task": "job", "sessionId": session_id})
    time.sleep(0.3)
    stopped = task_context()
    StopSessionOperator(task_id="stop", session_id=session_id, poll_interval=0.05).execute(stopped)
    outputs = stopped["ti"].xcom["task_outputs"]
    total = sum(Decimal(o["cost"]) for o in outputs) + Decimal(emulator.state.get_session(session_id)["proxyCost"])
    assert stopped["ti"].xcom["cost_usd"] == float(total) and len(outputs) == 2


# --- the session cap ---------------------------------------------------------------------------


def test_a_create_at_the_session_cap_waits_for_a_free_slot(emulator: BrowserUseEmulator, captured_logs: Any) -> None:
    emulator.state.max_concurrent_sessions = 1
    emulator.state.retry_after = 1
    holder = emulator.state.create_session({"keepAlive": True})["id"]
    # Held past the hook's own retries of the 429 (5 attempts, 1 s apart): then the operator waits.
    threading.Timer(6.0, emulator.state.stop_session, args=(holder,)).start()
    emulator.state.scenario = Scenario().add("job", duration=0.1, output="done")
    started = time.monotonic()
    assert RunTaskOperator(task_id="run", task="job", poll_interval=0.05, timeout=60).execute(task_context()) == "done"
    assert time.monotonic() - started >= 5.5  # it waited for the slot
    assert emulator.count("POST", "/tasks") >= 2 and len(emulator.state.tasks) == 1  # refusals created nothing
    assert "concurrent-session cap is full (429; nothing was created): waited" in captured_logs()
    assert emulator.state.peak_active_sessions == 1


def test_a_full_cap_past_the_timeout_fails_without_starting_anything(emulator: BrowserUseEmulator) -> None:
    emulator.state.max_concurrent_sessions = 1
    emulator.state.retry_after = 1
    holder = emulator.state.create_session({"keepAlive": True})["id"]
    with pytest.raises(AirflowException, match=r"cap stayed full for \d+ s \(the timeout\): nothing was started"):
        CreateSessionOperator(task_id="create", timeout=2).execute(task_context())
    assert list(emulator.state.sessions) == [holder]
    emulator.state.stop_session(holder)


def test_the_hook_reads_the_accounts_session_cap(emulator: BrowserUseEmulator) -> None:
    assert BrowserUseHook().concurrent_session_limit() == 250  # the emulator's uncapped default, an integer
    emulator.state.max_concurrent_sessions = 3
    assert BrowserUseHook().concurrent_session_limit() == 3
    # The one command of the README reads only stdout: nothing but the number may land there.
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_browseruse", "concurrent-session-limit"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr[-2000:]


def test_the_command_says_when_the_api_does_not_tell(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(BrowserUseHook, "get_account", lambda self: {"projectId": "p"})
    assert cli_main(["concurrent-session-limit"]) == 1
    assert "does not say how many sessions" in capsys.readouterr().err
