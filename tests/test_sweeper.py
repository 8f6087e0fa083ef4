"""StopIdleSessionsOperator against an emulator seeded with a mix of sessions."""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_provider_browseruse import _wire
from airflow_provider_browseruse.operators import StopIdleSessionsOperator
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import task_context

HOUR = 3600.0
TAGS = {_wire.TAG_DAG_ID: "scrape", _wire.TAG_RUN_ID: "r", _wire.TAG_TASK_ID: "t", _wire.TAG_MAP_INDEX: "-1"}


def seed(emulator: BrowserUseEmulator, *, tagged: bool, busy: bool, age: float, idle: float) -> str:
    """An active kept-alive session started ``age`` s ago whose one task ended ``idle`` s ago (or runs)."""
    state = emulator.state
    session_id = state.create_session({"keepAlive": True})["id"]
    state.sessions[session_id].created -= age
    body = {"task": "busy job" if busy else "done job", "sessionId": session_id}
    if tagged:
        body["metadata"] = TAGS
    task = state.tasks[state.create_task(body)["id"]]
    task.created = state.clock() - (0.1 if busy else idle + 1.0)
    return session_id


@pytest.fixture
def mix(emulator: BrowserUseEmulator) -> dict[str, str]:
    emulator.state.scenario = Scenario().add("busy job", duration=10 * HOUR, cost="1.00").add("done job", duration=1.0)
    return {
        "ours_idle_old": seed(emulator, tagged=True, busy=False, age=3 * HOUR, idle=2 * HOUR),
        "ours_idle_young": seed(emulator, tagged=True, busy=False, age=600, idle=300),
        "ours_busy_old": seed(emulator, tagged=True, busy=True, age=9 * HOUR, idle=0),
        "ours_idle_recent_but_old": seed(emulator, tagged=True, busy=False, age=8 * HOUR, idle=60),
        "foreign_idle_old": seed(emulator, tagged=False, busy=False, age=5 * HOUR, idle=4 * HOUR),
    }


def stopped(emulator: BrowserUseEmulator, mix: dict[str, str]) -> set[str]:
    return {name for name, sid in mix.items() if emulator.state.get_session(sid)["status"] == "stopped"}


