"""Triggers and deferral, against the emulator: events, retries, deadlines, kill, the shared pool."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_provider_browseruse._common import session_event, task_event
from airflow_provider_browseruse._compat import ENDS_FROM_TRIGGER, AirflowException, AirflowFailException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.hooks import browser_use as hooks
from airflow_provider_browseruse.operators.browser_use import RunTaskOperator, StopSessionOperator
from airflow_provider_browseruse.sensors.browser_use import SessionStoppedSensor, TaskCompletedSensor
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from airflow_provider_browseruse.triggers.browser_use import SessionStatusTrigger, TaskStatusTrigger
from tests.conftest import FakeTaskInstance, TaskDeferred, as_in_the_triggerer, first_event, task_context

UNKNOWN = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def roundtrip(trigger: Any) -> Any:
    path, kwargs = trigger.serialize()
    assert json.loads(json.dumps(kwargs)) == kwargs  # JSON-safe: it is stored in the metadata db
    module, name = path.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)(**kwargs)


# --- triggers ----------------------------------------------------------------------------------


def test_task_trigger_serializes_without_the_key(emulator: BrowserUseEmulator) -> None:
    trigger = TaskStatusTrigger(UNKNOWN, poll_interval=0.5, end_time=123.0, stop_on_give_up=True, owns_session=True)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_browseruse.triggers.browser_use.TaskStatusTrigger"
    assert kwargs == {
        "browser_use_task_id": UNKNOWN, "browser_use_conn_id": "browser_use_default", "poll_interval": 0.5,
        "end_time": 123.0, "stop_on_give_up": True, "owns_session": True, "end_from_trigger": False,
        "success_policy": "agent", "output_schema": None, "push_output": True, "max_cost_usd": None,
    }  # fmt: skip
    assert roundtrip(trigger).serialize() == (path, kwargs)
    assert emulator.state.api_key not in json.dumps(kwargs)
    session = SessionStatusTrigger(UNKNOWN, poll_interval=1, end_time=5.0)
    assert roundtrip(session).serialize() == session.serialize()


@pytest.mark.parametrize("final", ["finished", "failed", "stopped"])
def test_task_trigger_fires_when_the_task_ends(emulator: BrowserUseEmulator, final: str) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.3, status=final)
    task_id = emulator.state.create_task({"task": "job"})["id"]
    event = first_event(TaskStatusTrigger(task_id, poll_interval=0.1, end_time=time.time() + 10))
    assert event == {"event": "ended", "browser_use_task_id": task_id, "task_status": final}
    assert 1 <= emulator.count("GET", f"/tasks/{task_id}/status") <= 5  # polled the light endpoint only
    assert emulator.count("GET", f"/tasks/{task_id}") == 0


def test_task_trigger_deadline_is_wall_clock(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=60)
    task_id = emulator.state.create_task({"task": "job"})["id"]
    started = time.time()
    event = first_event(TaskStatusTrigger(task_id, poll_interval=0.1, end_time=started + 0.4))
    assert event["event"] == "timeout"
    assert 0.4 <= time.time() - started < 1.5
    assert emulator.state.get_task(task_id)["status"] == "started"  # the operator decides what to stop


def test_trigger_retries_like_the_hook(emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "RetryPolicy", lambda: RetryPolicy(initial_wait=0.01, max_wait=0.02))
    emulator.state.scenario = Scenario().add("job", duration=0.1)
    task_id = emulator.state.create_task({"task": "job"})["id"]
    emulator.add_fault(method="GET", path=r"/tasks/.+/status", status=503, times=2)
    emulator.add_fault(method="GET", path=r"/tasks/.+/status", drop=True)
    event = first_event(TaskStatusTrigger(task_id, poll_interval=0.05, end_time=time.time() + 10))
    assert event["event"] == "ended"
    statuses = [r.status for r in emulator.requests("GET", f"/tasks/{task_id}/status")]
    assert statuses[:2] == [503, 503]


def test_trigger_reports_api_errors(emulator: BrowserUseEmulator) -> None:
    event = first_event(SessionStatusTrigger(UNKNOWN, poll_interval=0.1, end_time=time.time() + 5))
    assert event["event"] == "error"
    assert event["http_status"] == 404
    assert "Session not found" in event["message"]
    assert emulator.count("GET", f"/sessions/{UNKNOWN}") == 1  # a 404 is final


def test_session_trigger_fires_when_stopped(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.3)
    created = emulator.state.create_task({"task": "job"})  # a one-off session: closes with its task
    event = first_event(SessionStatusTrigger(created["sessionId"], poll_interval=0.1, end_time=time.time() + 10))
    assert event == {"event": "stopped", "session_id": created["sessionId"]}


def test_trigger_on_kill_stops_the_task_and_its_session(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=60)
    created = emulator.state.create_task({"task": "job"})
    asyncio.run(TaskStatusTrigger(created["id"], end_time=0, stop_on_give_up=True, owns_session=True).on_kill())
    assert emulator.state.get_task(created["id"])["status"] == "stopped"
    assert emulator.active_session_count() == 0
    other = emulator.state.create_task({"task": "job"})
    asyncio.run(TaskStatusTrigger(other["id"], end_time=0, stop_on_give_up=False).on_kill())  # turned off
    assert emulator.state.get_task(other["id"])["status"] in ("created", "started")
    assert emulator.count("PATCH", f"/tasks/{other['id']}") == 0


def test_triggers_in_one_loop_share_one_pool(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=3)
    task_ids = [emulator.state.create_task({"task": f"job {n}"})["id"] for n in range(200)]
    clients_made: list[int] = []

    async def run_all() -> list[dict[str, Any]]:
        async def one(task_id: str) -> dict[str, Any]:
            async for event in TaskStatusTrigger(task_id, poll_interval=0.1, end_time=time.time() + 20).run():
                return event.payload
            raise AssertionError

        events = await asyncio.gather(*(one(t) for t in task_ids))
        clients_made.append(hooks.shared_pool().created)
        return events

    events = asyncio.run(run_all())
    assert [e["event"] for e in events] == ["ended"] * 200
    assert 1 <= clients_made[0] <= hooks.ASYNC_POOL_SIZE  # 200 triggers, one bounded pool
    polls = emulator.requests("GET", r"/tasks/.+/status")
    assert len(polls) > 200  # more than one round of 200 polls ...
    connections = {r.client_port for r in polls}
    assert 1 <= len(connections) <= hooks.ASYNC_POOL_SIZE  # ... over a bounded pool, not one per poll


# --- strict events -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        None,
        "ended",
        {"event": "done", "browser_use_task_id": UNKNOWN},
        {"event": "ended", "browser_use_task_id": "not-a-uuid", "task_status": "finished"},
        {"event": "ended", "browser_use_task_id": UNKNOWN, "task_status": "started"},
        {"event": "ended", "browser_use_task_id": UNKNOWN, "task_status": "paused"},
        {"event": "ended", "browser_use_task_id": "9b2f7c1e-4a5d-4e6f-8a7b-1c2d3e4f5a6b", "task_status": "finished"},
    ],
)
def test_unexpected_task_events_are_refused(event: Any) -> None:
    with pytest.raises(AirflowException, match="Unexpected event|reported"):
        task_event(event, UNKNOWN)


def test_expected_events_pass() -> None:
    assert (
        task_event({"event": "ended", "browser_use_task_id": UNKNOWN, "task_status": "failed"}, UNKNOWN)["task_status"]
        == "failed"
    )
    assert session_event({"event": "stopped", "session_id": UNKNOWN}, UNKNOWN)["event"] == "stopped"
    with pytest.raises(AirflowException):
        session_event({"event": "ended", "session_id": UNKNOWN}, UNKNOWN)


# --- operators deferring -----------------------------------------------------------------------


def run_deferred(op: Any, ctx: dict[str, Any]) -> Any:
    """Execute until deferral, run the trigger inline as the triggerer would, then resume."""
    try:
        return op.execute(ctx)
    except TaskDeferred as deferred:
        trigger = roundtrip(deferred.trigger)
        assert deferred.timeout is None  # Airflow's own defer timeout would skip execute_complete
        return getattr(op, deferred.method_name)(ctx, first_event(trigger))


def test_run_task_defers_after_pushing_ids(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.5, output="deferred result")
    op = RunTaskOperator(task_id="run", task="job", poll_interval=0.1, deferrable=True)
    ctx = task_context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    assert {"browser_use_task_id", "session_id"} <= set(ctx["ti"].xcom)  # pushed before deferring
    trigger = deferred.value.trigger
    assert isinstance(trigger, TaskStatusTrigger)
    assert (trigger.watched_id, trigger.stop_on_give_up, trigger.owns_session) == (
        ctx["ti"].xcom["browser_use_task_id"],
        True,
        True,
    )
    assert trigger.end_time == pytest.approx(time.time() + 3600, abs=5)
    resumed = RunTaskOperator(task_id="run", task="job", poll_interval=0.1, deferrable=True)  # a new instance
    assert resumed.execute_complete(ctx, first_event(trigger)) == "deferred result"
    assert ctx["ti"].xcom["task"]["status"] == "finished"


def test_run_task_does_not_defer_when_already_done(
    emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0, start_delay=0, output="instant")
    monkeypatch.setattr(RunTaskOperator, "defer", lambda *a, **k: pytest.fail("deferred a finished task"))
    original = hooks.BrowserUseHook.create_task

    def create_and_settle(self: Any, body: Any) -> Any:
        created = original(self, body)
        time.sleep(0.05)
        return created

    monkeypatch.setattr(hooks.BrowserUseHook, "create_task", create_and_settle)
    assert RunTaskOperator(task_id="run", task="job", deferrable=True).execute(task_context()) == "instant"


def test_run_task_deferred_timeout_stops_the_remote_task(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=60)
    ctx = task_context()
    with pytest.raises(AirflowException, match="did not end within the timeout"):
        run_deferred(RunTaskOperator(task_id="run", task="job", poll_interval=0.1, timeout=0.3, deferrable=True), ctx)
    assert emulator.state.get_task(ctx["ti"].xcom["browser_use_task_id"])["status"] == "stopped"
    assert emulator.active_session_count() == 0


def test_execution_timeout_bounds_the_deferral(emulator: BrowserUseEmulator) -> None:
    from datetime import datetime, timedelta, timezone

    emulator.state.scenario = Scenario().add("job", duration=60)
    ti = FakeTaskInstance()
    ti.start_date = datetime.now(timezone.utc)
    op = RunTaskOperator(
        task_id="run", task="job", timeout=3600, execution_timeout=timedelta(seconds=30), deferrable=True
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": ti})
    assert deferred.value.trigger.end_time == pytest.approx(ti.start_date.timestamp() + 30, abs=1)


def test_stop_session_defers_while_stopping(emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    session_id = emulator.state.create_session({"keepAlive": True})["id"]
    real_stop = hooks.BrowserUseHook.stop_session

    def stop_still_active(self: Any, sid: str) -> Any:  # the API answers before the browser is down
        view = real_stop(self, sid)
        return {**view, "status": "active"}

    monkeypatch.setattr(hooks.BrowserUseHook, "stop_session", stop_still_active)
    ctx = task_context()
    result = run_deferred(
        StopSessionOperator(task_id="stop", session_id=session_id, poll_interval=0.1, deferrable=True), ctx
    )
    assert result["status"] == "stopped"
    assert ctx["ti"].xcom["task_outputs"] == []


def test_sensors_defer_and_resume(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.4, output="sensed")
    created = emulator.state.create_task({"task": "job"})
    ctx = task_context()
    sensor = TaskCompletedSensor(task_id="wait", browser_use_task_id=created["id"], poke_interval=0.1, deferrable=True)
    assert run_deferred(sensor, ctx) == "sensed"
    assert ctx["ti"].xcom["task"]["status"] == "finished"
    session = SessionStoppedSensor(
        task_id="wait_s", session_id=created["sessionId"], poke_interval=0.1, deferrable=True
    )
    assert run_deferred(session, ctx)["status"] == "stopped"  # done at the first check: no deferral


def test_deferred_sensor_fails_clearly(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.3, status="failed", output="blocked")
    created = emulator.state.create_task({"task": "job"})
    with pytest.raises(AirflowException, match="failed; output: 'blocked'"):
        run_deferred(
            TaskCompletedSensor(task_id="w", browser_use_task_id=created["id"], poke_interval=0.1, deferrable=True),
            task_context(),
        )
    sensor = SessionStoppedSensor(task_id="w", session_id=UNKNOWN, deferrable=True)
    with pytest.raises(AirflowFailException, match="Session not found"):
        sensor.execute_complete(
            task_context(),
            {"event": "error", "session_id": UNKNOWN, "http_status": 404, "message": "HTTP 404: Session not found"},
        )


def test_deferrable_defaults_to_airflows_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert RunTaskOperator(task_id="r", task="t").deferrable is True
    assert SessionStoppedSensor(task_id="s", session_id=UNKNOWN).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert StopSessionOperator(task_id="x", session_id=UNKNOWN).deferrable is False


# --- ending in the triggerer -------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
needs_ending_in_the_triggerer = pytest.mark.skipif(
    not ENDS_FROM_TRIGGER, reason="operators end tasks in the triggerer on Airflow 3.3+ only"
)


def test_before_airflow_3_3_every_deferred_task_resumes_on_a_worker() -> None:
    ends = RunTaskOperator(task_id="run", task="job", deferrable=True)._ends_in_triggerer
    assert ends is ENDS_FROM_TRIGGER


def end_event(trigger: Any, ti: FakeTaskInstance | None = None) -> Any:
    """The trigger's first event object itself, run as the triggerer runs it (XComs into ``ti``)."""

    async def collect() -> Any:
        async for event in trigger.run():
            return event
        raise AssertionError("the trigger ended without an event")

    with as_in_the_triggerer(trigger, ti or FakeTaskInstance()):
        return asyncio.run(collect())


