"""Parameters users get wrong: a clear error naming the parameter, before any request is sent."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook
from airflow_provider_browseruse.operators.browser_use import (
    CreateSessionOperator,
    RunTaskOperator,
    StopSessionOperator,
    StopTaskOperator,
)
from airflow_provider_browseruse.operators.browser_use_v4 import EndAgentSessionOperator, RunAgentOperator
from airflow_provider_browseruse.sensors.browser_use import AgentRunSensor, SessionStoppedSensor, TaskCompletedSensor
from airflow_provider_browseruse.testing import BrowserUseEmulator
from tests.conftest import task_context

PARSE_TIME: list[tuple[str, Callable[[], Any], str]] = [
    ("session_id", lambda: StopSessionOperator(task_id="x", session_id="sess-123"), "session_id must be a Browser Use id"),
    ("session_id", lambda: SessionStoppedSensor(task_id="x", session_id="123"), "session_id must be a Browser Use id"),
    ("session_id", lambda: RunTaskOperator(task_id="x", task="t", session_id="abc"), "session_id must be a Browser Use id"),
    ("browser_use_task_id", lambda: StopTaskOperator(task_id="x", browser_use_task_id="t-1"), "browser_use_task_id must be"),
    ("browser_use_task_id", lambda: TaskCompletedSensor(task_id="x", browser_use_task_id="?"), "browser_use_task_id must be"),
    ("profile_id", lambda: CreateSessionOperator(task_id="x", profile_id="default"), "profile_id must be a Browser Use id"),
    ("task", lambda: RunTaskOperator(task_id="x", task="   "), "task must be a non-empty prompt"),
    ("structured_output", lambda: RunTaskOperator(task_id="x", task="t", structured_output={"type": 5}), "structured_output is not a valid JSON Schema"),
    ("structured_output", lambda: RunTaskOperator(task_id="x", task="t", structured_output=[1]), "structured_output must be a JSON Schema dict"),
    ("poll_interval", lambda: RunTaskOperator(task_id="x", task="t", poll_interval=-1), "poll_interval must be a positive number"),
    ("timeout", lambda: StopSessionOperator(task_id="x", session_id="3c90c3cc-0d44-4b50-8888-8dd25736052a", timeout=0), "timeout must be a positive"),
    ("metadata", lambda: RunTaskOperator(task_id="x", task="t", metadata={str(n): "v" for n in range(9)}), "metadata can hold at most 5 pairs"),
    ("success_policy", lambda: RunTaskOperator(task_id="x", task="t", success_policy="maybe"), "success_policy must be one of"),
    ("session_settings", lambda: RunTaskOperator(task_id="x", task="t", session_id="{{ s }}", session_settings={"proxyCountryCode": "de"}), "give session_id or session_settings, not both"),
    ("success_policy", lambda: TaskCompletedSensor(task_id="x", browser_use_task_id="{{ t }}", success_policy="strict"), "success_policy must be one of"),
    ("timeout", lambda: RunTaskOperator(task_id="x", task="t", timeout=float("nan")), "timeout must be a positive number of seconds"),
    ("timeout", lambda: RunTaskOperator(task_id="x", task="t", timeout=float("inf")), "timeout must be a positive number of seconds"),
    ("timeout", lambda: RunTaskOperator(task_id="x", task="t", timeout=10**9), "at most 2,592,000"),
    ("poll_interval", lambda: RunTaskOperator(task_id="x", task="t", poll_interval=float("nan")), "poll_interval must be a positive number"),
    ("poll_interval", lambda: StopSessionOperator(task_id="x", session_id="{{ s }}", poll_interval="5"), "poll_interval must be a positive number"),
    ("metadata", lambda: RunTaskOperator(task_id="x", task="t", metadata="abc"), "metadata must be a mapping of strings to strings, got a str"),
    ("metadata", lambda: RunTaskOperator(task_id="x", task="t", metadata=5), "metadata must be a mapping of strings to strings, got a int"),
    ("metadata", lambda: RunTaskOperator(task_id="x", task="t", metadata={"n": 5}), "metadata\\['n'\\] must be a string, got a int"),
    ("secrets", lambda: RunTaskOperator(task_id="x", task="t", secrets="pw-hunter2"), "secrets must be a mapping of strings to strings, got a str"),
    ("allowed_domains", lambda: RunTaskOperator(task_id="x", task="t", allowed_domains="example.com"), "allowed_domains must be a list of strings, got the string 'example.com'"),
    ("allowed_domains", lambda: RunTaskOperator(task_id="x", task="t", allowed_domains=["a.com", 3]), "allowed_domains must be a list of strings"),
    ("browser_screen_width", lambda: CreateSessionOperator(task_id="x", browser_screen_width=100), "browser_screen_width must be a whole number from 320 to 6144"),
    ("browser_screen_height", lambda: CreateSessionOperator(task_id="x", browser_screen_height=1.5), "browser_screen_height must be a whole number from 320 to 3456"),
    ("timeout", lambda: BrowserUseHook(timeout=float("nan")), "timeout must be a positive number of seconds"),
    ("max_download_bytes", lambda: BrowserUseHook(max_download_bytes=0), "max_download_bytes must be a positive whole number"),
    ("max_total", lambda: RetryPolicy(max_total=float("nan")), "max_total must be a finite number of seconds"),
    ("timeout", lambda: TaskCompletedSensor(task_id="x", browser_use_task_id="{{ t }}", timeout=10**10), "timeout must be a positive number of seconds, at most 31,536,000"),
    ("max_cost_usd", lambda: RunTaskOperator(task_id="x", task="t", max_cost_usd=0), "max_cost_usd must be a positive amount in USD"),
    ("max_cost_usd", lambda: RunTaskOperator(task_id="x", task="t", max_cost_usd=float("nan")), "max_cost_usd must be a positive amount in USD"),
    ("max_cost_usd", lambda: RunTaskOperator(task_id="x", task="t", max_cost_usd="1.50"), "max_cost_usd must be a positive amount in USD, at most 100,000; got '1.50'"),
    ("max_cost_usd", lambda: TaskCompletedSensor(task_id="x", browser_use_task_id="{{ t }}", max_cost_usd=True), "max_cost_usd must be a positive amount"),
    ("timeout", lambda: CreateSessionOperator(task_id="x", timeout=-5), "timeout must be a positive number of seconds"),
    # API v4
    ("task", lambda: RunAgentOperator(task_id="x", task=""), "task must be a non-empty prompt"),
    ("session_id", lambda: RunAgentOperator(task_id="x", task="t", session_id="conversation-1"), "session_id must be a Browser Use id"),
    ("workspace_id", lambda: RunAgentOperator(task_id="x", task="t", workspace_id="ws"), "workspace_id must be a Browser Use id"),
    ("profile_id", lambda: RunAgentOperator(task_id="x", task="t", profile_id="default"), "profile_id must be a Browser Use id"),
    ("keep_alive", lambda: RunAgentOperator(task_id="x", task="t", keep_alive=30), "keep_alive must be a whole number from 120 to 14400"),
    ("keep_alive", lambda: RunAgentOperator(task_id="x", task="t", keep_alive=True), "keep_alive must be a whole number"),
    ("max_cost_usd", lambda: RunAgentOperator(task_id="x", task="t", max_cost_usd=float("nan")), "max_cost_usd must be a positive amount"),
    ("session_max_cost_usd", lambda: RunAgentOperator(task_id="x", task="t", session_max_cost_usd=0), "session_max_cost_usd must be a positive amount"),
    ("structured_output_repairs", lambda: RunAgentOperator(task_id="x", task="t", structured_output_repairs=-1), "structured_output_repairs must be a whole number from 0 to 5"),
    ("structured_output", lambda: RunAgentOperator(task_id="x", task="t", structured_output={"type": 5}), "structured_output is not a valid JSON Schema"),
    ("screen_width", lambda: RunAgentOperator(task_id="x", task="t", screen_width=10), "screen_width must be a whole number from 320 to 6144"),
    ("judge", lambda: RunAgentOperator(task_id="x", task="t", judge=["yes"]), "judge must be True, False or a context string"),
    ("success_policy", lambda: RunAgentOperator(task_id="x", task="t", success_policy="judge"), "success_policy='judge' needs judge"),
    ("input_files", lambda: RunAgentOperator(task_id="x", task="t", input_files=b"data"), "input_files must be a path or URL"),
    ("custom_proxy", lambda: RunAgentOperator(task_id="x", task="t", custom_proxy={"port": 1}), "custom_proxy needs a 'host'"),
    ("extra_fields", lambda: RunAgentOperator(task_id="x", task="t", extra_fields={"sessionId": "x", "agentmail": True}), "extra_fields may not set sessionId"),
    ("input_files", lambda: RunAgentOperator(task_id="x", task="t", input_files="nosuchscheme://bucket/a.csv"), "input_files holds 'nosuchscheme://bucket/a.csv'"),
    ("poll_interval", lambda: RunAgentOperator(task_id="x", task="t", poll_interval=0), "poll_interval must be a positive number"),
    ("run_id", lambda: AgentRunSensor(task_id="x", run_id="r-1"), "run_id must be a Browser Use id"),
    ("max_cost_usd", lambda: AgentRunSensor(task_id="x", run_id="{{ r }}", max_cost_usd=-1), "max_cost_usd must be a positive amount"),
    ("session_id", lambda: EndAgentSessionOperator(task_id="x", session_id="s"), "session_id must be a Browser Use id"),
]  # fmt: skip


def test_a_secret_given_wrongly_is_not_repeated_in_the_error() -> None:
    with pytest.raises(ValueError) as caught:
        RunTaskOperator(task_id="x", task="t", secrets={"password": ["hunter2-correct-horse"]})
    assert "hunter2" not in str(caught.value)
    assert "secrets['password'] must be a string, got a list" in str(caught.value)


@pytest.mark.parametrize(
    ("parameter", "build", "message"), PARSE_TIME, ids=[f"{p}-{n}" for n, (p, _, _) in enumerate(PARSE_TIME)]
)
def test_parse_time_errors_name_the_parameter(parameter: str, build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        build()
    assert parameter in str(caught.value)


RUN_TIME: list[tuple[str, Callable[[], Any], str]] = [
    ("session_id", lambda: StopSessionOperator(task_id="x", session_id="{{ 'not-a-uuid' }}"), "session_id must be a Browser Use id"),
    ("browser_use_task_id", lambda: StopTaskOperator(task_id="x", browser_use_task_id="{{ 'nope' }}"), "browser_use_task_id must be"),
    ("session_id", lambda: RunTaskOperator(task_id="x", task="t", session_id="{{ 'zz' }}"), "session_id must be a Browser Use id"),
    ("task", lambda: RunTaskOperator(task_id="x", task="{{ '' }}"), "task rendered to an empty prompt"),
    ("metadata", lambda: RunTaskOperator(task_id="x", task="t", metadata={"n": "{{ 1 }}"}), None),
    ("session_id", lambda: RunAgentOperator(task_id="x", task="t", session_id="{{ 'zz' }}"), "session_id must be a Browser Use id"),
    ("workspace_id", lambda: RunAgentOperator(task_id="x", task="t", workspace_id="{{ 'ws' }}"), "workspace_id must be a Browser Use id"),
    ("task", lambda: RunAgentOperator(task_id="x", task="{{ '' }}"), "task rendered to an empty prompt"),
    ("input_files", lambda: RunAgentOperator(task_id="x", task="t", input_files="/nonexistent/wanted.csv"), "input_files: .*No such file"),
    ("input_files", lambda: RunAgentOperator(task_id="x", task="t", input_files="/dev/null"), "input_files: /dev/null has 0 bytes; the API takes 1 to"),
    ("run_id", lambda: AgentRunSensor(task_id="x", run_id="{{ 'nope' }}"), "run_id must be a Browser Use id"),
    ("session_id", lambda: EndAgentSessionOperator(task_id="x", session_id="{{ 'nope' }}"), "session_id must be a Browser Use id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parameter", "build", "message"), RUN_TIME, ids=[f"{p}-{n}" for n, (p, _, _) in enumerate(RUN_TIME)]
)
def test_rendered_values_are_checked_before_any_request(
    emulator: BrowserUseEmulator, parameter: str, build: Callable[[], Any], message: str | None
) -> None:
    op = build()
    context: dict[str, Any] = task_context()
    op.render_template_fields(context)
    if message is None:  # a rendered metadata value is a string: accepted
        op.wait_for_completion = False
        op.execute(context)
        assert emulator.count("POST", "/tasks") == 1
        return
    with pytest.raises(AirflowException, match=message):
        op.execute(context)
    assert emulator.requests() == []


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        ({"conn_type": "browser_use", "host": "https://api.browser-use.com/api/v2"}, "has no Browser Use API key"),
        ({"conn_type": "browser_use", "password": "bu_x", "host": "ftp://files.example.com"}, r"expected an http\(s\) URL"),
        ({"conn_type": "browser_use", "password": "bu_x", "host": "http://api.browser-use.com/api/v2"}, "plain-http base URL to 'api.browser-use.com'"),
        ({"conn_type": "browser_use", "password": "bu_x", "host": "http://10.0.0.5:8080/api/v2"}, "plain-http base URL to '10.0.0.5'"),
    ],
)  # fmt: skip
def test_malformed_connections_fail_before_any_request(
    emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch, connection: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BAD", json.dumps(connection))
    with pytest.raises(AirflowException, match=message) as caught:
        BrowserUseHook("bad").get_account()
    assert "'bad'" in str(caught.value)  # names the connection to fix
    assert "bu_x" not in str(caught.value)
    assert emulator.requests() == []


def test_plain_http_needs_an_explicit_opt_in(monkeypatch: pytest.MonkeyPatch, requests_mock: Any) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_GW",
        json.dumps(
            {
                "conn_type": "browser_use",
                "password": "bu_x",
                "host": "http://gw.internal/api/v2",
                "extra": {"allow_insecure_http": True},
            }
        ),
    )
    requests_mock.get("http://gw.internal/api/v2/billing/account", json={"projectId": "p"})
    assert BrowserUseHook("gw").get_account() == {"projectId": "p"}


def test_tls_verification_stays_on(emulator: BrowserUseEmulator) -> None:
    import asyncio

    from airflow_provider_browseruse.hooks import browser_use as hooks

    assert BrowserUseHook().http.verify is True

    async def pool_context() -> ssl.SSLContext:
        return hooks.shared_pool().ssl_context

    context = asyncio.run(pool_context())
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
