"""The hook's API v4 calls against requests-mock: base URLs, requests sent, retries, errors."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
import requests_mock as rm

from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.exceptions import BrowserUseAPIError
from airflow_provider_browseruse.hooks.browser_use import BrowserUseAsyncHook, BrowserUseHook, api_root, api_settings
from tests.conftest import MOCK_API_KEY
from tests.test_hook import FakeConn

V4 = "https://api.browser-use.test/api/v4"
RID = "5d1f0c3e-8f8a-4b7e-9a51-0c6a1f2b3c4d"
SID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
WID = "7a7b7c7d-1111-4222-8333-944455556666"
BID = "0b0b0b0b-2222-4333-8444-955566667777"


@pytest.fixture
def hook(mock_conn: str) -> BrowserUseHook:
    hook = BrowserUseHook(retry_policy=RetryPolicy(max_attempts=4, initial_wait=1.0, max_wait=8, max_total=60))
    hook._sleep = lambda seconds: None
    return hook


@pytest.mark.parametrize(
    ("host", "v2", "v4"),
    [
        (None, "https://api.browser-use.com/api/v2", "https://api.browser-use.com/api/v4"),
        (
            "https://api.browser-use.com/api/v2",
            "https://api.browser-use.com/api/v2",
            "https://api.browser-use.com/api/v4",
        ),
        (
            "https://api.browser-use.com/api/v4/",
            "https://api.browser-use.com/api/v2",
            "https://api.browser-use.com/api/v4",
        ),
        ("https://api.browser-use.com/api", "https://api.browser-use.com/api/v2", "https://api.browser-use.com/api/v4"),
        ("https://proxy.example.com", "https://proxy.example.com/api/v2", "https://proxy.example.com/api/v4"),
        (
            "https://gw.example.com/browser-use",
            "https://gw.example.com/browser-use/v2",
            "https://gw.example.com/browser-use/v4",
        ),
        ("https://gw.example.com/v2", "https://gw.example.com/v2", "https://gw.example.com/v4"),
        ("http://127.0.0.1:8790/api/v2", "http://127.0.0.1:8790/api/v2", "http://127.0.0.1:8790/api/v4"),
    ],
)
def test_one_connection_gives_both_base_urls(host: str | None, v2: str, v4: str) -> None:
    settings = api_settings(FakeConn(host), "c")
    assert (settings.base_url, settings.v4_base_url) == (v2, v4)
    assert api_root("/api/v2") == api_root("/api/v4") == api_root("") == "/api"
    assert api_root("/api/v3") == "/api/v3"  # not a version this provider speaks: the root itself


@pytest.mark.parametrize(
    ("call", "method", "path", "body"),
    [
        (lambda h: h.create_run({"task": "t", "sessionId": SID}), "POST", "/runs", {"task": "t", "sessionId": SID}),
        (lambda h: h.get_run(RID), "GET", f"/runs/{RID}", None),
        (lambda h: h.get_run_status(RID), "GET", f"/runs/{RID}/status", None),
        (lambda h: h.cancel_run(RID), "POST", f"/runs/{RID}/cancel", None),
        (lambda h: h.get_run_events(RID, after=7), "GET", f"/runs/{RID}/events", None),
        (lambda h: h.get_agent_session(SID), "GET", f"/sessions/{SID}", None),
        (lambda h: h.get_agent_session_cost(SID), "GET", f"/sessions/{SID}/cost", None),
        (lambda h: h.set_agent_session_cost_cap(SID, 2.5), "PATCH", f"/sessions/{SID}/cost-cap", {"maxCostUsd": "2.5"}),
        (lambda h: h.remove_queued_message(SID, 3), "DELETE", f"/sessions/{SID}/queue/3", None),
        (lambda h: h.create_workspace("w"), "POST", "/workspaces", {"name": "w"}),
        (lambda h: h.get_workspace(WID), "GET", f"/workspaces/{WID}", None),
        (lambda h: h.stop_agent_browser(BID), "PATCH", f"/browsers/{BID}", {"action": "stop"}),
    ],
)
def test_each_v4_call_goes_to_the_v4_base(
    hook: BrowserUseHook, requests_mock: rm.Mocker, call: Any, method: str, path: str, body: Any
) -> None:
    answer = {"id": RID, "sessionId": SID, "status": "running", "totalCostUsd": "0.1"}
    requests_mock.register_uri(method, f"{V4}{path}", json=answer)
    assert call(hook) == answer
    sent = requests_mock.last_request
    assert (sent.method, sent.path) == (method, f"/api/v4{path}".lower())
    assert sent.headers["X-Browser-Use-API-Key"] == MOCK_API_KEY
    assert (sent.json() if body is not None else sent.body) == body


def test_a_create_is_never_resent_but_a_cancel_is(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.post(f"{V4}/runs", status_code=502, json={"detail": "bad gateway"})
    with pytest.raises(BrowserUseAPIError) as error:
        hook.create_run({"task": "t"})
    assert error.value.http_status == 502
    assert requests_mock.call_count == 1
    requests_mock.post(f"{V4}/runs/{RID}/cancel", [{"status_code": 503, "json": {}}, {"json": {"id": RID}}])
    assert hook.cancel_run(RID) == {"id": RID}
    assert requests_mock.call_count == 3


def test_a_403_on_v4_says_zero_data_retention(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{V4}/runs/{RID}", status_code=403, json={"detail": "Forbidden"})
    with pytest.raises(BrowserUseAPIError, match="Zero Data Retention.*API v4 is not supported"):
        hook.get_run(RID)
    requests_mock.get(f"https://api.browser-use.test/api/v2/sessions/{SID}", status_code=403, json={"detail": "no"})
    with pytest.raises(BrowserUseAPIError, match="API key was rejected"):
        hook.get_session(SID)  # v2 keeps its own meaning


def test_bad_ids_and_prompts_are_refused_before_any_request(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    for call, parameter in [
        (lambda: hook.get_run("nope"), "run_id"),
        (lambda: hook.create_run({"task": "t", "workspaceId": "w"}), "workspace_id"),
        (lambda: hook.create_run({"task": " "}), "task"),
        (lambda: hook.set_agent_session_cost_cap(SID, float("nan")), "max_cost_usd"),
        (lambda: hook.list_agent_browsers("x"), "session_id"),
    ]:
        with pytest.raises(ValueError, match=parameter):
            call()
    assert requests_mock.call_count == 0


def test_list_runs_follows_the_cursor_and_stops_at_max_items(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    pages = [
        {"json": {"runs": [{"id": "r1"}, {"id": "r2"}], "nextCursor": "c2", "hasMore": True}},
        {"json": {"runs": [{"id": "r3"}], "nextCursor": None, "hasMore": False}},
    ]
    requests_mock.get(f"{V4}/runs", pages)
    assert [run["id"] for run in hook.list_runs(session_id=SID)] == ["r1", "r2", "r3"]
    assert [r.qs for r in requests_mock.request_history] == [
        {"sessionid": [SID], "limit": ["100"]},
        {"sessionid": [SID], "limit": ["100"], "cursor": ["c2"]},
    ]
    requests_mock.get(f"{V4}/runs", pages)
    assert [run["id"] for run in hook.list_runs(max_items=2)] == ["r1", "r2"]
    assert requests_mock.call_count == 3


def test_upload_sends_exactly_the_presigned_headers_and_no_key(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    url = "https://storage.example.test/bucket/uploads/a.csv?X-Signature=secret"
    requests_mock.put(url, [{"status_code": 500, "text": "busy"}, {"status_code": 200, "text": ""}])
    opened = []

    def open_source() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(b"a,b\n1,2\n")

    hook.upload(url, open_source, 8, "text/csv")
    sent = requests_mock.last_request
    assert sent.headers["Content-Type"] == "text/csv" and sent.headers["Content-Length"] == "8"
    assert "X-Browser-Use-API-Key" not in sent.headers
    assert len(opened) == 2  # opened again for the retry: the same bytes from the start
    requests_mock.put(url, status_code=403, text="<Error><Code>SignatureDoesNotMatch</Code></Error>")
    with pytest.raises(BrowserUseAPIError) as error:
        hook.upload(url, open_source, 8, "text/csv", call="upload(a.csv)")
    assert error.value.http_status == 403 and "X-Signature" not in str(error.value)


def test_request_uploads_wants_one_url_per_file(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.post(f"{V4}/workspaces/{WID}/files/upload", json={"files": [{"id": "u1", "uploadUrl": "https://x"}]})
    files = [
        {"name": "a", "contentType": "text/plain", "size": 1},
        {"name": "b", "contentType": "text/plain", "size": 1},
    ]
    with pytest.raises(BrowserUseAPIError, match="not one upload URL for each of the 2"):
        hook.request_uploads(WID, files)


def test_stopping_a_sessions_browsers_stops_only_the_active_ones(
    hook: BrowserUseHook, requests_mock: rm.Mocker
) -> None:
    other = "1c1c1c1c-3333-4444-8555-a66677778888"
    requests_mock.get(
        f"{V4}/browsers",
        json={"items": [{"id": BID, "status": "active"}, {"id": other, "status": "stopped"}], "totalItems": 2},
    )
    requests_mock.patch(f"{V4}/browsers/{BID}", json={"id": BID, "status": "stopped"})
    assert [b["id"] for b in hook.stop_agent_session_browsers(SID)] == [BID]
    assert requests_mock.request_history[0].qs["agentsessionid"] == [SID]
    assert [r.method for r in requests_mock.request_history] == ["GET", "PATCH"]


def test_the_async_hook_reads_v4_and_stops_browsers(mock_conn: str, requests_mock: rm.Mocker) -> None:
    """The async hook goes through httpx: run it against a loopback emulator instead."""
    from airflow_provider_browseruse.testing import BrowserUseEmulator

    with BrowserUseEmulator(api_key="k") as emulator, pytest.MonkeyPatch.context() as patch:
        requests_mock.real_http = True
        patch.setenv("AIRFLOW_CONN_V4", emulator.airflow_connection())
        from browser_use_sdk.v4 import BrowserUse

        client = BrowserUse(api_key="k", base_url=emulator.v4_base_url)
        run = client.runs.create("a slow run", keep_alive=120)
        hook = BrowserUseAsyncHook("v4")

        async def go() -> tuple[str, int, str]:
            status = (await hook.get_run_status(str(run.id)))["status"]
            await hook.cancel_run(str(run.id))
            stopped = await hook.stop_agent_session_browsers(str(run.session_id))
            return status, stopped, (await hook.get_run(str(run.id)))["status"]

        status, stopped, after = asyncio.run(go())
        assert status in ("queued", "dispatching", "running") and stopped == 1 and after == "cancelled"
        assert emulator.active_browser_count() == 0


def test_a_purge_refused_says_it_is_for_zdr_projects_only(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    requests_mock.post(f"{V4}/sessions/{SID}/purge", status_code=403, json={"detail": "Forbidden"})
    with pytest.raises(BrowserUseAPIError, match="purging is for Zero Data Retention projects only") as error:
        hook.purge_agent_session(SID)
    assert "has Zero Data Retention enabled" not in str(error.value)


def test_a_presigned_url_refused_is_not_blamed_on_the_key(hook: BrowserUseHook, requests_mock: rm.Mocker) -> None:
    url = "https://storage.example.test/bucket/out.md?X-Signature=secret"
    requests_mock.get(url, status_code=403, text="<Error><Code>AccessDenied</Code></Error>")
    with pytest.raises(BrowserUseAPIError, match="presigned URL was refused") as error:
        hook.download(url, io.BytesIO(), call="download(out.md)")
    assert "API key" not in str(error.value) and "X-Signature" not in str(error.value)
