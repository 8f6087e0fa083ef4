"""The guarantees against hostile or broken servers on loopback, for the sync hook (requests), the
async hook and the triggers (httpx): no redirect followed, every answer bounded in time and size,
malformed answers refused, the key never echoed on, nothing able to kill a trigger."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.exceptions import BrowserUseAPIError
from airflow_provider_browseruse.hooks.browser_use import (
    MAX_LIST_PAGES,
    BrowserUseAsyncHook,
    BrowserUseHook,
    api_settings,
)
from airflow_provider_browseruse.triggers.browser_use import TaskStatusTrigger
from tests.conftest import first_event
from tests.hostile import (
    HostileServer,
    Received,
    Step,
    answer,
    corrupt_gzip,
    deep_json,
    dripping,
    json_answer,
    oversized,
    redirect,
)

KEY = "bu_hostile_test_key_0123456789"
SECRET = "hunter2-correct-horse"
SID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
TID = "9b2f7c1e-4a5d-4e6f-8a7b-1c2d3e4f5a6b"
FAST = RetryPolicy(max_attempts=2, initial_wait=0.01, max_wait=0.01, max_total=30)
MODES = ["sync", "async"]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., HostileServer]]:
    """Start a hostile server (the connection ``hostile`` points at it); all stop at the end."""
    started: list[HostileServer] = []

    def start(script: Callable[[Received], Iterable[Step]], host: str = "127.0.0.1") -> HostileServer:
        server = HostileServer(script, host).__enter__()
        started.append(server)
        if host == "127.0.0.1":
            conn = {"conn_type": "browser_use", "host": f"{server.url}/api/v2", "password": KEY}
            monkeypatch.setenv("AIRFLOW_CONN_HOSTILE", json.dumps(conn))
        return server

    yield start
    for server in started:
        server.__exit__()


def get_session(mode: str, timeout: float = 1.0) -> Any:
    if mode == "sync":
        return BrowserUseHook("hostile", timeout=timeout, retry_policy=FAST).get_session(SID)
    return asyncio.run(BrowserUseAsyncHook("hostile", timeout=timeout, retry_policy=FAST).get_session(SID))


# --- 1. redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("mode", MODES)
def test_no_redirect_is_followed(serve: Callable[..., HostileServer], mode: str, status: int) -> None:
    other = serve(lambda r: [json_answer({"id": SID, "status": "stopped"})], host="127.0.0.2")
    serve(lambda r: redirect(f"{other.url}/steal{r.path}", status))
    with pytest.raises(BrowserUseAPIError, match=f"HTTP {status}: the API answered with a redirect") as caught:
        get_session(mode)
    assert caught.value.http_status == status
    assert other.received == []  # the other host got nothing: no key, no body


def test_a_redirected_create_sends_neither_key_nor_secrets_on(serve: Callable[..., HostileServer]) -> None:
    other = serve(lambda r: [json_answer({"id": TID, "sessionId": SID}, 202)], host="127.0.0.2")
    main = serve(lambda r: redirect(f"{other.url}/tasks", 307))
    hook = BrowserUseHook("hostile", timeout=1, retry_policy=FAST)
    with pytest.raises(BrowserUseAPIError, match="redirect"):
        hook.create_task({"task": "log in", "secrets": {"password": SECRET}})
    assert len(main.received) == 1 and other.received == []


def test_downloads_carry_no_key_and_follow_no_redirect(serve: Callable[..., HostileServer]) -> None:
    other = serve(lambda r: [answer(200, b"stolen?")], host="127.0.0.2")
    files = serve(lambda r: [answer(200, b"a,b\n")] if r.path == "/file.csv" else redirect(f"{other.url}/x"))
    hook = BrowserUseHook("hostile", timeout=1, retry_policy=FAST)
    saved = io.BytesIO()
    assert hook.download(f"{files.url}/file.csv", saved) == 4
    assert saved.getvalue() == b"a,b\n"
    assert "x-browser-use-api-key" not in files.received[0].headers
    with pytest.raises(BrowserUseAPIError, match="redirect"):
        hook.download(f"{files.url}/moved.csv", io.BytesIO())
    assert other.received == []


def test_uploads_carry_no_key_follow_no_redirect_and_end_in_time(serve: Callable[..., HostileServer]) -> None:
    """API v4's presigned PUTs go to a storage host the API names: as untrusted as the API."""
    other = serve(lambda r: [answer(200, b"")], host="127.0.0.2")
    storage = serve(
        lambda r: (
            [answer(200, b"")]
            if r.path == "/ok"
            else dripping(b"x" * 400, 0.05)
            if r.path == "/drip"
            else redirect(f"{other.url}/steal")
        )
    )
    hook = BrowserUseHook("hostile", timeout=1, retry_policy=FAST, download_timeout=1)

    def source() -> io.BytesIO:
        return io.BytesIO(b"a,b\n")

    hook.upload(f"{storage.url}/ok", source, 4, "text/csv")
    [sent] = storage.received
    assert (sent.method, sent.body, sent.headers["content-type"], sent.headers["content-length"]) == (
        "PUT",
        b"a,b\n",
        "text/csv",
        "4",
    )
    assert "x-browser-use-api-key" not in sent.headers
    with pytest.raises(BrowserUseAPIError, match="redirect"):
        hook.upload(f"{storage.url}/moved", source, 4, "text/csv")
    assert other.received == []
    started = time.monotonic()
    with pytest.raises(BrowserUseAPIError, match="no complete answer"):
        hook.upload(f"{storage.url}/drip", source, 4, "text/csv")  # 20 s of answer, against 1 s a try
    assert time.monotonic() - started < FAST.max_total + 3