def run(**kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ctx = task_context()
    found = StopIdleSessionsOperator(task_id="sweep", max_idle=HOUR, max_age=6 * HOUR, **kwargs).execute(ctx)
    return found, ctx["ti"].xcom


def test_it_stops_only_the_providers_idle_sessions_past_their_limits(
    emulator: BrowserUseEmulator, mix: dict[str, str], captured_logs: Any
) -> None:
    found, xcom = run()
    assert stopped(emulator, mix) == {"ours_idle_old", "ours_idle_recent_but_old"}
    by_id = {entry["session_id"]: entry for entry in found}
    old = by_id[mix["ours_idle_old"]]
    assert old["reason"].startswith("idle for 72") and old["age_seconds"] == pytest.approx(3 * HOUR, abs=5)
    assert old["cost_usd"] == 0.021 and old["running_task_id"] is None  # its task and its proxy
    assert by_id[mix["ours_idle_recent_but_old"]]["reason"].startswith("288")  # 8 h old: past max_age
    assert xcom["cost_usd"] == pytest.approx(0.042)
    logs = captured_logs()
    assert f"Stopped session {mix['ours_idle_old']}: idle for" in logs
    assert "Stopped 2 forgotten session(s) and browser(s); together they had cost $0.042" in logs


def test_dry_run_reports_and_stops_nothing(emulator: BrowserUseEmulator, mix: dict[str, str]) -> None:
    found, _ = run(dry_run=True)
    assert {entry["session_id"] for entry in found} == {mix["ours_idle_old"], mix["ours_idle_recent_but_old"]}
    assert stopped(emulator, mix) == set()
    assert emulator.count("PATCH", r"/sessions/.+") == 0


def test_include_all_and_include_running_widen_it(emulator: BrowserUseEmulator, mix: dict[str, str]) -> None:
    found, _ = run(include_all=True, include_running=True)
    assert stopped(emulator, mix) == {"ours_idle_old", "ours_idle_recent_but_old", "ours_busy_old", "foreign_idle_old"}
    busy = next(entry for entry in found if entry["session_id"] == mix["ours_busy_old"])
    assert busy["running_task_id"] is not None and busy["idle_seconds"] is None
    assert emulator.state.get_task(busy["running_task_id"])["status"] == "stopped"  # stopped with its session


def test_bad_limits_are_refused_at_parsing() -> None:
    with pytest.raises(ValueError, match="max_idle must be a positive number of seconds"):
        StopIdleSessionsOperator(task_id="sweep", max_idle=0)
    with pytest.raises(ValueError, match="max_age must be a positive number of seconds"):
        StopIdleSessionsOperator(task_id="sweep", max_age="6h")


def test_bare_browsers_are_stopped_only_with_include_all_past_max_age(emulator: BrowserUseEmulator) -> None:
    state = emulator.state
    old = state.create_browser({"timeout": 240})["id"]
    state.browsers[old].created -= 3.9 * HOUR  # under its 4 h timeout, past a 1 h max_age
    young = state.create_browser({})["id"]
    agents = state.create_browser({"timeout": 240})["id"]
    state.browsers[agents].created -= 3.9 * HOUR
    state.browsers[agents].agent_session_id = "3c90c3cc-0d44-4b50-8888-8dd25736052a"  # an agent session's own

    def sweep(**kwargs: Any) -> list[dict[str, Any]]:
        return StopIdleSessionsOperator(task_id="sweep", max_idle=HOUR, **kwargs).execute(task_context())

    assert sweep(max_age=HOUR) == []  # not the provider's: untouched without include_all
    assert sweep(include_all=True) == []  # no max_age: a bare browser's idleness cannot be seen
    [entry] = sweep(include_all=True, max_age=HOUR)
    assert (entry["kind"], entry["browser_id"]) == ("browser", old)
    assert entry["cost_usd"] == pytest.approx(0.078, abs=0.001)  # 3.9 h at $0.02 an hour
    statuses = {bid: state.get_browser(bid)["status"] for bid in (old, young, agents)}
    assert statuses == {old: "stopped", young: "active", agents: "active"}
    for bid in (young, agents):
        state.stop_browser(bid)


def test_one_failing_session_does_not_leave_the_others_billing(
    emulator: BrowserUseEmulator, mix: dict[str, str]
) -> None:
    broken = mix["ours_idle_old"]
    emulator.add_fault(method="PATCH", path=f"/sessions/{broken}", status=403, times=10)
    ctx = task_context()
    with pytest.raises(Exception, match=rf"1 could not be swept \(the rest were\): session {broken}: .*403"):
        StopIdleSessionsOperator(task_id="sweep", max_idle=HOUR, max_age=6 * HOUR).execute(ctx)
    assert stopped(emulator, mix) == {"ours_idle_recent_but_old"}  # the sweep went on past it
    assert ctx["ti"].xcom["cost_usd"] == pytest.approx(0.021)
    emulator.clear_faults()


class ShiftedClock:
    """The emulator's clock, set back ``offset`` seconds while the past is seeded."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() - self.offset


def seed_v4(emulator: BrowserUseEmulator, clock: ShiftedClock, *, ours: bool, busy: bool, age: float) -> str:
    """A v4 conversation started ``age`` s ago whose browser is kept alive 4 h; its one run
    ended a second later (or still runs). Ours: in a workspace named as RunAgentOperator names it."""
    from browser_use_sdk.v4 import BrowserUse

    client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.v4_base_url)
    clock.offset = age
    try:
        workspace = client.workspaces.create(name="airflow-scrape.t-0123456789abcdef01234567") if ours else None
        run = client.runs.create(
            "busy job" if busy else "done job",
            keep_alive=14_400,
            workspace_id=str(workspace.id) if workspace else None,
        )
    finally:
        clock.offset = 0.0
    return str(run.session_id)


def test_v4_conversations_are_swept_by_the_same_rules_beside_v2_sessions(
    emulator: BrowserUseEmulator, mix: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ShiftedClock()
    monkeypatch.setattr(emulator.state, "clock", clock)
    v4 = {
        "v4_ours_idle_old": seed_v4(emulator, clock, ours=True, busy=False, age=3 * HOUR),
        "v4_ours_idle_young": seed_v4(emulator, clock, ours=True, busy=False, age=1200),
        "v4_ours_busy": seed_v4(emulator, clock, ours=True, busy=True, age=2 * HOUR),
        "v4_foreign_idle_old": seed_v4(emulator, clock, ours=False, busy=False, age=3.5 * HOUR),
    }

    def browser_stopped() -> set[str]:
        active = {b["agentSessionId"] for b in emulator.state.list_browsers("active")}
        return {name for name, sid in v4.items() if sid not in active}

    dry, _ = run(dry_run=True)
    assert browser_stopped() == set() and emulator.count("PATCH", "/v4/browsers/.+") == 0
    found, xcom = run()
    assert stopped(emulator, mix) == {"ours_idle_old", "ours_idle_recent_but_old"}  # v2 as before
    assert browser_stopped() == {"v4_ours_idle_old"}
    entry = next(e for e in found if e["kind"] == "agent_session")
    assert entry["session_id"] == v4["v4_ours_idle_old"] and entry["reason"].startswith("idle for 10")
    assert entry["cost_usd"] > 0.02 and entry["running_run_id"] is None  # the run and 3 h of browser
    assert [e["session_id"] for e in dry] == [e["session_id"] for e in found]
    assert xcom["cost_usd"] == pytest.approx(0.042 + entry["cost_usd"])
    ctx = task_context()
    wide = StopIdleSessionsOperator(
        task_id="sweep", max_idle=HOUR, max_age=1.5 * HOUR, include_all=True, include_running=True
    ).execute(ctx)
    assert browser_stopped() == {"v4_ours_idle_old", "v4_ours_busy", "v4_foreign_idle_old"}
    busy = next(e for e in wide if e.get("session_id") == v4["v4_ours_busy"])
    assert busy["running_run_id"] is not None and busy["idle_seconds"] is None
    assert emulator.state.v4.get_run(busy["running_run_id"])["status"] == "cancelled"
    for sid in (v4["v4_ours_idle_young"],):
        emulator.state.v4.delete_session(sid)
    assert emulator.active_run_count() == 0 and emulator.active_browser_count() == 0


def test_a_v4_listing_error_does_not_stop_the_v2_sweep(emulator: BrowserUseEmulator, mix: dict[str, str]) -> None:
    emulator.add_fault(method="GET", path="/v4/browsers", status=500, times=10)
    ctx = task_context()
    with pytest.raises(Exception, match=r"1 could not be swept \(the rest were\): v4 browsers: .*500"):
        StopIdleSessionsOperator(task_id="sweep", max_idle=HOUR, max_age=6 * HOUR).execute(ctx)
    assert stopped(emulator, mix) == {"ours_idle_old", "ours_idle_recent_but_old"}
    emulator.clear_faults()
    emulator.add_fault(method="GET", path="/v4/browsers", status=404, times=10)  # a gateway without v4
    assert StopIdleSessionsOperator(task_id="sweep", max_idle=HOUR).execute(task_context()) == []
    emulator.clear_faults()
