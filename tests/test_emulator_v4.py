"""The emulator's API v4 over real loopback HTTP: runs, sessions, queue, workspaces, the spec, the SDK."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from browser_use_sdk.generated.v4 import models as sdk
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from airflow_provider_browseruse.testing._state import _iso
from airflow_provider_browseruse.testing._state_v4 import JUDGE_DELAY

SPEC = json.loads((Path(__file__).parent / "data" / "openapi-v4.json").read_text())
UNKNOWN = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SCHEMA = {"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]}


class Client:
    """A plain HTTP client of /api/v4 that keeps every answer, to check them all."""

    def __init__(self, emulator: BrowserUseEmulator) -> None:
        self.base = emulator.v4_base_url
        self.http = requests.Session()
        self.http.headers["X-Browser-Use-API-Key"] = emulator.state.api_key
        self.answers: list[tuple[str, str, requests.Response]] = []

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        answer = self.http.request(method, self.base + path, timeout=10, **kwargs)
        self.answers.append((method, path.split("?")[0], answer))
        return answer


class FakeClock:
    """The emulator's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def api(emulator: BrowserUseEmulator) -> Client:
    return Client(emulator)


@pytest.fixture
def clock(emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(emulator.state, "clock", fake)
    return fake


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def run(api: Client, task: str, **fields: Any) -> dict[str, Any]:
    answer = api("POST", "/runs", json={"task": task, **fields})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


# --- runs over the clock -----------------------------------------------------------------------


def test_run_states_follow_the_clock(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    emulator.state.scenario = (
        Scenario()
        .add("good", start_delay=1.0, duration=2.0, output="done", cost="0.04")
        .add("bad", start_delay=0, duration=1.0, status="failed", output="Login page did not load")
        .add("halt", start_delay=0, duration=1.0, status="stopped")
    )
    good = run(api, "good one")
    assert good["status"] == "queued"
    assert good["eventsUrl"] == f"{emulator.v4_base_url}/runs/{good['id']}/events"
    seen = []
    for step in (0.6, 0.4, 1.0, 1.0):
        clock.advance(step)
        seen.append(api("GET", f"/runs/{good['id']}/status").json()["status"])
    assert seen == ["dispatching", "running", "running", "completed"]
    summary = api("GET", f"/runs/{good['id']}").json()
    assert (summary["result"], summary["output"], summary["error"], summary["totalCostUsd"]) == (
        "done",
        None,
        None,
        "0.0400",
    )
    assert summary["totalInputTokens"] > 0 and summary["judgement"] is None  # no judge asked for
    bad, halt = run(api, "bad one", judge={}), run(api, "halt one")
    clock.advance(0.5)
    midway = api("GET", f"/runs/{bad['id']}").json()
    assert (midway["status"], midway["error"], midway["judgement"]) == ("running", None, None)
    clock.advance(0.5)
    failed = api("GET", f"/runs/{bad['id']}").json()
    assert (failed["status"], failed["result"], failed["error"]) == ("failed", None, "Login page did not load")
    assert failed["judgement"] is None  # the verdict lands a moment after the run ends
    clock.advance(JUDGE_DELAY)
    assert api("GET", f"/runs/{bad['id']}").json()["judgement"]["verdict"] is False
    assert api("GET", f"/runs/{halt['id']}/status").json()["status"] == "cancelled"
    assert emulator.active_run_count() == 0


def test_results_and_structured_output(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    emulator.state.scenario = (
        Scenario(default=Scenario().default.model_copy(update={"start_delay": 0, "duration": 0.1}))
        .add("json", output_json={"price": 9.5}, duration=0.1, start_delay=0)
        .add("broken", output_json={"price": "free"})
    )
    scripted = run(api, "json please", outputSchema=SCHEMA)
    made_up = run(api, "anything", outputSchema=SCHEMA)
    text = run(api, "anything")
    refused = api("POST", "/runs", json={"task": "broken", "outputSchema": SCHEMA})
    assert refused.status_code == 422
    assert "emulator scenario" in refused.json()["detail"][0]["msg"]
    assert len(emulator.state.v4.runs) == 3  # the refused create made nothing
    assert api("GET", f"/runs/{scripted['id']}").json()["output"] is None  # not before completed
    clock.advance(1)
    views = {r["id"]: api("GET", f"/runs/{r['id']}").json() for r in (scripted, made_up, text)}
    assert (views[scripted["id"]]["output"], views[scripted["id"]]["result"]) == ({"price": 9.5}, '{"price": 9.5}')
    assert views[scripted["id"]]["outputSchema"] == SCHEMA
    jsonschema.validate(views[made_up["id"]]["output"], SCHEMA)
    assert json.loads(views[made_up["id"]]["result"]) == views[made_up["id"]]["output"]
    assert views[text["id"]]["output"] is None
    assert views[text["id"]]["result"].startswith("Emulated result ")


def test_create_validation(api: Client, emulator: BrowserUseEmulator) -> None:
    secret = "hunter2-secret-value"
    answer = api(
        "POST",
        "/runs",
        json={
            "task": "",
            "metadata": {"k": "v"},
            "keepAlive": 60,
            "secretBindings": [{"alias": "pw", "source": {"type": "inline", "value": secret}, "allowedDomains": []}],
        },
    )
    assert answer.status_code == 422
    locs = {tuple(e["loc"]) for e in answer.json()["detail"]}
    assert {("body", "task"), ("body", "metadata"), ("body", "keepAlive")} <= locs
    assert all(set(e) == {"loc", "msg", "type"} for e in answer.json()["detail"])
    assert secret not in answer.text
    for bad in (0, -1, "0", "-2", "abc", "1e3", True):
        assert api("POST", "/runs", json={"task": "t", "maxCostUsd": bad}).status_code == 422, bad
    assert api("POST", "/runs", json={"task": "t", "attachedFileIds": [UNKNOWN] * 21}).status_code == 422
    assert api("POST", "/runs", json={"task": "t", "judge": {"strict": True}}).status_code == 422
    assert api("POST", "/runs", json={"task": "t", "workspaceId": UNKNOWN}).status_code == 404
    created = run(api, "t", model="some-future-model", maxCostUsd="2.5", keepAlive=14400, secretBindings=[])
    assert created["model"] == "some-future-model"  # unknown models pass through
    assert run(api, "t2", maxCostUsd=0.5)["model"] == "gpt-6-luna"


def test_second_active_run_of_a_session_is_409(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    first = run(api, "one")
    busy = api("POST", "/runs", json={"task": "two", "sessionId": first["sessionId"]})
    assert (busy.status_code, busy.json()) == (409, {"detail": "Session already has an active run"})
    other_workspace = api("POST", "/workspaces", json={}).json()["id"]
    mismatch = api("POST", "/runs", json={"task": "x", "sessionId": first["sessionId"], "workspaceId": other_workspace})
    assert mismatch.status_code == 400
    assert api("POST", "/runs", json={"task": "x", "sessionId": UNKNOWN}).status_code == 404
    clock.advance(1)
    second = run(api, "two", sessionId=first["sessionId"], workspaceId=first["workspaceId"])
    assert (second["sessionId"], second["workspaceId"]) == (first["sessionId"], first["workspaceId"])
    session = api("GET", f"/sessions/{first['sessionId']}").json()
    assert (session["latestRunId"], session["status"], session["task"]) == (second["id"], "queued", "two")


def test_cancel_is_idempotent_and_events_page(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    emulator.state.scenario = Scenario().add("steps", start_delay=0, duration=4.0, steps=3)
    created = run(api, "steps")
    clock.advance(2.5)  # steps at 1, 2, 3 s: two have happened
    events = api("GET", f"/runs/{created['id']}/events").json()
    assert [e["type"] for e in events["events"]] == ["run.started", "browser.ready", "agent.step", "agent.step"]
    assert [e["id"] for e in events["events"]] == [1, 2, 3, 4]
    assert events["events"][1]["data"]["live_view_url"].startswith("https://")
    assert "token=" in events["events"][1]["data"]["live_view_url"]
    page = api("GET", f"/runs/{created['id']}/events", params={"after": 1, "limit": 2}).json()
    assert ([e["id"] for e in page["events"]], page["nextAfter"], page["hasMore"]) == ([2, 3], 3, True)
    cancelled = api("POST", f"/runs/{created['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    clock.advance(5)
    again = api("POST", f"/runs/{created['id']}/cancel").json()
    assert again == cancelled  # a terminal run comes back unchanged
    types = [e["type"] for e in api("GET", f"/runs/{created['id']}/events").json()["events"]]
    assert types == ["run.started", "browser.ready", "agent.step", "agent.step", "run.cancelled"]
    assert api("POST", f"/runs/{UNKNOWN}/cancel").status_code == 404


def test_run_and_session_lists_page_by_cursor(api: Client, clock: FakeClock) -> None:
    ids = []
    for n in range(3):
        ids.append(run(api, f"run {n}")["id"])
        clock.advance(1)
    first = api("GET", "/runs", params={"limit": 2}).json()
    assert ([r["id"] for r in first["runs"]], first["hasMore"]) == ([ids[2], ids[1]], True)
    second = api("GET", "/runs", params={"limit": 2, "cursor": first["nextCursor"]}).json()
    assert ([r["id"] for r in second["runs"]], second["hasMore"], second["nextCursor"]) == ([ids[0]], False, None)
    assert api("GET", "/runs", params={"cursor": "not a cursor"}).status_code == 400
    sessions = api("GET", "/sessions", params={"limit": 2}).json()
    assert len(sessions["sessions"]) == 2 and sessions["hasMore"] is True
    rest = api("GET", "/sessions", params={"cursor": sessions["nextCursor"]}).json()
    assert [s["latestRunId"] for s in rest["sessions"]] == [ids[0]]


# --- budgets -----------------------------------------------------------------------------------


def test_max_cost_ends_the_run_failed_at_the_cap(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    emulator.state.scenario = Scenario().add("metered", start_delay=0, duration=60, cost_per_second="0.10")
    created = run(api, "metered work", maxCostUsd=0.05, judge={})
    clock.advance(0.3)
    running = api("GET", f"/runs/{created['id']}").json()
    assert (running["status"], running["totalCostUsd"]) == ("running", "0.0300")
    clock.advance(10)
    ended = api("GET", f"/runs/{created['id']}").json()
    assert (ended["status"], ended["totalCostUsd"], ended["result"]) == ("failed", "0.0500", None)
    assert ended["error"] == "The session reached its cost cap ($0.05)"  # maxCostUsd is the session's budget
    clock.advance(JUDGE_DELAY)
    assert api("GET", f"/runs/{created['id']}").json()["judgement"]["verdict"] is False
    events = api("GET", f"/runs/{created['id']}/events").json()["events"]
    assert events[-1]["type"] == "run.failed"
    assert events[-1]["ts"] == ended["updatedAt"]


def test_session_cost_cap(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    emulator.state.scenario = (
        Scenario()
        .add("cheap", start_delay=0, duration=0.5, cost="0.02")
        .add("metered", start_delay=0, duration=60, cost_per_second="0.10")
    )
    first = run(api, "cheap")
    sid = first["sessionId"]
    clock.advance(1)
    capped = api("PATCH", f"/sessions/{sid}/cost-cap", json={"maxCostUsd": "0.05"})
    assert capped.json() == {"sessionId": sid, "maxCostUsd": "0.05"}
    second = run(api, "metered", sessionId=sid)
    clock.advance(0.2)
    assert api("GET", f"/runs/{second['id']}/status").json()["status"] == "running"
    clock.advance(0.2)  # 0.02 + 0.03: the session's total reached its cap at 0.3 s
    ended = api("GET", f"/runs/{second['id']}").json()
    assert (ended["status"], ended["totalCostUsd"]) == ("failed", "0.0300")
    assert ended["error"] == "The session reached its cost cap ($0.05)"
    cost = api("GET", f"/sessions/{sid}/cost").json()
    assert (cost["numRuns"], cost["llmCostUsd"]) == (2, "0.0500")
    assert Decimal(cost["totalCostUsd"]) == Decimal(cost["llmCostUsd"]) + Decimal(cost["browserCostUsd"])

    # A cap below what the active run has spent already ends it at once, at its cost so far.
    third = run(api, "metered")
    clock.advance(1)
    api("PATCH", f"/sessions/{third['sessionId']}/cost-cap", json={"maxCostUsd": 0.05})
    over = api("GET", f"/runs/{third['id']}").json()
    assert (over["status"], over["totalCostUsd"]) == ("failed", "0.1000")
    clock.advance(5)
    assert api("GET", f"/runs/{third['id']}").json()["totalCostUsd"] == "0.1000"
    assert api("PATCH", f"/sessions/{sid}/cost-cap", json={"maxCostUsd": 0}).status_code == 422
    assert api("PATCH", f"/sessions/{UNKNOWN}/cost-cap", json={"maxCostUsd": 1}).status_code == 404


# --- the queue ---------------------------------------------------------------------------------


def test_queue_follow_up_and_interrupt(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    emulator.state.scenario = Scenario(default=Scenario().default.model_copy(update={"start_delay": 0, "duration": 1}))
    first = run(api, "first")
    sid = first["sessionId"]
    queued = api("POST", f"/sessions/{sid}/queue", json={"text": "second"}).json()
    assert (queued["status"], queued["runId"], queued["mode"]) == ("pending", None, "queue")
    dropped = api("POST", f"/sessions/{sid}/queue", json={"text": "never"}).json()
    assert api("DELETE", f"/sessions/{sid}/queue/{dropped['id']}").json()["status"] == "cancelled"
    assert api("DELETE", f"/sessions/{sid}/queue/{dropped['id']}").status_code == 409
    assert [m["id"] for m in api("GET", f"/sessions/{sid}/queue").json()["queue"]] == [queued["id"]]
    clock.advance(1.5)  # the first run ended at 1 s: the message became a run then
    consumed = api("GET", f"/sessions/{sid}/queue/{queued['id']}").json()
    assert consumed["status"] == "consumed"
    follow_up = api("GET", f"/runs/{consumed['runId']}").json()
    assert (follow_up["task"], follow_up["status"], follow_up["sessionId"]) == ("second", "running", sid)
    assert follow_up["createdAt"] == api("GET", f"/runs/{first['id']}").json()["updatedAt"]
    events = api("GET", f"/runs/{follow_up['id']}/events").json()["events"]
    assert "browser.reattached" in [e["type"] for e in events]  # the session's browser, kept
    assert api("GET", f"/sessions/{sid}/queue").json()["queue"] == []

    interrupting = api("POST", f"/sessions/{sid}/queue", json={"text": "third", "interrupt": True}).json()
    assert (interrupting["status"], interrupting["mode"]) == ("consumed", "interrupt")
    assert api("GET", f"/runs/{follow_up['id']}/status").json()["status"] == "cancelled"
    assert api("GET", f"/runs/{interrupting['runId']}/status").json()["status"] == "running"
    later = api("POST", f"/sessions/{sid}/queue", json={"text": "fourth"}).json()
    assert api("DELETE", f"/sessions/{sid}").status_code == 204  # cancels the active run and the queue
    assert api("GET", f"/runs/{interrupting['runId']}/status").json()["status"] == "cancelled"
    assert emulator.state.v4.messages[later["id"]].status == "cancelled"
    assert api("GET", f"/sessions/{sid}").status_code == 404
    assert emulator.active_run_count() == 0 and emulator.active_browser_count() == 0
    clock.advance(5)
    assert len(emulator.state.v4.runs) == 3  # no follow-up of a deleted session


def test_idle_session_message_starts_a_run_and_a_full_queue_is_429(api: Client, clock: FakeClock) -> None:
    first = run(api, "first")
    sid = first["sessionId"]
    clock.advance(5)
    now = api("POST", f"/sessions/{sid}/queue", json={"text": "now"}).json()
    assert now["status"] == "consumed" and now["runId"] is not None
    for n in range(10):
        assert api("POST", f"/sessions/{sid}/queue", json={"text": f"m{n}"}).status_code == 200
    full = api("POST", f"/sessions/{sid}/queue", json={"text": "one too many"})
    assert full.status_code == 429 and "Retry-After" in full.headers
    assert api("POST", f"/sessions/{sid}/queue", json={"text": "x", "colour": "red"}).status_code == 422


# --- browsers ----------------------------------------------------------------------------------


def test_keep_alive_decides_when_the_agent_browser_stops(
    api: Client, emulator: BrowserUseEmulator, clock: FakeClock
) -> None:
    emulator.state.scenario = Scenario(default=Scenario().default.model_copy(update={"start_delay": 0, "duration": 1}))
    first = run(api, "first", keepAlive=300)
    sid = first["sessionId"]
    [browser] = api("GET", "/browsers", params={"agentSessionId": sid}).json()["items"]
    assert browser["status"] == "active" and "token=" in browser["liveUrl"]
    assert emulator.active_browser_count() == 1
    clock.advance(1 + 299)
    assert api("GET", f"/browsers/{browser['id']}").json()["status"] == "active"
    follow_up = run(api, "second", sessionId=sid)  # inherits keepAlive 300, reuses the browser
    clock.advance(1 + 299.5)
    assert emulator.active_browser_count() == 1
    clock.advance(1)
    stopped = api("GET", f"/browsers/{browser['id']}").json()
    assert stopped["status"] == "stopped" and stopped["liveUrl"] is None
    assert stopped["finishedAt"] == _iso(emulator.state.v4.runs[follow_up["id"]].ends() + 300)
    assert emulator.active_browser_count() == 0
    third = run(api, "third", sessionId=sid, keepAlive=None)  # a new browser; keepAlive back to 120
    events = api("GET", f"/runs/{third['id']}/events", params={"after": 0}).json()["events"]
    assert "browser.ready" in [e["type"] for e in events]
    browsers = api("GET", "/browsers", params={"agentSessionId": sid}).json()["items"]
    assert [b["status"] for b in browsers] == ["active", "stopped"]
    clock.advance(1 + 119)
    assert emulator.active_browser_count() == 1
    clock.advance(1)
    assert emulator.active_browser_count() == 0
    # v2's /browsers lists the same store, agent browsers with their session.
    v2 = requests.get(
        f"{emulator.base_url}/browsers", headers={"X-Browser-Use-API-Key": emulator.state.api_key}, timeout=5
    ).json()
    assert {b["agentSessionId"] for b in v2["items"]} == {sid}
    assert len(emulator.v4_browsers(sid)) == 2


def test_stopping_the_browser_by_hand(api: Client, emulator: BrowserUseEmulator) -> None:
    created = run(api, "x")
    [browser] = emulator.v4_browsers(created["sessionId"])
    assert api("PATCH", f"/browsers/{browser['id']}", json={"action": "stop"}).json()["status"] == "stopped"
    assert emulator.active_browser_count() == 0
    bare = api("POST", "/browsers", json={"timeout": 5})
    assert bare.status_code == 201 and bare.json()["agentSessionId"] is None
    assert emulator.active_browser_count() == 1


def test_one_cap_for_v2_sessions_and_v4_browsers(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.state.max_concurrent_sessions = 2
    emulator.state.retry_after = 3
    v2 = {"X-Browser-Use-API-Key": emulator.state.api_key}
    assert requests.post(f"{emulator.base_url}/sessions", json={}, headers=v2, timeout=5).status_code == 201
    first = run(api, "v4 run")
    refused = api("POST", "/runs", json={"task": "third"})
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "3")
    assert refused.json()["detail"].startswith("Too many concurrent active sessions.")
    assert requests.post(f"{emulator.base_url}/sessions", json={}, headers=v2, timeout=5).status_code == 429
    assert (emulator.state.peak_active_sessions, emulator.state.refused_at_cap) == (2, 2)
    assert len(emulator.state.v4.sessions) == 1  # the refused create made no session
    # A follow-up reusing the session's live browser needs no new slot.
    api("POST", f"/runs/{first['id']}/cancel")
    assert api("POST", "/runs", json={"task": "again", "sessionId": first["sessionId"]}).status_code == 200
    [browser] = emulator.v4_browsers(first["sessionId"])
    api("PATCH", f"/browsers/{browser['id']}", json={"action": "stop"})
    assert requests.post(f"{emulator.base_url}/sessions", json={}, headers=v2, timeout=5).status_code == 201


# --- workspaces --------------------------------------------------------------------------------


def test_upload_put_must_match_what_was_presigned(api: Client, emulator: BrowserUseEmulator) -> None:
    wid = api("POST", "/workspaces", json={"name": "inputs"}).json()["id"]
    [item] = api(
        "POST",
        f"/workspaces/{wid}/files/upload",
        json={"files": [{"name": "a b.csv", "contentType": "text/csv", "size": 4}]},
    ).json()["files"]
    assert (item["storedName"], item["path"], item["willOverride"]) == ("a_b.csv", "uploads/a_b.csv", False)
    assert item["uploadUrl"].startswith(f"{emulator.root_url}/_emulator/upload/")
    wrong_type = requests.put(item["uploadUrl"], data=b"1234", headers={"Content-Type": "text/plain"}, timeout=5)
    assert wrong_type.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in wrong_type.text
    wrong_size = requests.put(item["uploadUrl"], data=b"12345", headers={"Content-Type": "text/csv"}, timeout=5)
    assert wrong_size.status_code == 403 and "Content-Length" in wrong_size.text
    unknown = requests.put(f"{emulator.root_url}/_emulator/upload/nope", data=b"1234", timeout=5)
    assert unknown.status_code == 403
    created = run(api, "use it", workspaceId=wid, attachedFileIds=[item["id"], UNKNOWN])
    assert created["missingFileIds"] == [item["id"], UNKNOWN]  # not uploaded yet, and unknown
    pending = api("GET", f"/runs/{created['id']}/attachments").json()["attachments"]
    assert [(a["name"], a["status"], a["sizeBytes"]) for a in pending] == [("a b.csv", "pending", 4)]
    ok = requests.put(item["uploadUrl"], data=b"1234", headers={"Content-Type": "text/csv"}, timeout=5)
    assert ok.status_code == 200
    assert api("GET", f"/runs/{created['id']}/attachments").json()["attachments"][0]["status"] == "uploaded"
    files = api("GET", f"/workspaces/{wid}/files", params={"includeUrls": True}).json()["files"]
    assert [(f["path"], f["size"]) for f in files] == [("uploads/a_b.csv", 4)]
    assert requests.get(files[0]["url"], timeout=5).content == b"1234"
    assert "url" not in api("GET", f"/workspaces/{wid}/files").json()["files"][0]
    again = {"files": [{"name": "a b.csv", "contentType": "text/csv", "size": 4}], "allowOverrides": False}
    assert api("POST", f"/workspaces/{wid}/files/upload", json=again).status_code == 409
    again["allowOverrides"] = True
    assert api("POST", f"/workspaces/{wid}/files/upload", json=again).json()["files"][0]["willOverride"] is True
    assert (
        api("POST", f"/workspaces/{wid}/files/upload", json={"files": [{"name": "..", "size": 1}]}).status_code == 400
    )
    assert api("GET", f"/workspaces/{wid}/size").json()["usedBytes"] == 4


def test_output_files_land_in_the_run_workspace(api: Client, emulator: BrowserUseEmulator, clock: FakeClock) -> None:
    emulator.state.scenario = Scenario().add(
        "report", start_delay=0, duration=1, output_files=[{"file_name": "out/report.csv", "content": "a,b\n"}]
    )
    created = run(api, "make a report")
    wid = created["workspaceId"]
    assert api("GET", f"/workspaces/{wid}/files").json()["files"] == []
    clock.advance(2)
    files = api("GET", f"/workspaces/{wid}/files", params={"prefix": "out/", "includeUrls": True}).json()["files"]
    assert [f["path"] for f in files] == ["out/report.csv"]
    assert requests.get(files[0]["url"], timeout=5).text == "a,b\n"
    assert api("GET", f"/workspaces/{wid}/files", params={"prefix": "uploads/"}).json()["files"] == []
    assert api("DELETE", f"/workspaces/{wid}").status_code == 204
    assert api("GET", f"/workspaces/{wid}").json()["archived"] is True
    assert api("POST", "/runs", json={"task": "x", "workspaceId": wid}).status_code == 404


# --- faults, ZDR, admin ------------------------------------------------------------------------


def test_faults_match_the_v4_logged_path(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.add_fault(path="/runs", status=500)  # a v2-style path: never matches a v4 request
    emulator.add_fault(method="POST", path="/v4/runs", status=502, after_handling=True)
    assert api("POST", "/runs", json={"task": "t"}).status_code == 502
    assert len(emulator.state.v4.runs) == 1  # it was created all the same
    [created] = emulator.state.v4.runs
    emulator.add_fault(method="GET", path=r"/v4/runs/[^/]+/status", status=503, retry_after=2)
    answer = api("GET", f"/runs/{created}/status")
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "2")
    emulator.add_fault(path=r"/v4/runs/[^/]+", malformed=True)
    with pytest.raises(ValueError):
        api("GET", f"/runs/{created}").json()
    emulator.add_fault(path=r"/v4/sessions", drop=True)
    with pytest.raises(requests.exceptions.RequestException):
        api("GET", "/sessions").json()
    assert api("GET", "/runs").status_code == 200  # the "/runs" fault was never used
    logged = [(r.method, r.path, r.status) for r in emulator.requests(path="/v4/.*")]
    assert logged[:3] == [
        ("POST", "/v4/runs", 502),
        ("GET", f"/v4/runs/{created}/status", 503),
        ("GET", f"/v4/runs/{created}", 200),
    ]
    assert emulator.count("GET", "/runs") == 0  # v2's paths stay as they were


def test_zero_data_retention(api: Client, emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = run(api, "before ZDR")["sessionId"]
    assert api("POST", f"/sessions/{sid}/purge").status_code == 403  # ZDR projects only
    monkeypatch.setattr(emulator.state, "zero_data_retention", True)
    for method, path in (("POST", "/runs"), ("GET", "/runs"), ("GET", f"/sessions/{sid}"), ("POST", "/workspaces")):
        refused = api(method, path, json={"task": "t"} if method == "POST" else None)
        assert refused.status_code == 403
        assert "Zero Data Retention" in refused.json()["detail"]
    assert api("POST", f"/sessions/{sid}/purge").status_code == 204
    assert api("POST", f"/sessions/{sid}/purge").status_code == 404
    assert emulator.active_run_count() == 0
    no_key = requests.get(f"{emulator.v4_base_url}/runs", timeout=5)
    assert no_key.status_code == 401  # the key is checked first


def test_admin_state_counts_v4_and_reset_forgets_it(api: Client, emulator: BrowserUseEmulator) -> None:
    admin = emulator.root_url + "/_emulator"
    run(api, "one")
    state = requests.get(f"{admin}/state", timeout=5).json()
    assert (state["runCount"], state["activeRunCount"], state["activeBrowserCount"]) == (1, 1, 1)
    assert state["activeSessionCount"] == 0  # v2's meaning
    assert requests.post(f"{admin}/reset", timeout=5).status_code == 204
    assert (emulator.active_run_count(), emulator.active_browser_count(), len(emulator.state.v4.runs)) == (0, 0, 0)
    assert requests.get(f"{admin}/state", timeout=5).json()["runCount"] == 0


def test_missing_key_is_401(emulator: BrowserUseEmulator) -> None:
    answer = requests.post(f"{emulator.v4_base_url}/runs", json={"task": "t"}, timeout=5)
    assert answer.status_code == 401
    assert emulator.state.v4.runs == {}


# --- the contract ------------------------------------------------------------------------------

SDK_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/runs"): sdk.RunCreateResponse,
    ("GET", "/runs"): sdk.RunListResponse,
    ("GET", "/runs/{id}"): sdk.RunSummary,
    ("GET", "/runs/{id}/status"): sdk.RunStatusResponse,
    ("POST", "/runs/{id}/cancel"): sdk.RunSummary,
    ("GET", "/runs/{id}/events"): sdk.RunEventsResponse,
    ("GET", "/runs/{id}/attachments"): sdk.RunAttachmentsResponse,
    ("GET", "/sessions"): sdk.SessionListResponse,
    ("GET", "/sessions/{id}"): sdk.SessionInfo,
    ("PATCH", "/sessions/{id}"): sdk.SessionInfo,
    ("GET", "/sessions/{id}/cost"): sdk.SessionCostResponse,
    ("PATCH", "/sessions/{id}/cost-cap"): sdk.SessionCostCapResponse,
    ("POST", "/sessions/{id}/queue"): sdk.QueuedMessage,
    ("GET", "/sessions/{id}/queue"): sdk.QueueListResponse,
    ("GET", "/sessions/{id}/queue/{n}"): sdk.QueuedMessage,
    ("DELETE", "/sessions/{id}/queue/{n}"): sdk.QueuedMessage,
    ("POST", "/browsers"): sdk.BrowserSessionItemView,
    ("GET", "/browsers"): sdk.BrowserSessionListResponse,
    ("GET", "/browsers/{id}"): sdk.BrowserSessionView,
    ("PATCH", "/browsers/{id}"): sdk.BrowserSessionView,
    ("GET", "/browsers/{id}/downloads"): sdk.BrowserDownloadListResponse,
    ("POST", "/workspaces"): sdk.WorkspaceInfo,
    ("GET", "/workspaces/{id}"): sdk.WorkspaceInfo,
    ("PATCH", "/workspaces/{id}"): sdk.WorkspaceInfo,
    ("GET", "/workspaces/{id}/size"): sdk.WorkspaceSizeInfo,
    ("POST", "/workspaces/{id}/files/upload"): sdk.WorkspaceFileUploadResponse,
    ("GET", "/workspaces/{id}/files"): sdk.WorkspaceFileListResponse,
}
#: Answers the service gives (the SDK or the brief says so) that the spec snapshot does not list.
NOT_IN_SPEC = {
    ("POST", "/runs", 429): "the account's concurrency cap, shared with v2",
    ("GET", "/workspaces/{id}", 404): "an unknown workspace",
    ("POST", "/workspaces/{id}/files/upload", 409): "allowOverrides false (the SDK documents 409)",
    ("POST", "/workspaces", 403): "Zero Data Retention: 403 on every v4 route",
}
DETAIL = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}


def _route(path: str) -> str:
    return re.sub(r"/queue/\d+", "/queue/{n}", re.sub(UUID_RE + "|not-a-uuid", "{id}", path))


def _spec_responses(method: str, path: str) -> dict[str, Any] | None:
    for template, operations in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return dict(operations[method.lower()]["responses"])
    return None


def test_every_v4_answer_matches_the_spec_and_the_sdk(
    api: Client, emulator: BrowserUseEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workload touching every v4 route and status; every answer checked against the spec
    (where it has the route) and the vendor SDK's models (where it has one)."""
    emulator.state.scenario = Scenario().add(
        "files", start_delay=0, duration=1, output_files=[{"file_name": "a.txt", "content": "x"}]
    )
    wid = api("POST", "/workspaces", json={"name": "w"}).json()["id"]
    api("GET", f"/workspaces/{wid}")
    api("PATCH", f"/workspaces/{wid}", json={"name": "renamed"})
    [item] = api("POST", f"/workspaces/{wid}/files/upload", json={"files": [{"name": "in.txt", "size": 2}]}).json()[
        "files"
    ]
    requests.put(item["uploadUrl"], data=b"hi", headers={"Content-Type": "application/octet-stream"}, timeout=5)
    api(
        "POST",
        f"/workspaces/{wid}/files/upload",
        json={"files": [{"name": "in.txt", "size": 2}], "allowOverrides": False},
    )  # 409
    api("POST", f"/workspaces/{wid}/files/upload", json={"files": [{"name": "..", "size": 2}]})  # 400
    api("POST", f"/workspaces/{wid}/files/upload", json={"files": []})  # 422
    api("POST", f"/workspaces/{UNKNOWN}/files/upload", json={"files": [{"name": "a", "size": 2}]})  # 404
    api("GET", f"/workspaces/{UNKNOWN}")  # 404
    body = {"task": "files", "workspaceId": wid, "attachedFileIds": [item["id"]], "outputSchema": SCHEMA}
    created = api("POST", "/runs", json={**body, "judge": {"context": "c"}, "keepAlive": 600, "maxCostUsd": "5"}).json()
    rid, sid = created["id"], created["sessionId"]
    api("GET", f"/runs/{rid}/status")
    api("GET", f"/runs/{rid}")
    api("POST", "/runs", json={"task": "busy", "sessionId": sid})  # 409
    api("POST", "/runs", json={"task": "x", "sessionId": UNKNOWN})  # 404
    api("POST", "/runs", json={"task": "x", "sessionId": sid, "workspaceId": UNKNOWN})  # 400
    api("POST", "/runs", json={"task": "", "extra": 1})  # 422
    api("POST", f"/sessions/{sid}/queue", json={"text": "next"})
    mid = api("POST", f"/sessions/{sid}/queue", json={"text": "dropped"}).json()["id"]
    api("GET", f"/sessions/{sid}/queue")
    api("GET", f"/sessions/{sid}/queue/{mid}")
    api("DELETE", f"/sessions/{sid}/queue/{mid}")
    api("DELETE", f"/sessions/{sid}/queue/{mid}")  # 409
    api("GET", f"/sessions/{sid}/queue/987654")  # 404
    clock.advance(3)  # the run completed, the queued message ran as a follow-up
    api("GET", f"/runs/{rid}")
    api("GET", f"/runs/{rid}/events")
    api("GET", f"/runs/{rid}/attachments")
    api("POST", f"/runs/{rid}/cancel")
    api("GET", "/runs", params={"sessionId": sid, "limit": 1})
    api("GET", "/runs", params={"cursor": "?"})  # 400
    api("GET", f"/runs/{UNKNOWN}")  # 404
    api("GET", "/runs/not-a-uuid")  # 422
    api("GET", f"/workspaces/{wid}/files", params={"includeUrls": True})
    api("GET", f"/workspaces/{wid}/files", params={"cursor": "%%%"})  # 400
    api("GET", f"/workspaces/{wid}/size")
    api("GET", "/sessions")
    api("GET", f"/sessions/{sid}")
    api("PATCH", f"/sessions/{sid}", json={"title": "A title"})
    api("GET", f"/sessions/{sid}/cost")
    api("PATCH", f"/sessions/{sid}/cost-cap", json={"maxCostUsd": 3})
    api("POST", f"/sessions/{sid}/purge")  # 403: not a ZDR project
    api("GET", f"/sessions/{UNKNOWN}")  # 404
    follow_up = api("POST", "/runs", json={"task": "later", "sessionId": sid}).json()["id"]
    for n in range(11):  # the last one: 429, the queue is full
        api("POST", f"/sessions/{sid}/queue", json={"text": f"m{n}"})
    api("POST", f"/runs/{follow_up}/cancel")
    bid = api("POST", "/browsers", json={"timeout": 10}).json()["id"]
    api("GET", "/browsers", params={"agentSessionId": sid})
    api("GET", "/browsers", params={"filterBy": "active"})
    api("GET", f"/browsers/{bid}")
    api("GET", f"/browsers/{bid}/downloads")
    api("PATCH", f"/browsers/{bid}", json={"action": "stop"})
    api("GET", f"/browsers/{UNKNOWN}")  # 404
    emulator.state.max_concurrent_sessions = 0
    api("POST", "/runs", json={"task": "capped"})  # 429
    emulator.state.max_concurrent_sessions = None
    api("DELETE", f"/sessions/{sid}")
    api("GET", f"/sessions/{sid}")  # 404
    api("DELETE", f"/workspaces/{wid}")
    other = api("POST", "/runs", json={"task": "zdr"}).json()["sessionId"]
    monkeypatch.setattr(emulator.state, "zero_data_retention", True)
    api("GET", "/runs")  # 403
    api("POST", "/workspaces", json={})  # 403
    api("POST", f"/sessions/{other}/purge")  # 204

    registry = Registry().with_resource("urn:spec", Resource.from_contents(SPEC, default_specification=DRAFT202012))

    def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
        wrapped = json.loads(json.dumps(schema).replace('"#/components', '"urn:spec#/components'))
        return jsonschema.Draft202012Validator(wrapped, registry=registry)

    checked, spec_routes, sdk_checked = set(), set(), 0
    for method, path, answer in api.answers:
        route, status = _route(path), answer.status_code
        checked.add((method, route, status))
        body = None if status == 204 else answer.json()
        if status == 204:
            assert answer.content == b""
        responses = _spec_responses(method, path)
        if responses is not None:
            spec_routes.add((method, route))
            if str(status) in responses:
                content = responses[str(status)].get("content") or {}
                schema = (content.get("application/json") or {}).get("schema")
                if status == 422:  # the spec shows a list or a single object; the service sends the list
                    schema = {"$ref": "#/components/schemas/HTTPValidationError"}
                if schema is None and status >= 400:
                    schema = DETAIL  # the spec gives no body: ours is FastAPI's {"detail": "..."}
            else:
                assert (method, route, status) in NOT_IN_SPEC, f"{method} {route} has no {status} answer in the spec"
                schema = DETAIL
            if schema is not None:
                errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(schema).iter_errors(body)]
                assert errors == [], f"{method} {path} {status}: {errors}"
        elif status >= 400 and status != 422:
            jsonschema.validate(body, DETAIL)
        model = SDK_MODELS.get((method, route))
        if model is not None and 200 <= status < 300:
            model.model_validate(body)
            sdk_checked += 1
        elif status == 422:
            sdk.HTTPValidationError.model_validate(body)
    statuses = {status for _, _, status in checked}
    assert statuses == {200, 201, 204, 400, 403, 404, 409, 422, 429}
    served = {
        (method.upper(), _route(re.sub(r"\{[^}]+_id\}", UNKNOWN, template.replace("{message_id}", "1"))))
        for template, operations in SPEC["paths"].items()
        if not template.startswith("/profiles")
        for method in operations
    }
    assert served <= spec_routes, f"spec routes the workload missed: {served - spec_routes}"
    assert sdk_checked >= 40
    assert len(checked) == 52  # distinct (method, route, status) answers checked
    summary = validator({"$ref": "#/components/schemas/RunSummary"})
    good = api("GET", f"/runs/{rid}")  # ZDR: 403 now; take the summary from earlier
    assert good.status_code == 403
    earlier = next(a.json() for m, p, a in api.answers if (m, p) == ("GET", f"/runs/{rid}") and a.status_code == 200)
    assert summary.is_valid(earlier)
    assert not summary.is_valid({**earlier, "status": "paused"})  # the check can fail
    with pytest.raises(ValueError):
        sdk.RunSummary.model_validate({**earlier, "totalCostUsd": None})


# --- the vendor's SDK --------------------------------------------------------------------------


def test_vendor_v4_sdk_works_unchanged(emulator: BrowserUseEmulator, tmp_path: Path) -> None:
    from browser_use_sdk.v4 import BrowserUse

    emulator.state.scenario = (
        Scenario()
        .add("price", duration=0.3, output_json={"price": 9.5})
        .add("report", duration=0.2, output_files=[{"file_name": "report.csv", "content": "a,b\n1,2\n"}])
        .add("forever", duration=60)
    )
    client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.v4_base_url)
    workspace = client.workspaces.create(name="inputs")
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    uploaded = client.workspaces.upload(workspace.id, data)
    created = client.runs.create(
        "Find the price",
        output_schema=SCHEMA,
        keep_alive=300,
        workspace_id=workspace.id,
        attached_file_ids=[u.id for u in uploaded],
        judge={},
    )
    assert created.missing_file_ids == []
    ready = client.runs.wait_for_event(created.id, "browser.ready", timeout=5, interval=0.05)
    assert ready.type == "browser.ready" and "token=" in ready.data["live_view_url"]
    client.runs.wait_for_completion(created.id, timeout=10, interval=0.05)
    time.sleep(JUDGE_DELAY)  # the verdict lands after the run
    done = client.runs.get(created.id)
    assert (done.status.value, done.output, done.judgement) == (
        "completed",
        {"price": 9.5},
        {"verdict": True, "reasoning": "Emulated judge: the scripted verdict."},
    )
    assert [a.status.value for a in client.runs.attachments(created.id).attachments] == ["uploaded"]

    follow_up = client.runs.create("Now write the report", session_id=created.session_id)
    reattached = client.runs.wait_for_event(follow_up.id, "browser.ready", timeout=5, interval=0.05)
    assert reattached.type == "browser.reattached"
    assert client.runs.wait_for_completion(follow_up.id, timeout=10, interval=0.05).status.value == "completed"
    files = client.workspaces.files(workspace.id, include_urls=True).files
    assert sorted(f.path for f in files) == ["report.csv", "uploads/data.csv"]
    report = next(f for f in files if f.path == "report.csv")
    assert report.url is not None and requests.get(report.url, timeout=5).text == "a,b\n1,2\n"

    cost = client.sessions.cost(created.session_id)
    assert cost.num_runs == 2 and Decimal(cost.llm_cost_usd) == Decimal("0.04")
    assert client.sessions.update_cost_cap(created.session_id, max_cost_usd=1.5).max_cost_usd == "1.5"
    long_run = client.runs.create("forever and ever", session_id=created.session_id)
    assert client.runs.cancel(long_run.id).status.value == "cancelled"
    assert client.runs.cancel(long_run.id).status.value == "cancelled"  # idempotent
    assert [r.id for r in client.runs.list(session_id=created.session_id).runs] == [
        long_run.id,
        follow_up.id,
        created.id,
    ]
    assert client.sessions.get(created.session_id).status.value == "cancelled"
    [browser] = client.browsers.list(agent_session_id=created.session_id).items
    assert browser.status.value == "active"  # kept alive for the session
    client.sessions.delete(created.session_id)
    assert client.browsers.get(browser.id).status.value == "stopped"
    assert emulator.active_run_count() == 0
    assert emulator.active_browser_count() == 0


def test_emulator_process_serves_v4_and_takes_the_zdr_flag() -> None:
    from airflow_provider_browseruse.testing import EmulatorProcess

    headers = {"X-Browser-Use-API-Key": "bu_v4_process_key"}
    with EmulatorProcess("bu_v4_process_key", zero_data_retention=True) as emulator:
        assert emulator.v4_base_url == f"http://127.0.0.1:{emulator.port}/api/v4"
        refused = requests.post(f"{emulator.v4_base_url}/runs", json={"task": "t"}, headers=headers, timeout=5)
        assert refused.status_code == 403 and "Zero Data Retention" in refused.json()["detail"]
        assert requests.get(f"{emulator.base_url}/billing/account", headers=headers, timeout=5).status_code == 200