def ending_trigger(task_id: str, **kwargs: Any) -> TaskStatusTrigger:
    trigger = TaskStatusTrigger(task_id, poll_interval=0.05, end_time=time.time() + 10, end_from_trigger=True, **kwargs)
    return roundtrip(trigger)


@pytest.mark.parametrize(
    ("script", "kwargs", "output"),
    [
        pytest.param({"output": "fine"}, {}, "fine", id="text"),
        pytest.param({"output_json": {"n": 3}}, {"output_schema": SCHEMA}, {"n": 3}, id="structured"),
        pytest.param({"judge_verdict": True, "output": "ok"}, {"success_policy": "judge"}, "ok", id="judge"),
        pytest.param({"is_success": False, "output": "meh"}, {"success_policy": "lenient"}, "meh", id="lenient"),
    ],
)
def test_a_task_that_ends_well_ends_in_the_triggerer_with_its_xcoms(
    emulator: BrowserUseEmulator, script: dict[str, Any], kwargs: dict[str, Any], output: Any
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    emulator.state.scenario = Scenario().add("job", duration=0.2, **script)
    body: dict[str, Any] = {"task": "job", "judge": "judge_verdict" in script}
    if "output_json" in script:
        body["structuredOutput"] = json.dumps(SCHEMA)
    task_id = emulator.state.create_task(body)["id"]
    ti = FakeTaskInstance()
    event = end_event(ending_trigger(task_id, **kwargs), ti)
    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms is None  # pushed as a worker pushes them (Airflow would encode these twice)
    assert ti.xcom["return_value"] == output
    assert ti.xcom["cost_usd"] == 0.02
    assert ti.xcom["task"]["id"] == task_id and ti.xcom["task"]["status"] == "finished"
    assert "steps" not in ti.xcom["task"]
    assert emulator.count("GET", f"/tasks/{task_id}") == 1  # the one full fetch, in the triggerer


def test_outside_a_triggerer_a_worker_finishes_the_task(emulator: BrowserUseEmulator) -> None:
    """With no task instance to push XComs for, the trigger hands the task to a worker."""
    emulator.state.scenario = Scenario().add("job", duration=0.1, output="fine")
    task_id = emulator.state.create_task({"task": "job"})["id"]
    assert first_event(ending_trigger(task_id))["event"] == "ended"


def test_without_xcom_push_the_output_is_not_pushed(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.1, output="fine")
    task_id = emulator.state.create_task({"task": "job"})["id"]
    ti = FakeTaskInstance()
    end_event(ending_trigger(task_id, push_output=False), ti)
    assert set(ti.xcom) == {"task", "cost_usd"}


@pytest.mark.parametrize(
    ("script", "kwargs"),
    [
        pytest.param({"status": "failed"}, {}, id="failed"),
        pytest.param({"status": "stopped"}, {"success_policy": "lenient"}, id="stopped"),
        pytest.param({"is_success": False}, {}, id="agent-says-no"),
        pytest.param({"judge_verdict": False}, {"success_policy": "judge"}, id="judge-says-no"),
        pytest.param({"output": '{"n": "three"}'}, {"output_schema": SCHEMA}, id="output-does-not-parse"),
    ],
)
def test_anything_but_a_success_goes_back_to_a_worker(
    emulator: BrowserUseEmulator, script: dict[str, Any], kwargs: dict[str, Any]
) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.1, **script)
    task_id = emulator.state.create_task({"task": "job", "judge": "judge_verdict" in script})["id"]
    event = end_event(ending_trigger(task_id, **kwargs))
    assert type(event).__name__ == "TriggerEvent"
    assert event.payload["event"] == "ended"
    assert event.payload["task_status"] == script.get("status", "finished")


