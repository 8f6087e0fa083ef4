"""The fault matrix: every call the operators make, under every fault, in sync and deferrable mode.

Each case injects one fault into the first matching request and runs the operator flow that
makes the call (with the teardown a DAG would run). The expected outcome is asserted: either it
recovered, with the expected number of attempts, or it failed cleanly (an Airflow error with a
message, no retry storm). Creates are never duplicated and no session is left active. Hostile
answers (a redirect to another loopback host, corrupt gzip, deep JSON, a dripping or oversized
body, endless pages) are among the faults: no request may reach the other host, and no attempt
may outlive its bound (the hook's timeout, plus a second of grace for a loaded machine). The
matrix is printed as a table, in the CI log too.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from airflow.triggers.base import BaseTaskEndEvent
from urllib3.exceptions import MaxRetryError, NewConnectionError

from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.hooks import browser_use as hooks
from airflow_provider_browseruse.operators.browser_use import (
    CreateSessionOperator,
    RunTaskOperator,
    StopSessionOperator,
    StopTaskOperator,
)
from airflow_provider_browseruse.sensors.browser_use import SessionStoppedSensor
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import FakeTaskInstance, TaskDeferred, as_in_the_triggerer
from tests.hostile import HostileServer, json_answer

pytestmark = pytest.mark.dag  # slow-ish: about a minute

ID = r"[0-9a-f-]{36}"
CALLS = {  # call -> (method, path regex below /api/v2)
    "create session": ("POST", "/sessions"),
    "create task": ("POST", "/tasks"),
    "task status": ("GET", rf"/tasks/{ID}/status"),
    "get task": ("GET", rf"/tasks/{ID}"),
    "get session": ("GET", rf"/sessions/{ID}"),
    "stop task": ("PATCH", rf"/tasks/{ID}"),
    "stop session": ("PATCH", rf"/sessions/{ID}"),
    "list tasks": ("GET", "/tasks"),  # a retry looking for the task its earlier try started
}
FAULTS = {  # fault -> emulator fault fields (None: connection refused, simulated in the client transport)
    "refused": None,
    "dropped": {"drop": True, "after_handling": True},
    "read timeout": {"latency": 1.0, "after_handling": True},  # it took effect; the answer came too late
    "429 + Retry-After": {"status": 429, "retry_after": 1},
    "429": {"status": 429},
    "500": {"status": 500},
    "502": {"status": 502},
    "503": {"status": 503},
    "malformed JSON": {"malformed": True, "after_handling": True},
    "401": {"status": 401},
    "404": {"status": 404},
    "422": {"status": 422},
    "redirect": {"redirect_to": "{other}/api/v2/stolen"},
    "corrupt gzip": {"corrupt_gzip": True, "after_handling": True},
    "deep JSON": {"deep_json": True, "after_handling": True},
    "drip body": {"drip": 0.05, "after_handling": True},  # ~5 s an answer, against a 0.5 s bound
    "oversized body": {"oversized": 9 << 20, "after_handling": True},
    "endless pages": {"endless_pages": True, "times": 1000},
}
FINAL = {"401", "404", "422", "redirect"}
#: Faults that only a listing can meet.
LISTING_ONLY = {"endless pages"}
BOUND_GRACE = 1.0
TRANSIENT_BEFORE_HANDLING = {"500", "502", "503"}  # a gateway error: the request never took effect
RESULTS: list[dict[str, Any]] = []


def run_op(op: Any, ti: FakeTaskInstance) -> Any:
    """Execute; when it defers, run its trigger inline and resume, as Airflow would: a task the
    trigger ended (a TaskSuccessEvent) is done there, with its XComs, and not resumed."""
    import asyncio

    context: dict[str, Any] = {"ti": ti}
    try:
        if hasattr(op, "poke") and not op.deferrable:
            deadline = time.monotonic() + 20
            while not (result := op.poke(context)).is_done:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            return result.xcom_value
        return op.execute(context)
    except TaskDeferred as deferred:
        trigger, method_name = deferred.trigger, deferred.method_name

        async def first() -> Any:
            async for event in trigger.run():
                return event

        with as_in_the_triggerer(trigger, ti):
            event = asyncio.run(first())
        if isinstance(event, BaseTaskEndEvent):  # the triggerer ended it, its XComs pushed
            return ti.xcom.get("return_value")
        return getattr(op, method_name)(context, event.payload)


def logged_path(url: str) -> str:
    """A URL's path as the emulator logs it: below /api/v2, or /v4/... for API v4."""
    found = re.search(r"/api/(v\d)(/[^?]*)", url)
    if found is None:
        return url
    return found.group(2) if found.group(1) == "v2" else f"/{found.group(1)}{found.group(2)}"


