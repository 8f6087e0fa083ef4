"""The v4 operators, sensor and trigger against the emulator over loopback: every path ends with
no active run and no active browser."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from airflow_provider_browseruse import _common
from airflow_provider_browseruse._compat import AirflowException, AirflowFailException
from airflow_provider_browseruse.exceptions import BrowserUseTaskError
from airflow_provider_browseruse.operators import EndAgentSessionOperator, RunAgentOperator
from airflow_provider_browseruse.sensors import AgentRunSensor
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from airflow_provider_browseruse.triggers.browser_use import AgentRunTrigger
from tests.conftest import FakeTaskInstance, TaskDeferred, first_event

PRICES = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "price_gbp": {"type": "number"}},
    "required": ["title", "price_gbp"],
}


class Price(BaseModel):
    title: str
    price_gbp: float


class FakeStore:
    """Airflow 3.3's task state store: one per task instance, kept across its tries."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        assert value is not None
        self.values[key] = json.loads(json.dumps(value))


def context(store: FakeStore | None = None, **ti_fields: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {"ti": FakeTaskInstance(**ti_fields)}
    if store is not None:
        ctx["task_state_store"] = store
    return ctx


def op(**kwargs: Any) -> RunAgentOperator:
    kwargs.setdefault("task_id", "agent")
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("deferrable", False)
    return RunAgentOperator(**kwargs)


def nothing_left(emulator: BrowserUseEmulator) -> None:
    assert emulator.active_run_count() == 0
    assert emulator.active_browser_count() == 0


def test_a_run_returns_its_answer_pushes_ids_and_stops_its_browser(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("capital", output="Paris", duration=0.2, cost="0.05")
    ctx = context(store=FakeStore())
    assert op(task="What is the capital of France?").execute(ctx) == "Paris"
    xcom = ctx["ti"].xcom
    run_id, session_id = xcom[_common.RUN_ID_KEY], xcom[_common.SESSION_ID_KEY]
    assert xcom[_common.RUN_KEY]["status"] == "completed" and xcom[_common.RUN_KEY]["id"] == run_id
    assert xcom[_common.COST_KEY] == pytest.approx(0.05)
    assert float(xcom[_common.SESSION_COST_KEY]["totalCostUsd"]) >= 0.05
    assert xcom[_common.SESSION_URL_KEY].endswith(f"/sessions/{session_id}")
    assert ctx["task_state_store"].values["browser_use_run_id"] == run_id
    assert emulator.count("POST", "/v4/runs") == 1
    assert emulator.count("POST", "/v4/workspaces") == 1  # named after the task instance, made first
    assert emulator.count("GET", f"/v4/runs/{run_id}/status") >= 1
    assert emulator.count("PATCH", "/v4/browsers/.*") == 1
    nothing_left(emulator)


def test_the_request_asks_for_the_least_keep_alive_and_passes_settings(emulator: BrowserUseEmulator) -> None:
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    sent: list[dict[str, Any]] = []

    real_create = BrowserUseHook.create_run

    def spy(self: BrowserUseHook, body: Any) -> Any:
        sent.append(dict(body))
        return real_create(self, body)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BrowserUseHook, "create_run", spy)
        op(task="t", model="claude-sonnet-5", judge="Was the price found?", screen_width=1280, max_cost_usd=2).execute(
            context()
        )
    body = sent[0]
    assert body["keepAlive"] == 120 and body["model"] == "claude-sonnet-5"
    assert body["judge"] == {"context": "Was the price found?"} and body["maxCostUsd"] == "2"
    assert body["browserSettings"] == {"screenWidth": 1280} and "sessionId" not in body
    assert "workspaceId" in body
    nothing_left(emulator)


@pytest.mark.parametrize(("status", "shown"), [("failed", "failed"), ("stopped", "cancelled")])
def test_a_failed_or_cancelled_run_fails_the_task_and_stops_the_browser(
    emulator: BrowserUseEmulator, status: str, shown: str
) -> None:
    emulator.state.scenario = Scenario().add("doomed", status=status, duration=0.1)
    ctx = context()
    with pytest.raises(BrowserUseTaskError, match=f"run .* {shown}"):
        op(task="a doomed run").execute(ctx)
    assert ctx["ti"].xcom[_common.RUN_KEY]["status"] == shown
    nothing_left(emulator)


@pytest.mark.parametrize(("verdict", "passes"), [(True, True), (False, False)])
def test_the_judge_policy_reads_the_verdict(emulator: BrowserUseEmulator, verdict: bool, passes: bool) -> None:
    emulator.state.scenario = Scenario().add("judged", output="done", judge_verdict=verdict, duration=0.1)
    operator = op(task="a judged run", judge=True, success_policy="judge")
    if passes:
        assert operator.execute(context()) == "done"
    else:
        with pytest.raises(BrowserUseTaskError, match="verdict is False"):
            operator.execute(context())
    nothing_left(emulator)


def test_structured_output_is_checked_and_repaired_in_the_same_session(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = (
        Scenario()
        .add("did not match the required JSON Schema", output_json={"title": "Dune", "price_gbp": 12.5}, duration=0.1)
        .add("price of Dune", output="It costs twelve pounds fifty.", duration=0.1)
    )
    ctx = context()
    assert op(task="Find the price of Dune", structured_output=Price).execute(ctx) == {
        "title": "Dune",
        "price_gbp": 12.5,
    }
    first, repair = _runs(emulator)  # the run and one repair
    assert repair["sessionId"] == first["sessionId"]
    assert repair["task"].startswith("Your final answer did not match the required JSON Schema")
    assert ctx["ti"].xcom[_common.RUN_ID_KEY] == repair["id"]
    nothing_left(emulator)


def _runs(emulator: BrowserUseEmulator) -> list[dict[str, Any]]:
    """Every run so far, oldest first."""
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    return list(reversed(BrowserUseHook().list_runs()))


def test_structured_output_still_invalid_after_its_repairs_fails(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("price", output="not JSON at all", duration=0.05)
    with pytest.raises(BrowserUseTaskError, match="not valid JSON"):
        op(task="the price of Dune", structured_output=PRICES, structured_output_repairs=2).execute(context())
    assert emulator.count("POST", "/v4/runs") == 3
    with pytest.raises(BrowserUseTaskError, match="not valid JSON"):
        op(task="the price of Dune", structured_output=PRICES, structured_output_repairs=0).execute(context())
    assert emulator.count("POST", "/v4/runs") == 4
    nothing_left(emulator)


def test_the_server_side_schema_answer_is_used_and_checked(emulator: BrowserUseEmulator) -> None:
    ctx = context()
    answer = op(task="Give a price", structured_output=PRICES).execute(ctx)
    assert set(answer) == {"title", "price_gbp"}  # the emulator's instance of the schema
    assert emulator.count("POST", "/v4/runs") == 1
    nothing_left(emulator)


def test_a_budget_ends_the_run_and_the_task_without_retries(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("expensive", cost_per_second="1.0", duration=20)
    ctx = context()
    started = time.monotonic()
    with pytest.raises(AirflowFailException, match=r"past max_cost_usd=0.3.*Not retried"):
        op(task="an expensive run", max_cost_usd=0.3).execute(ctx)
    assert time.monotonic() - started < 10
    assert 0.3 <= ctx["ti"].xcom[_common.COST_KEY] < 0.6
    nothing_left(emulator)


def test_input_files_are_uploaded_and_attached_output_files_copied(
    emulator: BrowserUseEmulator, tmp_path: Path
) -> None:
    wanted = tmp_path / "wanted.csv"
    wanted.write_text("title\nDune\n")
    emulator.state.scenario = Scenario().add(
        "attached", output="ok", duration=0.1, output_files=[{"file_name": "report.md", "content": "# Dune: 12.50"}]
    )
    ctx = context()
    assert (
        op(task="Read the attached list", input_files=str(wanted), output_files_path=str(tmp_path / "out")).execute(ctx)
        == "ok"
    )
    run = ctx["ti"].xcom[_common.RUN_KEY]
    attachments = emulator_attachments(emulator, run["id"])
    assert [(a["name"], a["sizeBytes"], a["status"]) for a in attachments] == [("wanted.csv", 11, "uploaded")]
    saved = ctx["ti"].xcom[_common.OUTPUT_FILES_KEY]
    assert [Path(p).name for p in saved] == ["report.md"]
    assert Path(saved[0]).read_text() == "# Dune: 12.50" and Path(saved[0]).parent.name == run["id"]
    nothing_left(emulator)


def emulator_attachments(emulator: BrowserUseEmulator, run_id: str) -> list[dict[str, Any]]:
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    return BrowserUseHook().get_run_attachments(run_id)


def test_a_follow_up_continues_the_session_and_the_teardown_ends_it(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("remember", output="Noted.", duration=0.05).add("recall", output="42")
    first = context()
    op(task="remember 42", keep_alive=600).execute(first)
    session_id = first["ti"].xcom[_common.SESSION_ID_KEY]
    assert emulator.active_browser_count() == 1  # kept for the follow-up
    follow = context()
    assert op(task="recall the number", session_id=session_id).execute(follow) == "42"
    assert follow["ti"].xcom[_common.SESSION_ID_KEY] == session_id
    assert emulator.active_browser_count() == 1  # not the follow-up's to stop
    end = context()
    ended = EndAgentSessionOperator(task_id="end", session_id=session_id, delete=True).execute(end)
    assert ended is not None and len(ended["stopped_browsers"]) == 1 and ended["deleted"] is True
    assert float(end["ti"].xcom[_common.SESSION_COST_KEY]["totalCostUsd"]) > 0
    nothing_left(emulator)
    assert EndAgentSessionOperator(task_id="end", session_id=session_id, missing_ok=True).execute(context()) is None
    with pytest.raises(AirflowFailException, match="missing_ok"):
        EndAgentSessionOperator(task_id="end", session_id=session_id).execute(context())


def test_the_teardown_cancels_a_running_run_and_queued_messages(emulator: BrowserUseEmulator) -> None:
    from browser_use_sdk.v4 import BrowserUse

    emulator.state.scenario = Scenario().add("long", duration=30)
    client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.v4_base_url)
    run = client.runs.create("a long run", keep_alive=600)
    client.sessions.send_message(str(run.session_id), "and then this")
    ended = EndAgentSessionOperator(task_id="end", session_id=str(run.session_id)).execute(context())
    assert ended is not None
    assert (ended["cancelled_run_id"], ended["removed_messages"]) == (str(run.id), 1)
    assert client.runs.status(str(run.id)).status.value == "cancelled"
    nothing_left(emulator)
    again = EndAgentSessionOperator(task_id="end", session_id=str(run.session_id)).execute(context())
    assert again is not None and (again["cancelled_run_id"], again["removed_messages"], again["stopped_browsers"]) == (
        None,
        0,
        [],
    )


def test_a_timeout_cancels_the_run_and_stops_the_browser(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("slow", duration=60)
    with pytest.raises(AirflowException, match="did not end within 0.5 s"):
        op(task="a slow run", timeout=0.5).execute(context())
    assert emulator.count("POST", "/v4/runs/.*/cancel") == 1
    nothing_left(emulator)


def test_on_kill_cancels_the_run(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("slow", duration=60)
    operator = op(task="a slow run")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            operator.execute(context())
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 10
    while operator._waited_run_id is None and time.monotonic() < deadline:
        time.sleep(0.02)
    operator.on_kill()
    assert emulator.count("POST", "/v4/runs/.*/cancel") == 1
    worker.join(10)
    assert errors, "the wait ends once its run is cancelled"
    nothing_left(emulator)


@pytest.mark.parametrize("with_store", [True, False], ids=["task state store (3.3)", "workspace name (3.1, 3.2)"])
def test_a_retry_adopts_the_run_an_earlier_try_started(emulator: BrowserUseEmulator, with_store: bool) -> None:
    emulator.state.scenario = Scenario().add("adopt", output="adopted", duration=1.0)
    store = FakeStore() if with_store else None
    with pytest.raises(AirflowException, match="did not end"):
        op(task="adopt me", timeout=0.2, stop_on_give_up=False).execute(context(store, try_number=1))
    assert emulator.active_run_count() == 1
    retry = context(store, try_number=2)
    assert op(task="adopt me").execute(retry) == "adopted"
    assert emulator.count("POST", "/v4/runs") == 1  # no second run
    assert emulator.count("POST", "/v4/workspaces") == 1
    nothing_left(emulator)


def test_a_retry_replaces_a_failed_earlier_run(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("flaky", status="failed", duration=0.05)
    store = FakeStore()
    with pytest.raises(BrowserUseTaskError):
        op(task="flaky").execute(context(store))
    emulator.state.scenario = Scenario().add("flaky", output="fine now", duration=0.05)
    assert op(task="flaky").execute(context(store, try_number=2)) == "fine now"
    assert emulator.count("POST", "/v4/runs") == 2
    nothing_left(emulator)


def test_an_ambiguous_create_is_found_not_resent(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("lost", output="found", duration=0.2)
    emulator.add_fault(method="POST", path="/v4/runs", after_handling=True, drop=True)
    assert op(task="a lost answer").execute(context()) == "found"
    assert emulator.count("POST", "/v4/runs") == 1
    nothing_left(emulator)


def test_a_deferred_run_ends_through_its_trigger(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("deferred", output="later", duration=0.3)
    operator = op(task="a deferred run", deferrable=True)
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, AgentRunTrigger)
    assert trigger.browser_session_id == ctx["ti"].xcom[_common.SESSION_ID_KEY]  # its own session: stopped on a kill
    assert "key" not in json.dumps(trigger.serialize()[1]).lower()
    event = first_event(trigger)
    assert event["event"] == "ended" and event["run_status"] == "completed"
    assert operator.execute_complete(ctx, event, **deferred.value.kwargs) == "later"
    nothing_left(emulator)


def test_the_triggers_on_kill_cancels_and_stops_the_browser(emulator: BrowserUseEmulator) -> None:
    import asyncio

    emulator.state.scenario = Scenario().add("slow", duration=60)
    with pytest.raises(TaskDeferred) as deferred:
        op(task="a slow run", deferrable=True).execute(context())
    asyncio.run(deferred.value.trigger.on_kill())
    nothing_left(emulator)


def test_a_deferred_timeout_cancels_the_run(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("slow", duration=60)
    operator = op(task="a slow run", deferrable=True, timeout=0.3)
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(ctx)
    event = first_event(deferred.value.trigger)
    assert event["event"] == "timeout"
    with pytest.raises(AirflowException, match="cancelled"):
        operator.execute_complete(ctx, event)
    nothing_left(emulator)


def test_events_about_another_run_are_refused(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("slow", duration=60)
    operator = op(task="a slow run", deferrable=True)
    ctx = context()
    with pytest.raises(TaskDeferred):
        operator.execute(ctx)
    with pytest.raises(AirflowException, match="reported on run_id"):
        operator.execute_complete(ctx, {"event": "ended", "run_id": "other", "run_status": "completed"})
    operator._stop_remote_work("test over")
    nothing_left(emulator)


def test_the_sensor_waits_for_the_run_and_judges_it(emulator: BrowserUseEmulator) -> None:
    from browser_use_sdk.v4 import BrowserUse

    emulator.state.scenario = Scenario().add("sensed", output="seen", duration=0.3).add("bad", status="failed")
    client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.v4_base_url)
    run = client.runs.create("sensed run")
    sensor = AgentRunSensor(task_id="wait", run_id=str(run.id), poke_interval=0.05, timeout=20)
    ctx = context()
    assert sensor.poke(ctx).is_done is False
    deadline = time.monotonic() + 10
    while not (result := sensor.poke(ctx)).is_done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.xcom_value == "seen" and ctx["ti"].xcom[_common.RUN_ID_KEY] == str(run.id)
    failed = client.runs.create("bad run")
    client.runs.wait_for_completion(str(failed.id), timeout=10, interval=0.05)
    with pytest.raises(BrowserUseTaskError, match="failed"):
        AgentRunSensor(task_id="wait", run_id=str(failed.id)).poke(context())
    with pytest.raises(AirflowFailException, match="run_id"):
        AgentRunSensor(task_id="wait", run_id="3c90c3cc-0d44-4b50-8888-8dd25736052a").poke(context())
    for session in (run.session_id, failed.session_id):
        client.browsers.list(agent_session_id=str(session))
        EndAgentSessionOperator(task_id="end", session_id=str(session)).execute(context())
    nothing_left(emulator)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": " "}, "task must be a non-empty prompt"),
        ({"task": "t", "session_id": "nope"}, "session_id must be a Browser Use id"),
        ({"task": "t", "keep_alive": 60}, "keep_alive must be a whole number from 120 to 14400"),
        ({"task": "t", "success_policy": "judge"}, "needs judge"),
        ({"task": "t", "structured_output_repairs": 9}, "structured_output_repairs"),
        ({"task": "t", "max_cost_usd": -1}, "max_cost_usd must be a positive amount"),
        ({"task": "t", "session_max_cost_usd": float("inf")}, "session_max_cost_usd"),
        ({"task": "t", "session_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "record": True}, "record apply"),
        (
            {
                "task": "t",
                "session_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
                "workspace_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
            },
            "not both",
        ),
        ({"task": "t", "structured_output": {"type": "nonsense"}}, "structured_output is not a valid JSON Schema"),
        ({"task": "t", "input_files": [1]}, "input_files must hold paths"),
        ({"task": "t", "input_files": ["a"] * 21}, "at most 20"),
        ({"task": "t", "judge": 3}, "judge must be"),
    ],
)
def test_bad_input_is_refused_at_parsing_naming_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunAgentOperator(task_id="x", **kwargs)


def test_workspace_file_names_are_made_safe_and_distinct() -> None:
    from airflow_provider_browseruse._compat import AirflowException

    files = [
        {"path": "uploads/wanted.csv"},  # what was uploaded is not copied back
        {"path": "../../etc/passwd"},
        {"path": "report.md"},
        {"path": "REPORT.md"},
        {"path": "out/\x00evil.txt"},
        {"path": "old.txt", "lastModified": "2026-01-01T00:00:00Z"},  # an earlier run's
    ]
    since = 1_790_000_000.0  # 2026-09
    names = [name for _, name in _common.workspace_file_names(files, since=since)]
    assert names == [".._.._etc_passwd", "report.md", "2-REPORT.md", "out__evil.txt"]
    assert all("/" not in name and "\x00" not in name for name in names)
    # A numbered name is checked against the names taken too.
    tricky = [{"path": "2-a.txt"}, {"path": "A.txt"}, {"path": "a.txt"}]
    assert [name for _, name in _common.workspace_file_names(tricky)] == ["2-a.txt", "A.txt", "3-a.txt"]
    with pytest.raises(AirflowException, match="no name it could be saved under"):
        _common.workspace_file_names([{"path": "/"}])


def test_a_kept_alive_browser_is_stopped_when_the_task_gives_up(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("slow", duration=60).add("doomed", status="failed", duration=0.05)
    with pytest.raises(AirflowException, match="did not end"):
        op(task="a slow run", keep_alive=14_400, timeout=0.5).execute(context())
    nothing_left(emulator)
    with pytest.raises(BrowserUseTaskError):
        op(task="a doomed run", keep_alive=14_400).execute(context())
    nothing_left(emulator)  # the follow-up it was kept for will not come


def test_a_try_that_died_after_creating_its_run_is_adopted_from_the_workspace(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("flaky", status="failed", duration=0.05).add("fine", output="ok")
    store = FakeStore()
    with pytest.raises(BrowserUseTaskError):
        op(task="flaky then fine").execute(context(store))
    failed_run = store.values["browser_use_run_id"]
    # Try 2 creates its run, then its worker dies before storing the run's id.
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    real_create = BrowserUseHook.create_run
    with pytest.MonkeyPatch.context() as patch:
        emulator.state.scenario = Scenario().add("flaky", output="adopted", duration=1.0)

        def create_then_die(self: BrowserUseHook, body: Any) -> Any:
            real_create(self, body)
            raise KeyboardInterrupt("the worker died")

        patch.setattr(BrowserUseHook, "create_run", create_then_die)
        with pytest.raises(KeyboardInterrupt):
            op(task="flaky then fine", stop_on_give_up=False).execute(context(store, try_number=2))
    assert store.values["browser_use_run_id"] == ""  # the failed run is no longer this task's
    assert op(task="flaky then fine").execute(context(store, try_number=3)) == "adopted"
    assert emulator.count("POST", "/v4/runs") == 2 and store.values["browser_use_run_id"] != failed_run
    nothing_left(emulator)


def test_budgets_follow_v4s_session_semantics(emulator: BrowserUseEmulator) -> None:
    """maxCostUsd is the session's budget on v4: a conversation kept for follow-ups gets
    session_max_cost_usd (max_cost_usd is held by the client), a one-off run the lower cap, and
    a follow-up sends none (it would replace the budget)."""
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    emulator.state.scenario = Scenario().add("first", output="one", duration=0.1).add("second", output="two")
    sent: list[dict[str, Any]] = []
    real_create = BrowserUseHook.create_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            BrowserUseHook, "create_run", lambda self, body: sent.append(dict(body)) or real_create(self, body)
        )
        first = context()
        op(task="first turn", keep_alive=600, max_cost_usd=0.5, session_max_cost_usd=3).execute(first)
        session_id = first["ti"].xcom[_common.SESSION_ID_KEY]
        op(task="second turn", session_id=session_id, max_cost_usd=0.2).execute(context())
    assert sent[0]["maxCostUsd"] == "3" and "maxCostUsd" not in sent[1]
    assert emulator.state.v4.sessions[session_id].cost_cap == 3
    EndAgentSessionOperator(task_id="end", session_id=session_id).execute(context())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            BrowserUseHook, "create_run", lambda self, body: sent.append(dict(body)) or real_create(self, body)
        )
        op(task="first turn", max_cost_usd=0.5, session_max_cost_usd=3).execute(context())
    assert sent[2]["maxCostUsd"] == "0.5"  # the conversation ends with the task: the lower cap
    nothing_left(emulator)


def test_a_session_budget_reached_fails_without_retries(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("expensive", cost_per_second="1.0", duration=20)
    with pytest.raises(AirflowFailException, match=r"session_max_cost_usd=0.4.*Not retried"):
        op(task="an expensive run", session_max_cost_usd=0.4).execute(context())
    nothing_left(emulator)


def test_a_repair_keeps_the_judge(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = (
        Scenario()
        .add(
            "did not match the required JSON Schema",
            output_json={"title": "Dune", "price_gbp": 12.5},
            judge_verdict=True,
        )
        .add("price of Dune", output="twelve fifty", duration=0.05)
    )
    operator = op(task="the price of Dune", structured_output=Price, judge=True, success_policy="judge")
    assert operator.execute(context()) == {"title": "Dune", "price_gbp": 12.5}
    _, repair = _runs(emulator)
    assert repair["judgement"] == {"verdict": True, "reasoning": "Emulated judge: the scripted verdict."}
    nothing_left(emulator)


def test_a_follow_up_copies_only_the_files_it_wrote(emulator: BrowserUseEmulator, tmp_path: Path) -> None:
    emulator.state.scenario = (
        Scenario()
        .add("draft", output="ok", duration=0.05, output_files=[{"file_name": "draft.md", "content": "v1"}])
        .add("final", output="ok", duration=0.05, output_files=[{"file_name": "final.md", "content": "v2"}])
    )
    first = context()
    op(task="write the draft", keep_alive=600).execute(first)
    session_id = first["ti"].xcom[_common.SESSION_ID_KEY]
    time.sleep(1.2)  # the draft is older than the follow-up by more than the clock's grace
    follow = context()
    op(task="write the final", session_id=session_id, output_files_path=str(tmp_path)).execute(follow)
    assert [Path(p).name for p in follow["ti"].xcom[_common.OUTPUT_FILES_KEY]] == ["final.md"]
    EndAgentSessionOperator(task_id="end", session_id=session_id).execute(context())
    nothing_left(emulator)


def test_the_triggers_kill_stops_the_browser_even_when_the_cancel_fails(emulator: BrowserUseEmulator) -> None:
    import asyncio

    emulator.state.scenario = Scenario().add("slow", duration=60)
    with pytest.raises(TaskDeferred) as deferred:
        op(task="a slow run", deferrable=True).execute(context())
    emulator.add_fault(method="POST", path=r"/v4/runs/.*/cancel", status=401)
    asyncio.run(deferred.value.trigger.on_kill())
    assert emulator.active_browser_count() == 0 and emulator.active_run_count() == 1
    emulator.state.v4.cancel_run(deferred.value.trigger.watched_id)
    nothing_left(emulator)


def test_the_deferred_sensor_waits_for_a_late_verdict(emulator: BrowserUseEmulator) -> None:
    from browser_use_sdk.v4 import BrowserUse

    emulator.state.scenario = Scenario().add("judged", output="seen", duration=0.3, judge_verdict=True)
    client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.v4_base_url)
    run = client.runs.create("a judged run", judge={})
    sensor = AgentRunSensor(
        task_id="wait", run_id=str(run.id), poke_interval=0.05, success_policy="judge", deferrable=True
    )
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx)
    event = first_event(deferred.value.trigger)
    assert event["event"] == "ended"
    assert sensor.execute_complete(ctx, event) == "seen"  # waited for the verdict to land
    EndAgentSessionOperator(task_id="end", session_id=str(run.session_id)).execute(context())
    nothing_left(emulator)


def test_a_retry_does_not_adopt_a_run_the_judge_rejected(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("judged", output="done", judge_verdict=False, duration=0.05)
    store = FakeStore()
    operator = op(task="a judged run", judge=True, success_policy="judge")
    with pytest.raises(BrowserUseTaskError, match="verdict is False"):
        operator.execute(context(store))
    emulator.state.scenario = Scenario().add("judged", output="done", judge_verdict=True, duration=0.05)
    assert operator.execute(context(store, try_number=2)) == "done"
    assert emulator.count("POST", "/v4/runs") == 2  # a new run, not the rejected one again
    nothing_left(emulator)


def test_a_follow_up_retry_adopts_its_running_run_past_a_failed_one(emulator: BrowserUseEmulator) -> None:
    from browser_use_sdk.v4 import BrowserUse

    emulator.state.scenario = Scenario().add("start", output="ok", duration=0.05).add("go on", status="failed")
    first = context()
    op(task="start the conversation", keep_alive=600).execute(first)
    session_id = first["ti"].xcom[_common.SESSION_ID_KEY]
    with pytest.raises(BrowserUseTaskError):  # try 1 of the follow-up: its run fails
        op(task="go on", session_id=session_id).execute(context())
    emulator.state.scenario = Scenario().add("go on", output="went on", duration=1.0)
    client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.v4_base_url)
    client.runs.create("go on", session_id=session_id)  # try 2 created this one, then died
    # Try 3 (no task state store: Airflow 3.1/3.2) adopts it: the failed run does not count.
    assert op(task="go on", session_id=session_id).execute(context(try_number=3)) == "went on"
    assert emulator.count("POST", "/v4/runs") == 3 == len(emulator.state.v4.runs)  # try 3 created none
    EndAgentSessionOperator(task_id="end", session_id=session_id).execute(context())
    nothing_left(emulator)
