"""StopIdleSessionsOperator against an emulator seeded with a mix of sessions."""

from __future__ import annotations

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