# --- 2. host parsing ---------------------------------------------------------------------------


class Conn:
    def __init__(self, host: str, extra: dict[str, Any] | None = None) -> None:
        self.host, self.password, self.schema, self.port, self.extra_dejson = host, KEY, None, None, extra or {}


@pytest.mark.parametrize(
    "host",
    [
        "http://evil.example\\@127.0.0.1/api/v2",  # urlsplit reads 127.0.0.1, urllib3 connects to evil.example
        "http://user:pw@127.0.0.1/api/v2",
        "http://127.0.0.1@evil.example/api/v2",
        "http://127.0.0.1 .evil.example/api/v2",
        "http://127.0.0.1\t/api/v2",
        "http://127.0.0.1\x00.evil/api/v2",
        "http://127.0.0.1:99999/api/v2",
        "https://api.browser-use.com/api/v2?next=http://evil.example",
    ],
)
def test_base_urls_a_client_could_read_otherwise_are_refused(host: str) -> None:
    with pytest.raises(AirflowException, match="has base URL"):
        api_settings(Conn(host), "c")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("http://localhost:8790/api/v2", "http://localhost:8790/api/v2"),
        ("http://127.0.0.5:8790", "http://127.0.0.5:8790/api/v2"),
        ("http://[::1]:8790/api/v2/", "http://[::1]:8790/api/v2"),
        ("https://API.browser-use.com/api/v2", "https://api.browser-use.com/api/v2"),
    ],
)
def test_loopback_and_https_forms_still_work(host: str, expected: str) -> None:
    assert api_settings(Conn(host), "c").base_url == expected


# --- 3. bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_dripping_body_ends_at_the_attempts_deadline(serve: Callable[..., HostileServer], mode: str) -> None:
    body = json.dumps({"id": SID, "status": "active", "pad": "x" * 200}).encode()
    server = serve(lambda r: dripping(body, 0.05))  # about 12 s per answer, a byte well within any read timeout
    started = time.monotonic()
    with pytest.raises(BrowserUseAPIError, match="no complete answer") as caught:
        get_session(mode, timeout=1.0)
    assert caught.value.kind == "interrupted"
    assert len(server.received) == FAST.max_attempts
    assert time.monotonic() - started < 6  # two attempts of 1 s each, not two answers of 12 s


