"""What a DAG author meets in their first hour: a busy session, progress in the logs, connection
mistakes that say where and what to fix, and an extra link that stays quiet when it has nothing."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_browseruse import _common
from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.exceptions import BrowserUseAPIError
from airflow_provider_browseruse.hooks.browser_use import BrowserUseAsyncHook, BrowserUseHook
from airflow_provider_browseruse.operators import RunTaskOperator
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from airflow_provider_browseruse.triggers import TaskStatusTrigger
from tests.conftest import first_event, task_context

# --- a session runs one task at a time ---------------------------------------------------------


def test_a_task_for_a_busy_session_waits_for_it_then_starts(
    emulator: BrowserUseEmulator, captured_logs: Callable[[], str]
) -> None:
    emulator.state.scenario = Scenario().add("first", duration=0.6, output="one").add("second", output="two")
    session_id = emulator.state.create_session({"keepAlive": True})["id"]
    running = emulator.state.create_task({"task": "first", "sessionId": session_id})["id"]
    op = RunTaskOperator(task_id="second", task="second", session_id=session_id, poll_interval=0.05)
    assert op.execute(task_context()) == "two"
    refused = [r for r in emulator.requests("POST", "/tasks") if r.status == 400]
    assert len(refused) >= 2  # it asked while the session was busy, and was refused without creating
    assert [t["status"] for t in emulator.state.get_session(session_id)["tasks"]] == ["finished", "finished"]
    logs = captured_logs()
    assert f"Session {session_id} is running task {running}; waiting for it to end" in logs
    assert logs.count("waiting for it to end") == 1  # said once, not at every attempt


def test_a_session_busy_past_the_timeout_fails_without_starting_anything(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("first", duration=60)
    session_id = emulator.state.create_session({"keepAlive": True})["id"]
    emulator.state.create_task({"task": "first", "sessionId": session_id})
    op = RunTaskOperator(task_id="second", task="second", session_id=session_id, poll_interval=0.05, timeout=0.3)
    with pytest.raises(AirflowException, match="was still running another task after 0.3 s; this task was not started"):
        op.execute(task_context())
    assert len(emulator.state.get_session(session_id)["tasks"]) == 1


def test_a_stopped_session_still_fails_at_once(emulator: BrowserUseEmulator) -> None:
    session_id = emulator.state.create_session({"keepAlive": True})["id"]
    emulator.state.stop_session(session_id)
    op = RunTaskOperator(task_id="t", task="anything", session_id=session_id, poll_interval=0.05)
    with pytest.raises(AirflowException, match="Browser session is stopped"):
        op.execute(task_context())
    assert emulator.count("POST", "/tasks") == 1


# --- progress a person can follow --------------------------------------------------------------


def test_a_long_task_logs_each_status_once_and_progress_now_and_then(
    emulator: BrowserUseEmulator, captured_logs: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_common, "PROGRESS_EVERY", 0.4)
    emulator.state.scenario = Scenario().add("long", duration=1.5, start_delay=0.2, output="done")
    ctx = task_context()
    RunTaskOperator(task_id="t", task="long job", poll_interval=0.05).execute(ctx)
    task_id = ctx["ti"].xcom["browser_use_task_id"]
    polls = emulator.count("GET", f"/tasks/{task_id}/status")
    logs = captured_logs()
    assert polls >= 20
    assert logs.count(f"Task {task_id} is created.") == 1
    assert logs.count(f"Task {task_id} is started.") == 1
    progress = logs.count(f"Task {task_id} is still started")
    assert 1 <= progress <= 4, logs  # about 1.3 s of running at one line per 0.4 s, not one per poll
    assert "steps so far:" in logs and "cost so far: $" in logs
    session_page = f"https://cloud.browser-use.com/sessions/{ctx['ti'].xcom['session_id']}"
    assert logs.count(f"Follow task {task_id} in its session's page: {session_page}") == 1


def test_a_deferred_wait_logs_progress_in_the_triggerer(
    emulator: BrowserUseEmulator, captured_logs: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_common, "PROGRESS_EVERY", 0.4)
    emulator.state.scenario = Scenario().add("long", duration=1.5, start_delay=0, output="done")
    task_id = emulator.state.create_task({"task": "long job"})["id"]
    event = first_event(TaskStatusTrigger(task_id, poll_interval=0.05, end_time=time.time() + 30))
    assert event["event"] == "ended"
    logs = captured_logs()
    assert logs.count(f"Task {task_id} is started.") == 1
    assert 1 <= logs.count(f"Task {task_id} is still started") <= 4
    assert emulator.count("GET", f"/tasks/{task_id}") >= 1  # the full task, for its steps, now and then


# --- connection mistakes that say where --------------------------------------------------------

FAST = RetryPolicy(max_attempts=3, initial_wait=0.01, max_wait=0.01, max_total=10)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call_both(conn: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[tuple[BrowserUseAPIError, int]]:
    """``get_session`` through the sync and the async hook: each one's error and number of attempts."""
    monkeypatch.setenv("AIRFLOW_CONN_WRONG", json.dumps(conn))
    attempts: list[str] = []
    sync_send, async_send = BrowserUseHook._send_once, BrowserUseAsyncHook._send_once

    def counted_sync(self: BrowserUseHook, *args: Any) -> Any:
        attempts.append("sync")
        return sync_send(self, *args)

    async def counted_async(self: BrowserUseAsyncHook, *args: Any) -> Any:
        attempts.append("async")
        return await async_send(self, *args)

    monkeypatch.setattr(BrowserUseHook, "_send_once", counted_sync)
    monkeypatch.setattr(BrowserUseAsyncHook, "_send_once", counted_async)
    with pytest.raises(BrowserUseAPIError) as sync_error:
        BrowserUseHook("wrong", timeout=5, retry_policy=FAST).get_session(SID)
    with pytest.raises(BrowserUseAPIError) as async_error:
        asyncio.run(BrowserUseAsyncHook("wrong", timeout=5, retry_policy=FAST).get_session(SID))
    return [(sync_error.value, attempts.count("sync")), (async_error.value, attempts.count("async"))]


