"""The fault matrix for API v4: every call the v4 operators make, under every fault of the v2
matrix, in sync and deferrable mode (see tests/test_fault_matrix.py for the rules).

Asserted for each case: the expected outcome (recovered with the expected attempts, or failed
cleanly with a Browser Use message, no retry storm), no second run or workspace from a create,
no request to another host, no attempt past its bound, and nothing left running: no active run
and no active browser (but when a stop itself gets a final refusal: then nothing could).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

import pytest

from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse.hooks import browser_use as hooks
from airflow_provider_browseruse.operators import EndAgentSessionOperator, RunAgentOperator
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import FakeTaskInstance
from tests.hostile import HostileServer
from tests.test_fault_matrix import (
    BOUND_GRACE,
    FAULTS,
    FINAL,
    LISTING_ONLY,
    TRANSIENT_BEFORE_HANDLING,
    attempt_durations,  # noqa: F401 (fixtures)
    fast_retries,  # noqa: F401
    other_host,  # noqa: F401
    refused_once,
    run_op,
)

pytestmark = pytest.mark.dag

ID = r"[0-9a-f-]{36}"
CALLS = {  # call -> (method, logged path regex)
    "create workspace": ("POST", "/v4/workspaces"),
    "create run": ("POST", "/v4/runs"),
    "run status": ("GET", rf"/v4/runs/{ID}/status"),
    "get run": ("GET", rf"/v4/runs/{ID}"),
    "stop browser": ("PATCH", rf"/v4/browsers/{ID}"),
    "cancel run": ("POST", rf"/v4/runs/{ID}/cancel"),
    "list runs": ("GET", "/v4/runs"),  # a retry (no task state store) looking for its earlier run
}
CREATES = {"create workspace", "create run"}
#: Faults after which a create may have taken effect.
AMBIGUOUS = {"dropped", "read timeout", "malformed JSON", "corrupt gzip", "deep JSON", "drip body", "oversized body"}
#: Calls an operator repeats anyway (the status poll; the run is read again for a judge or a budget).
POLLED = {"run status", "get run"}
RESULTS: list[dict[str, Any]] = []


def flow(call: str, deferrable: bool, emulator: BrowserUseEmulator) -> tuple[Any, FakeTaskInstance]:
    """The operator that makes ``call``, ready to run."""
    ti = FakeTaskInstance(dag_id="fm4", run_id="r", task_id="t")
    if call == "cancel run":  # the teardown of a conversation whose run still goes on
        from browser_use_sdk.v4 import BrowserUse

        client = BrowserUse(api_key=emulator.state.api_key, base_url=emulator.v4_base_url)
        run = client.runs.create("fault job long", keep_alive=600)
        return EndAgentSessionOperator(task_id="end", session_id=str(run.session_id)), ti
    if call == "list runs":
        ti = FakeTaskInstance(dag_id="fm4", run_id="r", task_id="t", try_number=2)
    operator = RunAgentOperator(task_id="run", task="fault job", poll_interval=0.1, deferrable=deferrable)
    return operator, ti


def expected(call: str, fault: str) -> str:
    if fault in FINAL or fault in LISTING_ONLY:
        return "failed cleanly"
    if call in CREATES and (fault in TRANSIENT_BEFORE_HANDLING or (call == "create workspace" and fault in AMBIGUOUS)):
        # Never resent: nothing was created (a gateway error), or a workspace may have been,
        # which no call can find (there is no workspace listing): the task fails before any run.
        return "failed cleanly"
    return "recovered"


@pytest.mark.parametrize("mode", ["sync", "deferrable"])
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("call", list(CALLS))
def test_fault_matrix_v4(
    emulator: BrowserUseEmulator,
    fast_retries: None,  # noqa: F811
    other_host: HostileServer,  # noqa: F811
    attempt_durations: list[float],  # noqa: F811
    call: str,
    fault: str,
    mode: str,
) -> None:
    if fault in LISTING_ONLY and call != "list runs":
        pytest.skip("only a listing meets this fault")
    if mode == "deferrable" and call in ("create workspace", "create run", "list runs", "cancel run"):
        pytest.skip("made before deferring (or by a teardown): the same in both modes")
    other_host.received.clear()
    emulator.state.scenario = Scenario().add("fault job long", duration=60).add("fault job", duration=0.4, output="ok")
    emulator.state.retry_after = 1
    method, path = CALLS[call]
    op, ti = flow(call, mode == "deferrable", emulator)
    before = len(emulator.requests(method, path))
    spec = FAULTS[fault]
    if spec is not None:
        spec = {k: v.format(other=other_host.url).replace("/api/v2", "/api/v4") if isinstance(v, str) else v
                for k, v in spec.items()}  # fmt: skip
        emulator.add_fault(method=method, path=path, **spec)
    outcome, message = "recovered", ""
    with refused_once(method, path) if spec is None else contextlib.nullcontext():
        try:
            run_op(op, ti)
        except AirflowException as error:
            outcome, message = "failed cleanly", str(error)
    time.sleep(1.1 if fault == "read timeout" else 0)  # let a request the client gave up on land
    attempts = len(emulator.requests(method, path)) - before
    made = emulator.state.v4
    runs = sum(run.prompt == "fault job" for run in made.runs.values())  # the flow's own run
    duplicates = max(0, runs - 1) + max(0, len(made.workspaces) - 1)
    leaked = emulator.active_run_count() + emulator.active_browser_count()
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
        assert "Browser Use" in message, message
        assert attempts <= (hooks.MAX_LIST_PAGES if fault in LISTING_ONLY else 4)
    if fault in FINAL:
        assert attempts == 1
    if outcome == "recovered":
        check_attempts(call, fault, attempts)
    assert RESULTS[-1]["other_host"] == 0
    assert RESULTS[-1]["outlived"] == 0, attempt_durations
    assert duplicates == 0, Counter(r.path for r in emulator.requests("POST", "/v4/(runs|workspaces)"))
    # Only a final refusal of the stop (or the cancel) itself leaves that one thing going: nothing
    # could stop it then. A teardown whose cancel is refused still stops the browser.
    stuck = call in ("stop browser", "cancel run") and fault in FINAL
    assert leaked == (1 if stuck else 0), emulator.requests()[-10:]
    if stuck and call == "cancel run":
        assert (emulator.active_run_count(), emulator.active_browser_count()) == (1, 0)


def check_attempts(call: str, fault: str, attempts: int) -> None:
    if fault == "refused":
        wanted = 1  # refused in the client: the server saw only the retry
    elif call in CREATES and fault in AMBIGUOUS:
        wanted = 1  # never resent: the run was found instead
    else:
        wanted = 2
    if call in POLLED:
        assert attempts >= wanted, (call, fault, attempts)
    else:
        assert attempts == wanted, (call, fault, attempts)


def test_print_the_v4_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    if not RESULTS:
        pytest.skip("run together with test_fault_matrix_v4")
    totals = Counter(r["outcome"] for r in RESULTS)
    line = (
        f"v4 fault matrix: cases {len(RESULTS)}, recovered {totals['recovered']}, failed cleanly "
        f"{totals['failed cleanly']}, duplicates {sum(r['duplicates'] for r in RESULTS)}, left running "
        f"{sum(r['leaked'] for r in RESULTS)} (all from final refusals of a stop), requests to another host "
        f"{sum(r['other_host'] for r in RESULTS)}, attempts past their bound {sum(r['outlived'] for r in RESULTS)}"
    )
    with capsys.disabled():
        print("\n" + line)