@pytest.mark.parametrize("mode", MODES)
def test_an_oversized_answer_is_refused_unread(serve: Callable[..., HostileServer], mode: str) -> None:
    serve(lambda r: oversized(200 << 20))
    with pytest.raises(BrowserUseAPIError, match="larger than 8,388,608 bytes") as caught:
        get_session(mode, timeout=20)
    assert caught.value.kind == "malformed"


def test_an_oversized_download_is_refused(serve: Callable[..., HostileServer]) -> None:
    files = serve(lambda r: oversized(5 << 20))
    hook = BrowserUseHook("hostile", timeout=5, retry_policy=RetryPolicy(max_attempts=1), max_download_bytes=1 << 20)
    with pytest.raises(BrowserUseAPIError, match="larger than 1,048,576 bytes"):
        hook.download(f"{files.url}/big.bin", io.BytesIO())


def test_a_dripping_download_ends_at_its_deadline(serve: Callable[..., HostileServer]) -> None:
    files = serve(lambda r: dripping(b"x" * 1000, 0.05))
    hook = BrowserUseHook("hostile", timeout=5, retry_policy=RetryPolicy(max_attempts=1), download_timeout=1)
    with pytest.raises(BrowserUseAPIError, match="no complete answer within 1 s"):
        hook.download(f"{files.url}/slow.bin", io.BytesIO())


def test_endless_pages_stop_at_the_page_limit(serve: Callable[..., HostileServer]) -> None:
    page = {"items": [{"id": TID, "status": "started"}], "totalItems": 10**9, "pageNumber": 1, "pageSize": 100}
    server = serve(lambda r: [json_answer(page)])
    with pytest.raises(BrowserUseAPIError, match=f"still more after {MAX_LIST_PAGES} pages"):
        BrowserUseHook("hostile", timeout=1, retry_policy=FAST).list_tasks()
    assert len(server.received) == MAX_LIST_PAGES


# --- 4. malformed answers ----------------------------------------------------------------------

MALFORMED: dict[str, Callable[[Received], list[Step]]] = {
    "corrupt gzip": lambda r: corrupt_gzip(),
    "deep JSON": lambda r: deep_json(),
    "invalid UTF-8": lambda r: [answer(200, b'{"id": "\xff\xfe", "status": "active"}')],
    "not an object": lambda r: [json_answer([1, 2, 3])],
    "no id": lambda r: [json_answer({"sessionId": SID})],
}


@pytest.mark.parametrize("kind", list(MALFORMED))
@pytest.mark.parametrize("mode", MODES)
def test_malformed_answers_are_malformed_on_both_hooks(
    serve: Callable[..., HostileServer], mode: str, kind: str
) -> None:
    serve(MALFORMED[kind])
    with pytest.raises(BrowserUseAPIError) as caught:
        if kind == "no id":  # only calls whose answer the operators index check its fields
            BrowserUseHook("hostile", timeout=1, retry_policy=FAST).create_task({"task": "t"})
        else:
            get_session(mode)
    assert caught.value.kind == "malformed", caught.value


