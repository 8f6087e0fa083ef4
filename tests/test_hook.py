"""BrowserUseHook against requests-mock: requests sent, answers parsed, errors and retries."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import requests_mock as rm
from urllib3.exceptions import MaxRetryError, NewConnectionError

from airflow_provider_browseruse import __version__
from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.exceptions import BrowserUseAPIError
from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook, api_settings
from tests.conftest import MOCK_API_KEY, MOCK_BASE_URL

SID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
TID = "9b2f7c1e-4a5d-4e6f-8a7b-1c2d3e4f5a6b"
SESSION = {"id": SID, "status": "stopped", "startedAt": "2026-01-01T00:00:00Z", "tasks": []}


@pytest.fixture
def hook(mock_conn: str) -> BrowserUseHook:
    hook = BrowserUseHook(retry_policy=RetryPolicy(max_attempts=4, initial_wait=1.0, max_wait=8, max_total=60))
    hook.waits = []  # type: ignore[attr-defined]
    hook._sleep = hook.waits.append  # type: ignore[attr-defined]
    return hook


class FakeConn:
    def __init__(self, host: str | None = None, password: str | None = "bu_x", schema: str | None = None,
                 port: int | None = None, extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.host, self.password, self.schema, self.port = host, password, schema, port
        self.extra_dejson = extra or {}


# --- connection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        (FakeConn(), "https://api.browser-use.com/api/v2"),
        (FakeConn("https://api.browser-use.com/api/v2/"), "https://api.browser-use.com/api/v2"),
        (FakeConn("https://proxy.example.com"), "https://proxy.example.com/api/v2"),
        (FakeConn("api.browser-use.com", schema="api/v2"), "https://api.browser-use.com/api/v2"),
        (
            FakeConn("127.0.0.1", port=8790, schema="api/v2", extra={"scheme": "http"}),
            "http://127.0.0.1:8790/api/v2",
        ),
        (FakeConn("http://localhost:9000/api/v2"), "http://localhost:9000/api/v2"),
        (
            FakeConn("http://gw.internal/api/v2", extra={"allow_insecure_http": True}),
            "http://gw.internal/api/v2",
        ),
    ],
)
def test_base_url_from_connection(conn: FakeConn, expected: str) -> None:
    assert api_settings(conn, "c").base_url == expected


def test_uri_connection_with_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BU_URI", "browser-use://:bu_uri_key_123@api.browser-use.com/api%2Fv2")
    settings = BrowserUseHook("bu_uri").settings
    assert settings.base_url == "https://api.browser-use.com/api/v2"
    assert settings.api_key == "bu_uri_key_123"


def test_missing_key_names_the_connection() -> None:
    with pytest.raises(AirflowException, match="'my_conn' has no Browser Use API key"):
        api_settings(FakeConn(password=""), "my_conn")


def test_plain_http_to_remote_host_is_refused() -> None:
    with pytest.raises(AirflowException, match="plain-http base URL to 'api.example.com'"):
        api_settings(FakeConn("http://api.example.com/api/v2"), "c")


def test_settings_repr_hides_the_key() -> None:
    assert "bu_x" not in repr(api_settings(FakeConn(), "c"))


# --- requests sent -----------------------------------------------------------------------------


def test_headers_and_timeout(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", json=SESSION)
    assert hook.get_session(SID) == SESSION
    sent = requests_mock.last_request
    assert sent.headers["X-Browser-Use-API-Key"] == MOCK_API_KEY
    assert sent.headers["User-Agent"] == f"airflow-provider-browseruse/{__version__}"
    assert sent.timeout == 30.0


def test_keep_alive_session_is_reused(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", json=SESSION)
    hook.get_session(SID)
    first = hook.http
    hook.get_session(SID)
    assert hook.http is first


@pytest.mark.parametrize(
    ("call", "method", "path", "body"),
    [
        (lambda h: h.get_session(SID), "GET", f"/sessions/{SID}", None),
        (lambda h: h.stop_session(SID), "PATCH", f"/sessions/{SID}", {"action": "stop"}),
        (lambda h: h.create_session({"keepAlive": False}), "POST", "/sessions", {"keepAlive": False}),
        (
            lambda h: h.create_task({"task": "t", "sessionId": SID}),
            "POST",
            "/tasks",
            {"task": "t", "sessionId": SID},
        ),
        (lambda h: h.get_task(TID), "GET", f"/tasks/{TID}", None),
        (lambda h: h.get_task_status(TID), "GET", f"/tasks/{TID}/status", None),
        (lambda h: h.stop_task(TID), "PATCH", f"/tasks/{TID}", {"action": "stop"}),
        (
            lambda h: h.stop_task(TID, stop_session=True),
            "PATCH",
            f"/tasks/{TID}",
            {"action": "stop_task_and_session"},
        ),
        (lambda h: h.get_account(), "GET", "/billing/account", None),
    ],
)
def test_each_call_sends_the_right_request(
    hook: BrowserUseHook, requests_mock: rm.Mocker, call: Any, method: str, path: str, body: Any
) -> None:
    answer = {"id": "answer", "sessionId": "its-session"}  # the ids operators index are required
    requests_mock.register_uri(method, f"{MOCK_BASE_URL}{path}", json=answer)
    assert call(hook) == answer
    sent = requests_mock.last_request
    assert (sent.method, sent.path) == (method, f"/api/v2{path}".lower())
    assert (sent.json() if body is not None else sent.body) == body


def test_list_sessions_follows_every_page(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    pages = [[{"id": f"s{n}"} for n in range(start, min(start + 100, 230))] for start in (0, 100, 200)]
    requests_mock.get(
        f"{MOCK_BASE_URL}/sessions",
        [{"json": {"items": p, "totalItems": 230, "pageNumber": i + 1, "pageSize": 100}} for i, p in enumerate(pages)],
    )
    sessions = hook.list_sessions(status="active")
    assert [s["id"] for s in sessions] == [f"s{n}" for n in range(230)]
    assert [r.qs for r in requests_mock.request_history] == [
        {"pagesize": ["100"], "filterby": ["active"], "pagenumber": [str(n)]} for n in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda h: h.get_session("not-a-uuid"), "session_id"),
        (lambda h: h.stop_session("12345"), "session_id"),
        (lambda h: h.get_task("x"), "browser_use_task_id"),
        (lambda h: h.stop_task(""), "browser_use_task_id"),
        (lambda h: h.create_task({"task": "t", "sessionId": "nope"}), "session_id"),
        (lambda h: h.create_task({"task": "  "}), "task must be a non-empty prompt"),
    ],
)
def test_bad_input_is_refused_before_any_request(
    hook: BrowserUseHook, requests_mock: rm.Mocker, call: Any, parameter: str
) -> None:
    with pytest.raises(ValueError, match=parameter):
        call(hook)
    assert requests_mock.request_history == []


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"detail": "Invalid API key"}, "HTTP 401: the API key was rejected (Invalid API key); check the "
         "password of Airflow connection 'browser_use_default'"),
        (404, {"detail": "Session not found"}, f"get_session({SID}) failed: HTTP 404: Session not found"),
        (422, {"detail": [{"loc": ["path", "session_id"], "msg": "Input should be a valid UUID", "type": "uuid"}]},
         "HTTP 422: the API rejected the request: session_id: Input should be a valid UUID"),
        (422, {"loc": ["body", "task"], "msg": "Field required", "type": "missing"}, "task: Field required"),
        (400, "plain text body", "HTTP 400: plain text body"),
    ],
)  # fmt: skip
def test_errors_say_which_call_failed_and_why(
    hook: BrowserUseHook, requests_mock: rm.Mocker, status: int, body: Any, expected: str
) -> None:
    kwargs = {"json": body} if isinstance(body, dict) else {"text": body}
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", status_code=status, **kwargs)
    with pytest.raises(BrowserUseAPIError) as caught:
        hook.get_session(SID)
    assert expected in str(caught.value)
    assert caught.value.http_status == status
    assert requests_mock.call_count == 1  # 4xx other than 429: never retried
    assert MOCK_API_KEY not in str(caught.value)


def test_connection_test_reports_success_and_failure(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    account = {"projectId": "p-1", "planInfo": {"planName": "Pro"}}
    requests_mock.get(
        f"{MOCK_BASE_URL}/billing/account",
        [{"json": account}, {"status_code": 401, "json": {"detail": "bad key"}}],
    )
    assert hook.test_connection() == (True, "Connected to Browser Use: project p-1, Pro.")
    ok, message = hook.test_connection()
    assert not ok
    assert "the API key was rejected (bad key)" in message


# --- retries -----------------------------------------------------------------------------------


def _refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, "/", reason))  # type: ignore[arg-type]


def test_reads_retry_5xx_with_exponential_backoff(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.get(
        f"{MOCK_BASE_URL}/sessions/{SID}",
        [
            {"status_code": 503, "json": {"detail": "busy"}},
            {"status_code": 502, "text": "bad gateway"},
            {"json": SESSION},
        ],
    )
    assert hook.get_session(SID) == SESSION
    assert requests_mock.call_count == 3
    waits = hook.waits  # type: ignore[attr-defined]
    assert len(waits) == 2
    assert 0.5 <= waits[0] <= 1.0  # step 1 s, jitter between half and all of it
    assert 1.0 <= waits[1] <= 2.0


def test_retry_after_is_honoured(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.get(
        f"{MOCK_BASE_URL}/sessions/{SID}",
        [{"status_code": 429, "headers": {"Retry-After": "7"}, "json": {"detail": "cap"}}, {"json": SESSION}],
    )
    hook.get_session(SID)
    assert hook.waits == [7.0]  # type: ignore[attr-defined]


def test_retries_are_bounded_in_attempts(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", status_code=500, json={"detail": "boom"})
    with pytest.raises(BrowserUseAPIError, match="HTTP 500: boom"):
        hook.get_session(SID)
    assert requests_mock.call_count == 4
    assert len(hook.waits) == 3  # type: ignore[attr-defined]


def test_retries_are_bounded_in_total_time(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", status_code=429, headers={"Retry-After": "600"}, json={})
    with pytest.raises(BrowserUseAPIError) as caught:
        hook.get_session(SID)
    assert caught.value.http_status == 429
    assert requests_mock.call_count == 1  # a 600 s wait would overrun max_total=60
    assert hook.waits == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "failure",
    [
        {"exc": requests.exceptions.ReadTimeout},
        {"exc": requests.exceptions.ChunkedEncodingError},
        {"exc": requests.ConnectionError},
        {"status_code": 500, "json": {"detail": "x"}},
        {"status_code": 503, "json": {"detail": "x"}},
        {"status_code": 200, "text": "{not json"},
    ],
)
def test_reads_and_stops_retry_transient_failures(
    hook: BrowserUseHook, requests_mock: rm.Mocker, failure: dict[str, Any]
) -> None:
    requests_mock.get(f"{MOCK_BASE_URL}/tasks/{TID}/status", [failure, {"json": {"id": TID, "status": "started"}}])
    requests_mock.patch(f"{MOCK_BASE_URL}/sessions/{SID}", [failure, {"json": SESSION}])
    assert hook.get_task_status(TID)["status"] == "started"
    assert hook.stop_session(SID) == SESSION
    assert requests_mock.call_count == 4


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        ({"exc": requests.exceptions.ReadTimeout}, "interrupted"),
        ({"exc": requests.ConnectionError}, "interrupted"),
        ({"status_code": 500, "json": {"detail": "x"}}, "http"),
        ({"status_code": 502, "text": "gateway"}, "http"),
        ({"status_code": 202, "text": "{not json"}, "malformed"),
    ],
)
def test_creates_are_never_resent_after_an_ambiguous_failure(
    hook: BrowserUseHook, requests_mock: rm.Mocker, failure: dict[str, Any], kind: str
) -> None:
    requests_mock.post(f"{MOCK_BASE_URL}/tasks", [failure, {"status_code": 202, "json": {"id": TID, "sessionId": SID}}])
    requests_mock.post(f"{MOCK_BASE_URL}/sessions", [failure, {"status_code": 201, "json": SESSION}])
    for call in (lambda: hook.create_task({"task": "t"}), lambda: hook.create_session()):
        with pytest.raises(BrowserUseAPIError) as caught:
            call()
        assert caught.value.kind == kind
    assert requests_mock.call_count == 2  # one attempt each


@pytest.mark.parametrize(
    "failure",
    [
        {"status_code": 429, "json": {"detail": "Too many concurrent active sessions."}},
        {"exc": requests.exceptions.ConnectTimeout},
        {"exc": _refused()},
    ],
)
def test_creates_retry_when_nothing_was_created(
    hook: BrowserUseHook, requests_mock: rm.Mocker, failure: dict[str, Any]
) -> None:
    requests_mock.post(f"{MOCK_BASE_URL}/tasks", [failure, {"status_code": 202, "json": {"id": TID, "sessionId": SID}}])
    assert hook.create_task({"task": "t", "metadata": {"a": "b"}}) == {"id": TID, "sessionId": SID}
    assert requests_mock.call_count == 2
    assert [json.loads(r.body) for r in requests_mock.request_history] == [{"task": "t", "metadata": {"a": "b"}}] * 2


def test_retry_logs_say_what_failed_and_when_it_tries_again(
    hook: BrowserUseHook, requests_mock: rm.Mocker, captured_logs: Any
) -> None:
    requests_mock.get(
        f"{MOCK_BASE_URL}/sessions/{SID}",
        [{"status_code": 429, "headers": {"Retry-After": "3"}, "json": {"detail": "cap"}}, {"json": SESSION}],
    )
    hook.get_session(SID)
    logs = captured_logs()
    assert f"Browser Use get_session({SID}) failed: HTTP 429" in logs
    assert "retrying in 3.0 s (attempt 2 of 4)" in logs
    assert MOCK_API_KEY not in logs


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        BrowserUseHook(timeout=0)


def test_download_retries_without_rewinding_the_destination(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    class WriteOnly:  # like an S3 upload stream: no seek, no truncate
        def __init__(self) -> None:
            self.data = b""

        def write(self, chunk: bytes) -> int:
            self.data += chunk
            return len(chunk)

    url = "https://files.example.com/out.csv?X-Signature=secret"
    requests_mock.get(url, [{"exc": requests.exceptions.ChunkedEncodingError}, {"content": b"a,b\n1,2\n"}])
    destination = WriteOnly()
    assert hook.download(url, destination) == 8  # type: ignore[arg-type]
    assert destination.data == b"a,b\n1,2\n"
    assert requests_mock.call_count == 2
    assert "X-Browser-Use-API-Key" not in requests_mock.last_request.headers  # a presigned URL gets no key