SID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def test_a_closed_port_names_the_url_and_what_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"http://127.0.0.1:{closed_port()}/api/v2"
    for error, _ in call_both({"conn_type": "browser_use", "host": base, "password": "bu_key_12345"}, monkeypatch):
        assert error.kind == "unreachable"
        assert f"could not connect to the API at {base}" in str(error)
        assert "is the server up, and are the host and port right?" in str(error)


def test_a_wrong_path_says_the_route_does_not_exist(
    emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = emulator.root_url + "/api/v3"
    conn = {"conn_type": "browser_use", "host": base, "password": emulator.state.api_key}
    for error, attempts in call_both(conn, monkeypatch):
        assert (error.http_status, attempts) == (404, 1)
        # /api/v3 is not a version this provider speaks: it is taken as the API root.
        assert f"HTTP 404: Not Found at {base}/v2: the server has no such route" in str(error)
        assert "the API root, such as https://api.browser-use.com/api, or a URL that ends in /api/v2" in str(error)


def test_https_to_a_plain_http_server_is_a_final_tls_error(
    emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host without a scheme, as a URI connection gives it: https by default, against plain http.
    conn = {"conn_type": "browser_use", "host": "127.0.0.1", "port": emulator.port, "schema": "api/v2"}
    conn["password"] = emulator.state.api_key
    for error, attempts in call_both(conn, monkeypatch):
        assert (error.kind, attempts) == ("tls", 1)  # final: asking again cannot help
        assert f"the TLS handshake with the API at https://127.0.0.1:{emulator.port}/api/v2 failed" in str(error)
        assert "write http:// in the connection's base URL" in str(error)


def test_a_connection_test_says_which_project_and_plan(
    emulator: BrowserUseEmulator, captured_logs: Callable[[], str]
) -> None:
    ok, message = BrowserUseHook().test_connection()
    assert ok
    assert message in captured_logs()  # printed: `airflow connections test` itself prints only "success"


def test_airflow_connections_test_prints_the_project_and_plan(emulator: BrowserUseEmulator, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_BROWSER_USE_DEFAULT": emulator.airflow_connection(),
    }
    command = [sys.executable, "-m", "airflow", "connections", "test", "browser_use_default"]
    tested = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert f"Connected to Browser Use: project {emulator.state.project_id}, Emulator." in tested.stdout
    assert "Connection success!" in tested.stdout


# --- the extra link ----------------------------------------------------------------------------


def test_every_operator_and_sensor_reserves_an_empty_link_before_it_runs() -> None:
    from airflow_provider_browseruse.operators import StopSessionOperator
    from airflow_provider_browseruse.sensors import TaskCompletedSensor

    for op in (
        RunTaskOperator(task_id="t", task="x"),
        StopSessionOperator(task_id="s", session_id=SID),
        TaskCompletedSensor(task_id="w", browser_use_task_id=SID),
    ):
        ctx = task_context()
        op.pre_execute(ctx)
        assert ctx["ti"].xcom == {"browser_use_session_url": ""}


FAILS_EARLY = """
from airflow.sdk import DAG
from airflow_provider_browseruse.operators import RunTaskOperator

with DAG(dag_id="fails_early", schedule=None, default_args={"retries": 0}):
    RunTaskOperator(task_id="run", task="anything", llm="no-such-model", poll_interval=1)
"""


@pytest.mark.dag
def test_a_task_failing_before_its_session_exists_logs_no_link_error(
    emulator: BrowserUseEmulator, tmp_path: Path
) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "fails_early.py").write_text(FAILS_EARLY)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_BROWSER_USE_DEFAULT": emulator.airflow_connection(),
    }
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    run = subprocess.run([*airflow, "dags", "test", "fails_early"], env=env, capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "HTTP 422: the API rejected the request: llm" in output  # it did fail early
    assert "XCom not found" not in output
    assert emulator.count("POST", "/tasks") == 1 and emulator.active_session_count() == 0