@contextlib.contextmanager
def refused_once(method: str, path: str) -> Iterator[None]:
    """Fail the first matching request the way requests and httpx fail on ECONNREFUSED."""
    left = {"n": 1}
    real_send = requests.adapters.HTTPAdapter.send
    real_async = httpx.AsyncClient.send

    def matches(request_method: str, url: str) -> bool:
        if left["n"] and request_method == method and re.fullmatch(path, logged_path(url)):
            left["n"] -= 1
            return True
        return False

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        if matches(request.method, request.url):
            raise requests.ConnectionError(MaxRetryError(None, request.url, NewConnectionError(None, "refused")))  # type: ignore[arg-type]
        return real_send(self, request, **kwargs)

    async def send_async(self: Any, request: Any, **kwargs: Any) -> Any:
        if matches(request.method, str(request.url)):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return await real_async(self, request, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests.adapters.HTTPAdapter, "send", send)
        patch.setattr(httpx.AsyncClient, "send", send_async)
        yield


def flow(call: str, deferrable: bool, emulator: BrowserUseEmulator) -> tuple[Any, FakeTaskInstance, list[Any]]:
    """The operator that makes ``call``, ready to run, plus what a DAG's teardown would run."""
    ti = FakeTaskInstance(dag_id="fm", run_id="r", task_id="t")
    state = emulator.state
    if call == "create session":
        return CreateSessionOperator(task_id="create", keep_alive=True), ti, ["session"]
    if call in ("create task", "task status", "get task"):
        return RunTaskOperator(task_id="run", task="fault job", poll_interval=0.1, deferrable=deferrable), ti, []
    if call == "list tasks":  # try 2 lists the tasks, finds none of try 1's, and starts one
        ti = FakeTaskInstance(dag_id="fm", run_id="r", task_id="t", try_number=2)
        return RunTaskOperator(task_id="run", task="fault job", poll_interval=0.1, deferrable=deferrable), ti, []
    if call == "get session":
        created = state.create_task({"task": "fault job"})  # a one-off session, closing with its task
        op = SessionStoppedSensor(
            task_id="s", session_id=created["sessionId"], poke_interval=0.1, deferrable=deferrable
        )
        return op, ti, []
    if call == "stop task":
        created = state.create_task({"task": "fault job long"})
        return StopTaskOperator(task_id="st", browser_use_task_id=created["id"], stop_session=True), ti, []
    session = state.create_session({"keepAlive": True})
    state.create_task({"task": "fault job long", "sessionId": session["id"]})
    return StopSessionOperator(task_id="ss", session_id=session["id"], deferrable=deferrable), ti, []


def expected(call: str, fault: str) -> str:
    if fault in FINAL or fault in LISTING_ONLY:
        return "failed cleanly"
    if call in ("create task", "create session") and fault in TRANSIENT_BEFORE_HANDLING:
        return "failed cleanly"  # never resent; nothing was created, so nothing is found either
    return "recovered"


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        hooks, "RetryPolicy", lambda: RetryPolicy(max_attempts=4, initial_wait=0.05, max_wait=0.1, max_total=20)
    )
    monkeypatch.setattr(hooks, "DEFAULT_TIMEOUT", 0.5)