def test_a_failed_final_fetch_is_the_waits_error(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.1, output="fine")
    task_id = emulator.state.create_task({"task": "job"})["id"]
    emulator.add_fault(method="GET", path=f"/tasks/{task_id}$", status=404, times=1)
    event = end_event(ending_trigger(task_id))
    assert event.payload["event"] == "error" and event.payload["http_status"] == 404
    assert emulator.count("GET", f"/tasks/{task_id}") == 1  # a final answer is not asked again


@needs_ending_in_the_triggerer
def test_the_operator_ends_in_the_triggerer_only_when_no_worker_is_needed(tmp_path: Any) -> None:
    import pydantic
    from airflow.sdk import Asset

    class Model(pydantic.BaseModel):
        n: int

    def ends(**kwargs: Any) -> bool:
        return RunTaskOperator(task_id="run", task="job", deferrable=True, **kwargs)._ends_in_triggerer

    assert ends() and ends(structured_output=SCHEMA)
    assert not ends(end_from_trigger=False)
    assert not ends(multiple_outputs=True)  # per-key XComs are pushed by a worker
    assert not ends(output_files_path=f"file://{tmp_path}")  # files are copied by a worker
    assert not ends(outlets=[Asset("s3://bucket/out")])  # the triggerer emits no asset events
    assert not ends(structured_output=Model)  # the triggerer cannot import a DAG's model


