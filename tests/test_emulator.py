"""The emulator over real loopback HTTP: behaviour, scenarios, faults, the spec, the vendor's SDK."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from airflow_provider_browseruse.testing.scenario import example_instance

SPEC = json.loads((Path(__file__).parent / "data" / "openapi-v2.json").read_text())
UNKNOWN = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


class Client:
    """A plain HTTP client that keeps every answer, to check them all against the spec."""

    def __init__(self, emulator: BrowserUseEmulator) -> None:
        self.base = emulator.base_url
        self.http = requests.Session()
        self.http.headers["X-Browser-Use-API-Key"] = emulator.state.api_key
        self.answers: list[tuple[str, str, requests.Response]] = []

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        answer = self.http.request(method, self.base + path, timeout=10, **kwargs)
        self.answers.append((method, path.split("?")[0], answer))
        return answer


@pytest.fixture
def api(emulator: BrowserUseEmulator) -> Client:
    return Client(emulator)


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --- auth and sessions -------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Browser-Use-API-Key": "wrong"}])
def test_bad_or_missing_key_gets_401(emulator: BrowserUseEmulator, headers: dict[str, str]) -> None:
    answer = requests.get(f"{emulator.base_url}/billing/account", headers=headers, timeout=5)
    assert answer.status_code == 401
    assert "detail" in answer.json()


def test_session_lifecycle(api: Client, emulator: BrowserUseEmulator) -> None:
    created = api("POST", "/sessions", json={})
    assert created.status_code == 201
    session = created.json()
    assert session["keepAlive"] is True  # the real API's default
    assert session["status"] == "active"
    assert emulator.active_session_count() == 1
    task = api("POST", "/tasks", json={"task": "slow one", "sessionId": session["id"]}).json()
    stopped = api("PATCH", f"/sessions/{session['id']}", json={"action": "stop"}).json()
    assert stopped["status"] == "stopped"
    assert stopped["finishedAt"] is not None
    assert [t["status"] for t in stopped["tasks"]] == ["stopped"]
    assert api("GET", f"/tasks/{task['id']}/status").json()["status"] == "stopped"
    assert api("PATCH", f"/sessions/{session['id']}", json={"action": "stop"}).status_code == 200  # twice is fine
    assert api("PATCH", f"/sessions/{session['id']}", json={"action": "pause"}).status_code == 422
    assert emulator.active_session_count() == 0
    assert api("DELETE", f"/sessions/{session['id']}").status_code == 204
    assert api("GET", f"/sessions/{session['id']}").status_code == 404


def test_session_list_filters_and_pages(api: Client) -> None:
    ids = [api("POST", "/sessions", json={"keepAlive": True}).json()["id"] for _ in range(5)]
    api("PATCH", f"/sessions/{ids[0]}", json={"action": "stop"})
    page = api("GET", "/sessions", params={"pageSize": 2, "pageNumber": 2, "filterBy": "active"}).json()
    assert (page["totalItems"], page["pageNumber"], page["pageSize"], len(page["items"])) == (4, 2, 2, 2)
    stopped = api("GET", "/sessions", params={"filterBy": "stopped"}).json()
    assert [s["id"] for s in stopped["items"]] == [ids[0]]
    assert api("GET", "/sessions", params={"pageSize": 101}).status_code == 422


def test_public_share(api: Client) -> None:
    sid = api("POST", "/sessions", json={}).json()["id"]
    assert api("GET", f"/sessions/{sid}/public-share").status_code == 404
    share = api("POST", f"/sessions/{sid}/public-share")
    assert share.status_code == 201
    assert api("POST", f"/sessions/{sid}/public-share").json()["shareToken"] == share.json()["shareToken"]
    assert api("GET", f"/sessions/{sid}").json()["publicShareUrl"] == share.json()["shareUrl"]
    assert api("DELETE", f"/sessions/{sid}/public-share").status_code == 204
    assert api("GET", f"/sessions/{sid}/public-share").status_code == 404


# --- tasks -------------------------------------------------------------------------------------


def test_task_life_in_a_one_off_session(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("count", duration=0.3, output="42", cost="0.05")
    created = api("POST", "/tasks", json={"task": "count the links", "metadata": {"k": "v"}})
    assert created.status_code == 202
    task_id, session_id = created.json()["id"], created.json()["sessionId"]
    assert api("GET", f"/tasks/{task_id}/status").json()["status"] in ("created", "started")
    assert api("GET", f"/sessions/{session_id}").json()["keepAlive"] is False
    wait_for(lambda: api("GET", f"/tasks/{task_id}/status").json()["status"] == "finished")
    status = api("GET", f"/tasks/{task_id}/status").json()
    assert (status["output"], status["isSuccess"], status["cost"]) == ("42", True, "0.0500")
    task = api("GET", f"/tasks/{task_id}").json()
    assert task["metadata"] == {"k": "v"}
    assert len(task["steps"]) == 3
    assert "secrets" not in task
    assert api("GET", f"/sessions/{session_id}").json()["status"] == "stopped"  # one-off closes itself
    assert emulator.active_session_count() == 0
    listed = api("GET", "/tasks", params={"sessionId": session_id}).json()
    assert [t["id"] for t in listed["items"]] == [task_id]


def test_task_in_a_stopped_busy_or_unknown_session(api: Client) -> None:
    sid = api("POST", "/sessions", json={}).json()["id"]
    first = api("POST", "/tasks", json={"task": "first", "sessionId": sid})
    assert first.status_code == 202
    busy = api("POST", "/tasks", json={"task": "second", "sessionId": sid})
    assert (busy.status_code, busy.json()["detail"]) == (
        400,
        "Agent session already has a running task. Please wait for it to finish or stop it manually.",
    )
    api("PATCH", f"/sessions/{sid}", json={"action": "stop"})
    stopped = api("POST", "/tasks", json={"task": "third", "sessionId": sid})
    assert (stopped.status_code, stopped.json()["detail"]) == (
        400,
        "Browser session is stopped. Please start a new session and try again.",
    )
    assert api("POST", "/tasks", json={"task": "x", "sessionId": UNKNOWN}).status_code == 404


def test_stop_task_and_session(api: Client, emulator: BrowserUseEmulator) -> None:
    sid = api("POST", "/sessions", json={}).json()["id"]
    tid = api("POST", "/tasks", json={"task": "long", "sessionId": sid}).json()["id"]
    view = api("PATCH", f"/tasks/{tid}", json={"action": "stop_task_and_session"}).json()
    assert view["status"] == "stopped"
    assert api("GET", f"/sessions/{sid}").json()["status"] == "stopped"
    assert emulator.active_session_count() == 0


def test_validation_errors_have_the_real_shape(api: Client) -> None:
    answer = api("POST", "/tasks", json={"task": "", "llm": "not-a-model", "secrets": {"pw": "hunter2-secret"}})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert {tuple(e["loc"]) for e in detail} == {("body", "task"), ("body", "llm")}
    assert all(set(e) == {"loc", "msg", "type"} for e in detail)
    assert "hunter2-secret" not in answer.text
    assert api("GET", "/sessions/not-a-uuid").status_code == 422


def test_logs_and_output_files_download(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add(
        "report", duration=0.05, output_files=[{"file_name": "report.csv", "content": "a,b\n1,2\n"}]
    )
    tid = api("POST", "/tasks", json={"task": "make a report"}).json()["id"]
    wait_for(lambda: api("GET", f"/tasks/{tid}/status").json()["status"] == "finished")
    files = api("GET", f"/tasks/{tid}").json()["outputFiles"]
    assert [f["fileName"] for f in files] == ["report.csv"]
    link = api("GET", f"/files/tasks/{tid}/output-files/{files[0]['id']}").json()
    assert requests.get(link["downloadUrl"], timeout=5).text == "a,b\n1,2\n"  # presigned: no key needed
    logs = api("GET", f"/tasks/{tid}/logs").json()
    assert f"task {tid}: finished" in requests.get(logs["downloadUrl"], timeout=5).text


def test_account(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.state.max_concurrent_sessions = 3
    api("POST", "/sessions", json={})
    account = api("GET", "/billing/account").json()
    assert (account["concurrentSessionLimit"], account["activeSessionCount"]) == (3, 1)


# --- scenarios ---------------------------------------------------------------------------------


SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
    "required": ["items"],
}


def test_scenario_rules_substring_regex_and_default(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = (
        Scenario()
        .add("login", status="failed", output="Login page did not load", duration=0)
        .add(r"^price of \w+$", regex=True, output_json={"items": [{"n": 7}]}, duration=0)
    )
    failed = api("POST", "/tasks", json={"task": "please login"}).json()["id"]
    priced = api("POST", "/tasks", json={"task": "price of apples", "structuredOutput": json.dumps(SCHEMA)}).json()[
        "id"
    ]
    made_up = api("POST", "/tasks", json={"task": "anything", "structuredOutput": json.dumps(SCHEMA)}).json()["id"]
    text = api("POST", "/tasks", json={"task": "anything"}).json()["id"]
    wait_for(
        lambda: all(
            api("GET", f"/tasks/{t}/status").json()["status"] != "started" for t in (failed, priced, made_up, text)
        )
    )
    time.sleep(0.3)
    views = {t: api("GET", f"/tasks/{t}/status").json() for t in (failed, priced, made_up, text)}
    assert (views[failed]["status"], views[failed]["isSuccess"], views[failed]["output"]) == (
        "failed",
        False,
        "Login page did not load",
    )
    assert json.loads(views[priced]["output"]) == {"items": [{"n": 7}]}
    jsonschema.validate(json.loads(views[made_up]["output"]), SCHEMA)  # the made-up output fits the schema
    assert views[text]["output"].startswith("Emulated result ")
    again = api("POST", "/tasks", json={"task": "anything"}).json()["id"]
    time.sleep(0.3)
    assert api("GET", f"/tasks/{again}/status").json()["output"] == views[text]["output"]  # deterministic


def test_scripted_json_that_breaks_the_schema_is_refused(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("x", output_json={"items": "not a list"})
    answer = api("POST", "/tasks", json={"task": "x", "structuredOutput": json.dumps(SCHEMA)})
    assert answer.status_code == 422
    assert "does not match the task's structuredOutput schema" in answer.json()["detail"][0]["msg"]


def test_scenario_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(
        json.dumps({"default": {"duration": 2}, "rules": [{"match": "a+b", "regex": True, "status": "failed"}]})
    )
    scenario = Scenario.from_file(path)
    assert scenario.script_for("aaab").status == "failed"
    assert scenario.script_for("zzz").duration == 2
    path.write_text(json.dumps({"rules": [{"match": "x", "colour": "red"}]}))
    with pytest.raises(ValueError, match="colour"):
        Scenario.from_file(path)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "minLength": 30}, "b": {"enum": ["x", "y"]}}},
        {
            "type": "array",
            "items": {"$ref": "#/$defs/P"},
            "minItems": 2,
            "$defs": {"P": {"type": "object", "properties": {"q": {"type": ["null", "number"]}}}},
        },
        {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "string"}]},
    ],
)
def test_made_up_instances_match_their_schema(schema: dict[str, Any]) -> None:
    jsonschema.validate(example_instance(schema), schema)


# --- concurrency cap and faults ----------------------------------------------------------------


def test_concurrency_cap_gets_429_with_retry_after(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.state.max_concurrent_sessions = 2
    emulator.state.retry_after = 3
    api("POST", "/sessions", json={})
    api("POST", "/tasks", json={"task": "one-off"})
    for path, body in (("/sessions", {}), ("/tasks", {"task": "third"})):
        refused = api("POST", path, json=body)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "3"
        assert refused.json()["detail"].startswith("Too many concurrent active sessions.")
    assert emulator.active_session_count() == 2


def test_fault_status_retry_after_and_count(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.add_fault(method="GET", path="/billing/account", status=503, retry_after=2, times=2)
    answers = [api("GET", "/billing/account") for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "2"
    assert [r.status for r in emulator.requests("GET", "/billing/account")] == [503, 503, 200]


def test_fault_after_handling_creates_then_fails(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.add_fault(method="POST", path="/tasks", status=502, after_handling=True)
    assert api("POST", "/tasks", json={"task": "t"}).status_code == 502
    assert len(emulator.state.tasks) == 1  # it was created all the same
    emulator.add_fault(method="POST", path="/sessions", status=503)
    assert api("POST", "/sessions", json={}).status_code == 503
    assert len(emulator.state.sessions) == 1  # the one-off session only: the refused create made nothing


def test_fault_drop_malformed_and_latency(api: Client, emulator: BrowserUseEmulator) -> None:
    emulator.add_fault(path="/billing/account", drop=True)
    with pytest.raises(requests.exceptions.RequestException):
        api("GET", "/billing/account").json()
    emulator.add_fault(path="/billing/account", malformed=True)
    with pytest.raises(ValueError):
        api("GET", "/billing/account").json()
    emulator.add_fault(path="/billing/account", latency=0.3)
    started = time.monotonic()
    assert api("GET", "/billing/account").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert api("GET", "/billing/account").status_code == 200  # faults are used up


def test_admin_api(emulator: BrowserUseEmulator) -> None:
    admin = emulator.root_url + "/_emulator"
    assert (
        requests.post(
            f"{admin}/faults", json={"path": "/sessions", "method": "POST", "status": 500}, timeout=5
        ).status_code
        == 201
    )
    assert (
        requests.post(f"{admin}/scenario", json={"rules": [{"match": "z", "status": "failed"}]}, timeout=5).status_code
        == 204
    )
    headers = {"X-Browser-Use-API-Key": emulator.state.api_key}
    assert requests.post(f"{emulator.base_url}/sessions", json={}, headers=headers, timeout=5).status_code == 500
    assert requests.get(f"{admin}/state", timeout=5).json() == {
        "activeSessionCount": 0,
        "sessionCount": 0,
        "taskCount": 0,
        "peakActiveSessions": 0,
        "refusedAtCap": 0,
        "activeRunCount": 0,
        "activeBrowserCount": 0,
        "runCount": 0,
    }
    logged = requests.get(f"{admin}/requests", timeout=5).json()
    assert {"method": "POST", "path": "/sessions", "status": 500} in [
        {k: r[k] for k in ("method", "path", "status")} for r in logged
    ]
    assert emulator.state.scenario.script_for("z").status == "failed"
    assert requests.post(f"{admin}/reset", timeout=5).status_code == 204
    assert emulator.requests("POST", "/sessions") == []


def test_emulator_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        BrowserUseEmulator(host="0.0.0.0")


def test_command_line_emulator(tmp_path: Path) -> None:
    with BrowserUseEmulator() as probe:  # find a free port, then release it
        port = probe.port
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_browseruse.testing.emulator",
            "--port",
            str(port),
            "--api-key",
            "cli-key",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"Browser Use emulator listening on http://127.0.0.1:{port}/api/v2"
        process.stdout.readline()
        export = process.stdout.readline().strip()
        name, value = export.removeprefix("export ").split("=", 1)
        assert name == "AIRFLOW_CONN_BROWSER_USE_DEFAULT"
        assert json.loads(value.strip("'")) == {
            "conn_type": "browser_use",
            "host": f"http://127.0.0.1:{port}/api/v2",
            "password": "cli-key",
        }
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = requests.get(
                    f"http://127.0.0.1:{port}/api/v2/billing/account",
                    headers={"X-Browser-Use-API-Key": "cli-key"},
                    timeout=2,
                )
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert answer.status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=10) is not None


# --- the contract ------------------------------------------------------------------------------


def _spec_schema(method: str, path: str, status: int) -> dict[str, Any] | None:
    for template, operations in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            responses = operations[method.lower()]["responses"]
            assert str(status) in responses, f"{method} {template} has no {status} answer in the spec"
            content = responses[str(status)].get("content") or {}
            return (content.get("application/json") or {}).get("schema")
    raise AssertionError(f"{method} {path} is not in the spec")


def test_every_answer_matches_the_openapi_spec(api: Client, emulator: BrowserUseEmulator) -> None:
    """Run a workload touching every route and status the provider relies on; validate them all."""
    emulator.state.scenario = Scenario().add(
        "files", duration=0.05, output_files=[{"file_name": "a.txt", "content": "x"}]
    )
    api("GET", "/billing/account")
    sid = api("POST", "/sessions", json={"keepAlive": True, "enableRecording": True}).json()["id"]
    api("GET", "/sessions", params={"filterBy": "active"})
    tid = api("POST", "/tasks", json={"task": "make files", "sessionId": sid, "judge": True}).json()["id"]
    api("GET", f"/tasks/{tid}/status")
    api("GET", f"/tasks/{tid}")
    api("POST", "/tasks", json={"task": "busy", "sessionId": sid})  # 400
    wait_for(lambda: api("GET", f"/tasks/{tid}/status").json()["status"] == "finished")
    fid = api("GET", f"/tasks/{tid}").json()["outputFiles"][0]["id"]
    api("GET", f"/files/tasks/{tid}/output-files/{fid}")
    api("GET", f"/files/tasks/{tid}/output-files/{UNKNOWN}")  # 404
    api("GET", f"/tasks/{tid}/logs")
    api("GET", "/tasks", params={"sessionId": sid})
    api("POST", f"/sessions/{sid}/public-share")
    api("GET", f"/sessions/{sid}/public-share")
    api("GET", f"/sessions/{sid}")
    other = api("POST", "/tasks", json={"task": "stop me", "structuredOutput": json.dumps(SCHEMA)}).json()["id"]
    api("PATCH", f"/tasks/{other}", json={"action": "stop"})
    api("PATCH", f"/sessions/{sid}", json={"action": "stop"})
    api("GET", f"/sessions/{sid}")
    api("GET", f"/sessions/{UNKNOWN}")  # 404
    api("GET", f"/tasks/{UNKNOWN}")  # 404
    api("POST", "/tasks", json={"task": ""})  # 422
    api("GET", "/sessions/not-a-uuid")  # 422
    bid = api("POST", "/browsers", json={"timeout": 30}).json()["id"]
    api("GET", "/browsers", params={"filterBy": "active"})
    api("GET", f"/browsers/{bid}")
    api("PATCH", f"/browsers/{bid}", json={"action": "stop"})
    api("GET", f"/browsers/{UNKNOWN}")  # 404
    emulator.state.max_concurrent_sessions = 0
    api("POST", "/sessions", json={})  # 429
    api("DELETE", f"/sessions/{sid}")

    registry = Registry().with_resource("urn:spec", Resource.from_contents(SPEC, default_specification=DRAFT202012))
    checked = set()
    for method, path, answer in api.answers:
        schema = _spec_schema(method, path, answer.status_code)
        checked.add((method, re.sub(r"[0-9a-f-]{36}|not-a-uuid", "{id}", path), answer.status_code))
        if answer.status_code == 204:
            assert answer.content == b""
            continue
        body = answer.json()
        if schema is None:
            continue
        if answer.status_code == 422:  # the spec shows a list or a single object; the service sends the list
            schema = {"$ref": "#/components/schemas/HTTPValidationError"}
        wrapped = json.loads(json.dumps(schema).replace('"#/components', '"urn:spec#/components'))
        validator = jsonschema.Draft202012Validator(wrapped, registry=registry)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert errors == [], f"{method} {path} {answer.status_code}: {errors}"
    assert len(checked) == 27  # distinct (method, route, status) answers checked
    broken = jsonschema.Draft202012Validator({"$ref": "urn:spec#/components/schemas/SessionView"}, registry=registry)
    assert not broken.is_valid({"id": "x", "status": "paused", "startedAt": "t", "tasks": [{}]})  # the check can fail


# --- the vendor's SDK --------------------------------------------------------------------------


def test_vendor_sdk_works_unchanged(emulator: BrowserUseEmulator) -> None:
    from browser_use_sdk import BrowserUse

    emulator.state.scenario = Scenario().add("capital", duration=0.2, output="Paris")
    client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.base_url)
    session = client.sessions.create(keep_alive=True)
    created = client.tasks.create("What is the capital of France?", session_id=str(session.id))
    finished = client.tasks.wait(str(created.id), timeout=10, interval=0.1)
    assert (str(finished.status.value if hasattr(finished.status, "value") else finished.status), finished.output) == (
        "finished",
        "Paris",
    )
    assert client.tasks.status(str(created.id)).is_success is True
    stopped = client.sessions.stop(str(session.id))
    assert str(getattr(stopped.status, "value", stopped.status)) == "stopped"
    assert [str(t.id) for t in client.sessions.get(str(session.id)).tasks] == [str(created.id)]
    assert emulator.active_session_count() == 0


def test_emulator_process_serves_the_hook_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook
    from airflow_provider_browseruse.testing import EmulatorProcess

    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"rules": [{"match": "hello", "output": "hi there", "duration": 0}]}))
    with EmulatorProcess("bu_process_key", scenario=scenario, max_concurrent_sessions=1) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_BROWSER_USE_DEFAULT", emulator.airflow_connection())
        hook = BrowserUseHook()
        created = hook.create_task({"task": "say hello"})
        assert emulator.admin("state")["activeSessionCount"] == 1
        wait_for(lambda: hook.get_task_status(created["id"])["status"] == "finished")
        assert hook.get_task(created["id"])["output"] == "hi there"  # the scenario file was read
        logged = emulator.admin("requests")
        assert (logged[0]["method"], logged[0]["path"]) == ("POST", "/tasks")
        port = emulator.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize(
    ("host", "answered"),
    [
        ("127.0.0.1:{port}", True),
        ("localhost:{port}", True),
        ("localhost", True),
        ("127.0.0.5", True),
        ("[::1]:{port}", True),
        ("evil.example:{port}", False),
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
    ],
)
def test_only_callers_naming_a_loopback_host_are_answered(
    emulator: BrowserUseEmulator, host: str, answered: bool
) -> None:
    """A web page can reach a loopback server under a name it controls (DNS rebinding): refused."""
    headers = {"Host": host.format(port=emulator.port)}
    admin = requests.post(f"{emulator.root_url}/_emulator/reset", headers=headers, timeout=5)
    api = requests.get(
        f"{emulator.base_url}/billing/account",
        headers={**headers, "X-Browser-Use-API-Key": emulator.state.api_key},
        timeout=5,
    )
    if answered:
        assert (admin.status_code, api.status_code) == (204, 200)
    else:
        assert (admin.status_code, api.status_code) == (421, 421)
        assert "loopback" in api.json()["detail"]


def test_the_cap_is_counted_and_the_cost_can_climb_at_a_rate(emulator: BrowserUseEmulator) -> None:
    state = emulator.state
    state.max_concurrent_sessions = 2
    first = state.create_session({"keepAlive": True})["id"]
    state.create_session({"keepAlive": True})
    with pytest.raises(Exception, match="concurrent"):
        state.create_session({"keepAlive": True})
    assert (state.peak_active_sessions, state.refused_at_cap) == (2, 1)
    assert state.account()["concurrentSessionLimit"] == 2
    state.max_concurrent_sessions = None
    assert state.account()["concurrentSessionLimit"] == 250  # an integer even uncapped
    state.stop_session(first)

    state.scenario = Scenario().add("metered", duration=60, start_delay=0, cost_per_second="0.10")
    task_id = state.create_task({"task": "metered"})["id"]
    time.sleep(0.5)
    assert Decimal("0.04") <= Decimal(state.task_status_view(task_id)["cost"]) <= Decimal("0.07")
    state.stop_task(task_id, and_session=True)
    stopped_cost = state.get_task(task_id)["cost"]
    time.sleep(0.2)
    assert state.get_task(task_id)["cost"] == stopped_cost  # a stopped task costs no more