@pytest.fixture(scope="module")
def other_host() -> Iterator[HostileServer]:
    """A second loopback host that answers like the API: it must never hear from the provider."""
    with HostileServer(
        lambda r: [json_answer({"id": "x", "sessionId": "y", "status": "stopped"})], "127.0.0.2"
    ) as other:
        yield other


@pytest.fixture
def attempt_durations(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """How long each attempt of every call took, sync and async (one attempt = one _send_once)."""
    durations: list[float] = []
    sync_send, async_send = hooks.BrowserUseHook._send_once, hooks.BrowserUseAsyncHook._send_once

    def timed_sync(self: Any, *args: Any) -> Any:
        started = time.monotonic()
        try:
            return sync_send(self, *args)
        finally:
            durations.append(time.monotonic() - started)

    async def timed_async(self: Any, *args: Any) -> Any:
        started = time.monotonic()
        try:
            return await async_send(self, *args)
        finally:
            durations.append(time.monotonic() - started)

    monkeypatch.setattr(hooks.BrowserUseHook, "_send_once", timed_sync)
    monkeypatch.setattr(hooks.BrowserUseAsyncHook, "_send_once", timed_async)
    return durations


@pytest.mark.parametrize("mode", ["sync", "deferrable"])
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("call", list(CALLS))
def test_fault_matrix(
    emulator: BrowserUseEmulator,
    fast_retries: None,
    other_host: HostileServer,
    attempt_durations: list[float],
    call: str,
    fault: str,
    mode: str,
) -> None:
    if fault in LISTING_ONLY and call != "list tasks":
        pytest.skip("only a listing meets this fault")
    other_host.received.clear()
    emulator.state.scenario = Scenario().add("fault job long", duration=60).add("fault job", duration=0.4, output="ok")
    emulator.state.retry_after = 1
    method, path = CALLS[call]
    op, ti, teardown = flow(call, mode == "deferrable", emulator)
    before = len(emulator.requests(method, path))
    spec = FAULTS[fault]
    if spec is not None:
        spec = {k: v.format(other=other_host.url) if isinstance(v, str) else v for k, v in spec.items()}
        emulator.add_fault(method=method, path=path, **spec)
    outcome, message = "recovered", ""
    with refused_once(method, path) if spec is None else contextlib.nullcontext():
        try:
            run_op(op, ti)
        except AirflowException as error:  # BrowserUseAPIError is one too
            outcome, message = "failed cleanly", str(error)
    if "session" in teardown and ti.xcom.get("session_id"):
        run_op(
            StopSessionOperator(task_id="teardown", session_id=ti.xcom["session_id"], missing_ok=True),
            FakeTaskInstance(dag_id="fm", run_id="r", task_id="t"),
        )
    time.sleep(1.1 if fault == "read timeout" else 0)  # let a request the client gave up on land
    attempts = len(emulator.requests(method, path)) - before
    created = Counter(
        ("task" if r.path == "/tasks" else "session") for r in emulator.requests("POST", "/(tasks|sessions)")
    )
    # Every flow makes exactly one task (none for create session) and one session, itself or in its set-up.
    tasks_expected = 0 if call == "create session" else 1
    duplicates = max(0, len(emulator.state.tasks) - tasks_expected) + max(0, len(emulator.state.sessions) - 1)
    wait_for_idle(emulator)
    leaked = emulator.active_session_count()
    RESULTS.append(
        {
            "call": call,
            "fault": fault,
            "mode": mode,
            "outcome": outcome,
            "attempts": attempts,
            "duplicates": duplicates,
            "leaked": leaked,
            "other_host": len(other_host.received),
            "outlived": sum(d > hooks.DEFAULT_TIMEOUT + BOUND_GRACE for d in attempt_durations),
        }
    )
    assert outcome == expected(call, fault), message
    if outcome == "failed cleanly":
        assert message.startswith(("Browser Use", "Waiting for Browser Use")) or "Browser Use" in message, message
        assert attempts <= (hooks.MAX_LIST_PAGES if fault in LISTING_ONLY else 4)  # bounded: no retry storm
    if fault in FINAL:
        assert attempts == 1  # a final answer is not retried
    if outcome == "recovered":
        check_attempts(call, fault, attempts, emulator.requests(method, path)[before:])
    assert RESULTS[-1]["other_host"] == 0  # a redirect is never followed
    assert RESULTS[-1]["outlived"] == 0, attempt_durations  # every attempt ends within its bound
    assert duplicates == 0, created
    # Only when the stop call itself gets a final refusal (a bad key, say) does the browser stay up:
    # the operator then fails with the API's reason, and nothing else could stop it either.
    assert leaked == (1 if call.startswith("stop") and fault in FINAL else 0)


#: Calls an operator repeats anyway while it waits (a sensor's poke, the status poll).
POLLED = {"task status", "get session"}
#: Faults after which a create may have taken effect: it is reconciled, never resent.
AMBIGUOUS = {"dropped", "read timeout", "malformed JSON", "corrupt gzip", "deep JSON", "drip body", "oversized body"}


def check_attempts(call: str, fault: str, attempts: int, seen: list[Any]) -> None:
    """A recovered case made exactly the attempts its fault allows, and waited as told."""
    if fault == "refused":
        expected = 1  # the refusal happened in the client: the server saw only the retry
    elif call.startswith("create") and fault in AMBIGUOUS:
        expected = 1  # never resent: the operator found what the first attempt created
    else:
        expected = 2  # the faulty answer, then one retry that worked
    if call in POLLED:
        assert attempts >= expected, (call, fault, attempts)
    else:
        assert attempts == expected, (call, fault, attempts)
    if fault == "429 + Retry-After":  # the emulator asked for 1 s: the retry came no sooner
        assert seen[1].time - seen[0].time >= 0.95, [r.time for r in seen]


def wait_for_idle(emulator: BrowserUseEmulator) -> None:
    """One-off sessions close when their task ends; give a short task the time to end."""
    deadline = time.monotonic() + 3
    while emulator.active_session_count() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_print_the_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this module: prints the table of the cases above (into the CI log too)."""
    if not RESULTS:
        pytest.skip("run together with test_fault_matrix")
    lines = [
        f"{'call':<14} {'fault':<18} {'mode':<10} {'outcome':<15} {'attempts':>8} {'dup':>4} {'leaked':>6} "
        f"{'other host':>10} {'outlived':>8}"
    ]
    lines += [
        f"{r['call']:<14} {r['fault']:<18} {r['mode']:<10} {r['outcome']:<15} {r['attempts']:>8} {r['duplicates']:>4} "
        f"{r['leaked']:>6} {r['other_host']:>10} {r['outlived']:>8}"
        for r in RESULTS
    ]
    totals = Counter(r["outcome"] for r in RESULTS)
    lines.append(
        f"cases {len(RESULTS)}, recovered {totals['recovered']}, failed cleanly {totals['failed cleanly']}, "
        f"duplicates {sum(r['duplicates'] for r in RESULTS)}, leaked sessions {sum(r['leaked'] for r in RESULTS)}, "
        f"requests to another host {sum(r['other_host'] for r in RESULTS)}, "
        f"attempts past their bound {sum(r['outlived'] for r in RESULTS)}"
    )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    cases = sum(1 for call in CALLS for fault in FAULTS if fault not in LISTING_ONLY or call == "list tasks")
    assert len(RESULTS) == cases * 2
    assert sum(r["duplicates"] for r in RESULTS) == 0
    assert sum(r["other_host"] for r in RESULTS) == 0
    assert sum(r["outlived"] for r in RESULTS) == 0
    # Only a final refusal of the stop call itself leaves a session up: 2 stop calls x 4 faults x 2 modes.
    assert sum(r["leaked"] for r in RESULTS) == 2 * len(FINAL) * 2
    assert totals["failed cleanly"] == sum(expected(r["call"], r["fault"]) == "failed cleanly" for r in RESULTS)