# --- 4. nothing kills a trigger ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["corrupt gzip", "deep JSON", "invalid UTF-8", "not an object"])
def test_a_malformed_answer_is_an_error_event_not_a_dead_trigger(
    serve: Callable[..., HostileServer], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    serve(MALFORMED[kind])
    monkeypatch.setattr("airflow_provider_browseruse.hooks.browser_use.RetryPolicy", lambda: FAST)
    event = first_event(TaskStatusTrigger(TID, browser_use_conn_id="hostile", end_time=time.time() + 30))
    assert (event["event"], event["browser_use_task_id"]) == ("error", TID)
    assert "Browser Use get_task_status" in event["message"]


def test_an_unexpected_exception_is_an_error_event(
    serve: Callable[..., HostileServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    serve(lambda r: [json_answer({"id": TID, "status": "started"})])

    async def explode(self: BrowserUseAsyncHook, browser_use_task_id: str) -> dict[str, Any]:
        await self.settings()  # the connection was read; then something no one planned for
        raise RuntimeError(f"something odd, with the key {KEY} in it")

    monkeypatch.setattr(BrowserUseAsyncHook, "get_task_status", explode)
    event = first_event(TaskStatusTrigger(TID, browser_use_conn_id="hostile", end_time=time.time() + 30))
    assert (event["event"], event["http_status"]) == ("error", None)
    assert event["message"] == "unexpected RuntimeError: something odd, with the key *** in it"


def test_a_check_stuck_on_a_dripping_answer_still_fires_the_deadline(serve: Callable[..., HostileServer]) -> None:
    serve(lambda r: dripping(json.dumps({"id": TID, "status": "started", "pad": "x" * 500}).encode(), 0.05))
    started = time.time()
    event = first_event(TaskStatusTrigger(TID, browser_use_conn_id="hostile", end_time=started + 1.5))
    assert event["event"] == "timeout"
    assert time.time() - started < 5  # the deadline, not the 120 s the retries of slow answers could take


# --- 6. echoed keys and secrets ----------------------------------------------------------------


def echo(r: Received) -> list[Step]:
    said = f"key {r.headers.get('x-browser-use-api-key')} body {r.body.decode()}"
    return [json_answer({"detail": said}, 401)]


@pytest.mark.parametrize("mode", MODES)
def test_an_echoed_key_is_redacted(serve: Callable[..., HostileServer], mode: str) -> None:
    serve(echo)
    with pytest.raises(BrowserUseAPIError) as caught:
        get_session(mode)
    assert KEY not in str(caught.value) and KEY not in caught.value.detail
    assert "key *** body" in str(caught.value)


def test_echoed_secrets_and_key_stay_out_of_create_errors_and_connection_tests(
    serve: Callable[..., HostileServer],
) -> None:
    serve(echo)
    hook = BrowserUseHook("hostile", timeout=1, retry_policy=FAST)
    with pytest.raises(BrowserUseAPIError) as caught:
        hook.create_task({"task": "log in", "secrets": {"password": SECRET}})
    assert SECRET not in str(caught.value) and KEY not in str(caught.value)
    ok, message = hook.test_connection()
    assert not ok and KEY not in message and "***" in message


def test_an_echoed_key_never_reaches_a_trigger_event(
    serve: Callable[..., HostileServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    serve(echo)
    event = first_event(TaskStatusTrigger(TID, browser_use_conn_id="hostile", end_time=time.time() + 30))
    assert event["event"] == "error" and event["http_status"] == 401
    assert KEY not in json.dumps(event)


def test_the_watchdog_runs_in_a_forked_child_too() -> None:
    """Airflow forks task processes: a deadline set in the child must still fire there."""
    import os
    import threading

    from airflow_provider_browseruse.hooks.browser_use import _watchdog

    parent = threading.Event()
    _watchdog.schedule(0.01, parent.set)  # the parent's watchdog thread now exists
    assert parent.wait(5)
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        fired = threading.Event()
        _watchdog.schedule(0.05, fired.set)
        os._exit(0 if fired.wait(5) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_bounded_reads_keep_the_connection_alive(emulator: Any) -> None:
    """Reading each answer through the bounded reader must not cost a new TCP connection per call."""
    hook = BrowserUseHook()
    session_id = hook.create_session({"keepAlive": True})["id"]
    for _ in range(5):
        hook.get_session(session_id)
    assert len({r.client_port for r in emulator.requests()}) == 1


def chunked(body: bytes, size: int = 7000) -> list[Step]:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return [head, *(b"%x\r\n" % len(part) + part + b"\r\n" for part in parts), b"0\r\n\r\n"]


@pytest.mark.parametrize("encoding", ["chunked", "gzip"])
@pytest.mark.parametrize("mode", MODES)
def test_well_formed_chunked_and_gzip_answers_are_read_whole(
    serve: Callable[..., HostileServer], mode: str, encoding: str
) -> None:
    """The bounded reader must not trip over what real servers send: chunks, compression."""
    import gzip

    body = json.dumps({"id": SID, "status": "active", "pad": "x" * 100_000}).encode()
    if encoding == "chunked":
        serve(lambda r: chunked(body))
    else:
        serve(
            lambda r: [
                answer(200, gzip.compress(body), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
            ]
        )
    assert get_session(mode) == json.loads(body)