@needs_ending_in_the_triggerer
def test_a_deferred_operator_hands_its_finishing_rules_to_the_trigger(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("job", duration=5)
    op = RunTaskOperator(
        task_id="run",
        task="job",
        deferrable=True,
        structured_output=SCHEMA,
        success_policy="lenient",
        do_xcom_push=False,
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(task_context())
    trigger = deferred.value.trigger
    assert (trigger.end_from_trigger, trigger.success_policy.value, trigger.output_schema, trigger.push_output) == (
        True,
        "lenient",
        SCHEMA,
        False,
    )
    op._stop_remote_work("the test is over")


@needs_ending_in_the_triggerer
def test_a_worker_resumed_after_the_trigger_ended_the_task_finishes_it(emulator: BrowserUseEmulator) -> None:
    """dag.test() hands a TaskSuccessEvent's payload to execute_complete: finish as for 'ended'."""
    emulator.state.scenario = Scenario().add("job", duration=0.2, output="done")
    op = RunTaskOperator(task_id="run", task="job", poll_interval=0.05, deferrable=True)
    ctx = task_context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    event = end_event(deferred.value.trigger, ctx["ti"])
    assert event.payload == "success"
    assert op.execute_complete(ctx, event.payload) == "done"
    assert ctx["ti"].xcom["task"]["status"] == "finished"


@pytest.mark.parametrize("map_index", [-1, 2])
def test_a_deferred_instance_resumes_on_its_own_task(emulator: BrowserUseEmulator, map_index: int) -> None:
    """A mapped instance reads its own task id back, not the list of every instance's ids."""
    emulator.state.scenario = Scenario().add("job", duration=0.2, output="mine")
    op = RunTaskOperator(task_id="run", task="job", poll_interval=0.05, deferrable=True, end_from_trigger=False)
    ctx = task_context(map_index=map_index)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    assert op.execute_complete(ctx, first_event(deferred.value.trigger)) == "mine"


@needs_ending_in_the_triggerer
def test_an_output_a_downstream_task_maps_over_is_finished_by_a_worker() -> None:
    """The triggerer stores XComs without the length an .expand() needs."""
    from airflow.sdk import DAG, task

    with DAG("maps_over_it", schedule=None):
        upstream = RunTaskOperator(task_id="run", task="list pages", deferrable=True)

        @task
        def each(page: str) -> str:
            return page

        each.expand(page=upstream.output)
        alone = RunTaskOperator(task_id="alone", task="job", deferrable=True)
    assert not upstream._ends_in_triggerer
    assert alone._ends_in_triggerer
