"""Operators and sensors, run directly with a recording task instance: requests-mock and emulator."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pydantic
import pytest
import requests_mock as rm

from airflow_provider_browseruse._compat import AirflowException, AirflowFailException
from airflow_provider_browseruse.exceptions import BrowserUseAPIError, BrowserUseTaskError
from airflow_provider_browseruse.links.browser_use import BrowserUseSessionLink
from airflow_provider_browseruse.operators.browser_use import (
    CreateSessionOperator,
    RunTaskOperator,
    StopSessionOperator,
    StopTaskOperator,
)
from airflow_provider_browseruse.sensors.browser_use import SessionStoppedSensor, TaskCompletedSensor
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import MOCK_BASE_URL, task_context

SID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
TASKS = [
    {"id": "t1", "sessionId": SID, "llm": "x", "task": "a", "status": "finished", "createdAt": "c", "output": "A",
     "isSuccess": True, "judgeVerdict": None, "cost": "0.10", "metadata": {}},
    {"id": "t2", "sessionId": SID, "llm": "x", "task": "b", "status": "stopped", "createdAt": "c", "output": None,
     "isSuccess": None, "judgeVerdict": None, "cost": "0.05", "metadata": {}},
]  # fmt: skip
STOPPED = {
    "id": SID, "status": "stopped", "startedAt": "s", "finishedAt": "f", "tasks": TASKS, "proxyCost": "0.01",
    "liveUrl": "https://live.example/secret-token", "publicShareUrl": "https://share.example/tok", "recordingUrl": "https://rec/sig",
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_sleep_in_mock_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "mock_conn" in request.fixturenames:
        monkeypatch.setattr("airflow_provider_browseruse.operators.browser_use.time.sleep", lambda s: None)


# --- StopSessionOperator -----------------------------------------------------------------------


def test_stop_session_sends_stop_and_publishes_outputs(
    mock_conn: str, requests_mock: rm.Mocker, captured_logs: Any
) -> None:
    requests_mock.patch(f"{MOCK_BASE_URL}/sessions/{SID}", json=STOPPED)
    ctx = task_context()
    result = StopSessionOperator(task_id="stop", session_id=SID).execute(ctx)
    assert requests_mock.last_request.json() == {"action": "stop"}
    assert requests_mock.call_count == 1
    assert not {"liveUrl", "publicShareUrl", "recordingUrl"} & set(result)
    assert result["tasks"] == TASKS
    assert ctx["ti"].xcom["task_outputs"] == [
        {"id": "t1", "status": "finished", "output": "A", "isSuccess": True, "judgeVerdict": None, "cost": "0.10"},
        {"id": "t2", "status": "stopped", "output": None, "isSuccess": None, "judgeVerdict": None, "cost": "0.05"},
    ]
    assert ctx["ti"].xcom["browser_use_session_url"] == f"https://cloud.browser-use.com/sessions/{SID}"
    logs = captured_logs()
    assert "2 task(s), total cost $0.16" in logs
    assert "secret-token" not in logs


def test_stop_session_waits_while_still_active(mock_conn: str, requests_mock: rm.Mocker) -> None:
    requests_mock.patch(f"{MOCK_BASE_URL}/sessions/{SID}", json={**STOPPED, "status": "active"})
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", [{"json": {**STOPPED, "status": "active"}}, {"json": STOPPED}])
    result = StopSessionOperator(task_id="stop", session_id=SID, poll_interval=0.01).execute(task_context())
    assert result["status"] == "stopped"
    assert [r.method for r in requests_mock.request_history] == ["PATCH", "GET", "GET"]


def test_stop_session_gives_up_waiting_after_its_timeout(mock_conn: str, requests_mock: rm.Mocker) -> None:
    requests_mock.patch(f"{MOCK_BASE_URL}/sessions/{SID}", json={**STOPPED, "status": "active"})
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", json={**STOPPED, "status": "active"})
    with pytest.raises(AirflowException, match="still 'active' after 0.05 s"):
        StopSessionOperator(task_id="stop", session_id=SID, poll_interval=0.01, timeout=0.05).execute(task_context())


def test_stop_unknown_session_fails_without_retry(mock_conn: str, requests_mock: rm.Mocker) -> None:
    requests_mock.patch(f"{MOCK_BASE_URL}/sessions/{SID}", status_code=404, json={"detail": "Session not found"})
    with pytest.raises(AirflowFailException, match="HTTP 404: Session not found. Is session_id right"):
        StopSessionOperator(task_id="stop", session_id=SID).execute(task_context())
    ctx = task_context()
    assert StopSessionOperator(task_id="stop", session_id=SID, missing_ok=True).execute(ctx) is None
    assert ctx["ti"].xcom["task_outputs"] == []


def test_bad_session_ids_are_refused_before_any_request(mock_conn: str, requests_mock: rm.Mocker) -> None:
    with pytest.raises(ValueError, match="session_id must be a Browser Use id"):
        StopSessionOperator(task_id="stop", session_id="sess_123")
    templated = StopSessionOperator(task_id="stop", session_id="{{ params.sid }}")
    templated.session_id = "still-not-a-uuid"  # as rendered
    with pytest.raises(AirflowFailException, match="got 'still-not-a-uuid'"):
        templated.execute(task_context())
    with pytest.raises(ValueError, match="poll_interval must be a positive number"):
        StopSessionOperator(task_id="stop", session_id=SID, poll_interval=0)
    assert requests_mock.request_history == []


def test_stop_session_against_the_emulator(emulator: BrowserUseEmulator) -> None:
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    hook = BrowserUseHook()
    sid = hook.create_session({"keepAlive": True})["id"]
    hook.create_task({"task": "long running", "sessionId": sid})
    ctx = task_context()
    result = StopSessionOperator(task_id="stop", session_id=sid).execute(ctx)
    assert result["status"] == "stopped"
    assert [t["status"] for t in ctx["ti"].xcom["task_outputs"]] == ["stopped"]
    assert emulator.active_session_count() == 0
    # Stopping again (a teardown that runs twice) is a success too.
    assert StopSessionOperator(task_id="stop", session_id=sid).execute(task_context())["status"] == "stopped"


# --- SessionStoppedSensor ----------------------------------------------------------------------


def test_session_stopped_sensor(mock_conn: str, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", [{"json": {**STOPPED, "status": "active"}}, {"json": STOPPED}])
    sensor = SessionStoppedSensor(task_id="wait", session_id=SID)
    ctx = task_context()
    assert sensor.poke(ctx).is_done is False
    done = sensor.poke(ctx)
    assert done.is_done is True
    assert done.xcom_value == {
        k: v for k, v in STOPPED.items() if k not in ("liveUrl", "publicShareUrl", "recordingUrl")
    }
    assert [o["id"] for o in ctx["ti"].xcom["task_outputs"]] == ["t1", "t2"]


def test_session_stopped_sensor_fails_at_once_on_unknown_session(mock_conn: str, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{MOCK_BASE_URL}/sessions/{SID}", status_code=404, json={"detail": "Session not found"})
    with pytest.raises(AirflowFailException, match="Session not found"):
        SessionStoppedSensor(task_id="wait", session_id=SID).poke(task_context())


# --- CreateSessionOperator ---------------------------------------------------------------------


def test_create_session_defaults_to_no_keep_alive(mock_conn: str, requests_mock: rm.Mocker) -> None:
    requests_mock.post(
        f"{MOCK_BASE_URL}/sessions", status_code=201, json={"id": SID, "status": "active", "keepAlive": False}
    )
    ctx = task_context()
    op = CreateSessionOperator(
        task_id="create", proxy_country_code="de", browser_screen_width=1280, extra_fields={"customProxy": None}
    )
    assert op.execute(ctx) == SID
    assert requests_mock.last_request.json() == {
        "keepAlive": False,
        "proxyCountryCode": "de",
        "browserScreenWidth": 1280,
        "customProxy": None,
    }
    assert ctx["ti"].xcom["session_id"] == SID


# --- RunTaskOperator ---------------------------------------------------------------------------


class Books(pydantic.BaseModel):
    titles: list[str]


BOOKS_SCHEMA = {
    "type": "object",
    "properties": {"titles": {"type": "array", "items": {"type": "string"}}},
    "required": ["titles"],
}


def run(op: RunTaskOperator, ctx: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    ctx = ctx or task_context()
    return op.execute(ctx), ctx["ti"].xcom


def test_run_task_one_off_success(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("headline", output="Big news", duration=0.2, cost="0.07")
    output, xcom = run(RunTaskOperator(task_id="run", task="Read the headline", poll_interval=0.05))
    assert output == "Big news"
    assert set(xcom) >= {"browser_use_task_id", "session_id", "task", "browser_use_session_url"}
    assert xcom["task"]["status"] == "finished"
    assert "steps" not in xcom["task"]
    assert xcom["task"]["metadata"] == {
        "airflow_dag_id": "dag", "airflow_run_id": "run", "airflow_task_id": "op", "airflow_map_index": "-1", "airflow_try": "1"
    }  # fmt: skip
    assert emulator.count("GET", f"/tasks/{xcom['browser_use_task_id']}") == 1  # one full fetch, at the end
    assert emulator.active_session_count() == 0


def test_run_task_polls_the_light_status_endpoint_sparingly(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario(Scenario().default.model_copy(update={"duration": 0.5, "start_delay": 0}))
    _, xcom = run(RunTaskOperator(task_id="run", task="anything", poll_interval=0.2))
    polls = emulator.count("GET", f"/tasks/{xcom['browser_use_task_id']}/status")
    assert 3 <= polls <= 4  # ceil(0.5 / 0.2) = 3, one more for scheduling noise
    assert emulator.count("POST", "/tasks") == 1


@pytest.mark.parametrize("structured_output", [BOOKS_SCHEMA, Books])
def test_run_task_structured_output(emulator: BrowserUseEmulator, structured_output: Any) -> None:
    emulator.state.scenario = Scenario().add("books", output_json={"titles": ["Dune", "Emma"]}, duration=0.05)
    output, _ = run(
        RunTaskOperator(task_id="run", task="list books", structured_output=structured_output, poll_interval=0.05)
    )
    assert output == {"titles": ["Dune", "Emma"]}
    task = next(iter(emulator.state.tasks.values()))
    assert task.prompt == "list books"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("not json at all", "output is not valid JSON"),
        ('{"titles": "Dune"}', "does not match the structured_output schema at titles"),
    ],
)
def test_run_task_bad_structured_output_fails_clearly(emulator: BrowserUseEmulator, output: str, message: str) -> None:
    emulator.state.scenario = Scenario().add("books", output=output, duration=0.05)
    with pytest.raises(BrowserUseTaskError, match=message) as caught:
        run(RunTaskOperator(task_id="run", task="list books", structured_output=BOOKS_SCHEMA, poll_interval=0.05))
    assert (caught.value.status, caught.value.output) == ("finished", output)


@pytest.mark.parametrize(
    ("script", "policy", "judge", "error"),
    [
        ({"status": "failed", "output": "captcha"}, "agent", False, "failed; output: 'captcha'"),
        ({"status": "stopped"}, "lenient", False, "stopped"),
        ({"is_success": False, "output": "gave up"}, "agent", False, "the agent reports it did not succeed"),
        ({"is_success": False, "output": "gave up"}, "lenient", False, None),
        (
            {"judge_verdict": False, "judgement": "wrong page"},
            "judge",
            True,
            "the judge's verdict is False, not true; output: .*judgement: wrong page",
        ),
        ({"judge_verdict": True}, "judge", True, None),
    ],
)
def test_run_task_success_policy(
    emulator: BrowserUseEmulator, script: dict[str, Any], policy: str, judge: bool, error: str | None
) -> None:
    emulator.state.scenario = Scenario().add("job", duration=0.05, **script)
    op = RunTaskOperator(task_id="run", task="do the job", success_policy=policy, judge=judge, poll_interval=0.05)
    ctx = task_context()
    if error is None:
        run(op, ctx)
    else:
        with pytest.raises(BrowserUseTaskError, match=error) as caught:
            run(op, ctx)
        remote = emulator.state.get_task(ctx["ti"].xcom["browser_use_task_id"])
        assert (caught.value.browser_use_task_id, caught.value.status, caught.value.output) == (
            remote["id"],
            remote["status"],
            remote["output"],
        )
        assert caught.value.judge_verdict == remote["judgeVerdict"]
    assert emulator.active_session_count() == 0


def test_run_task_timeout_stops_the_remote_task_and_its_one_off_session(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("forever", duration=60)
    ctx = task_context()
    with pytest.raises(AirflowException, match="did not end within 0.3 s; it was stopped"):
        run(RunTaskOperator(task_id="run", task="forever", poll_interval=0.05, timeout=0.3), ctx)
    task_id = ctx["ti"].xcom["browser_use_task_id"]
    assert emulator.state.get_task(task_id)["status"] == "stopped"
    assert emulator.requests("PATCH", f"/tasks/{task_id}")[0].status == 200
    assert emulator.active_session_count() == 0


def test_run_task_timeout_leaves_a_given_session_to_its_owner(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("forever", duration=60)
    sid = emulator.state.create_session({"keepAlive": True})["id"]
    with pytest.raises(AirflowException, match="it was stopped"):
        run(RunTaskOperator(task_id="run", task="forever", session_id=sid, poll_interval=0.05, timeout=0.2))
    assert emulator.state.get_session(sid)["status"] == "active"
    assert [t["status"] for t in emulator.state.get_session(sid)["tasks"]] == ["stopped"]


def test_run_task_on_kill_stops_the_remote_task(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("forever", duration=60)
    op = RunTaskOperator(task_id="run", task="forever", poll_interval=0.05)
    ctx = task_context()
    errors: list[BaseException] = []

    def execute() -> None:
        try:
            op.execute(ctx)
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=execute, daemon=True)  # a failing test must not hold pytest open
    worker.start()
    deadline = time.monotonic() + 5
    while "browser_use_task_id" not in ctx["ti"].xcom:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    op.on_kill()
    worker.join(timeout=5)
    assert emulator.state.get_task(ctx["ti"].xcom["browser_use_task_id"])["status"] == "stopped"
    assert emulator.active_session_count() == 0
    assert "stopped" in str(errors[0])


def test_run_task_stop_on_give_up_can_be_turned_off(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("forever", duration=60)
    ctx = task_context()
    with pytest.raises(AirflowException):
        run(RunTaskOperator(task_id="run", task="forever", poll_interval=0.05, timeout=0.1, stop_on_give_up=False), ctx)
    assert emulator.state.get_task(ctx["ti"].xcom["browser_use_task_id"])["status"] == "started"
    assert emulator.count("PATCH", "/tasks/.*") == 0


def test_a_retry_reattaches_to_the_running_task(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("slow", duration=0.5, output="done once")
    first = RunTaskOperator(task_id="run", task="slow job", poll_interval=0.05)
    first_ctx = task_context(try_number=1)
    tags = first._tags(first_ctx)
    first._start(first._request(first_ctx, tags), tags)  # try 1 created the task, then its worker died
    output, xcom = run(RunTaskOperator(task_id="run", task="slow job", poll_interval=0.05), task_context(try_number=2))
    assert output == "done once"
    assert emulator.count("POST", "/tasks") == 1
    assert xcom["task"]["metadata"]["airflow_try"] == "1"


def test_a_retry_after_a_failed_remote_task_starts_a_new_one(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("flaky", duration=0.05, status="failed")
    with pytest.raises(AirflowException, match="failed"):
        run(RunTaskOperator(task_id="run", task="flaky job", poll_interval=0.05), task_context(try_number=1))
    emulator.state.scenario = Scenario().add("flaky", duration=0.05, output="ok now")
    output, _ = run(RunTaskOperator(task_id="run", task="flaky job", poll_interval=0.05), task_context(try_number=2))
    assert output == "ok now"
    assert emulator.count("POST", "/tasks") == 2


def test_an_ambiguous_create_is_reconciled_not_resent(emulator: BrowserUseEmulator) -> None:
    emulator.add_fault(method="POST", path="/tasks", status=502, after_handling=True)
    emulator.state.scenario = Scenario().add("job", duration=0.05, output="found it")
    output, _ = run(RunTaskOperator(task_id="run", task="job", poll_interval=0.05))
    assert output == "found it"
    assert emulator.count("POST", "/tasks") == 1
    assert len(emulator.state.tasks) == 1


def test_run_task_without_waiting_then_sensor(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("later", duration=0.2, output_json={"titles": ["X"]})
    task_id, _ = run(
        RunTaskOperator(task_id="run", task="later", structured_output=BOOKS_SCHEMA, wait_for_completion=False)
    )
    sensor = TaskCompletedSensor(task_id="wait", browser_use_task_id=task_id, structured_output=Books)
    ctx = task_context()
    assert sensor.poke(ctx).is_done is False
    time.sleep(0.3)
    done = sensor.poke(ctx)
    assert (done.is_done, done.xcom_value) == (True, {"titles": ["X"]})
    assert ctx["ti"].xcom["browser_use_task_id"] == task_id
    assert ctx["ti"].xcom["task"]["status"] == "finished"
    assert ctx["ti"].xcom["session_id"] == emulator.state.tasks[task_id].session_id


def test_task_sensor_fails_on_a_failed_task(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("bad", duration=0, status="failed", output="blocked")
    task_id = emulator.state.create_task({"task": "bad"})["id"]
    time.sleep(0.05)
    with pytest.raises(AirflowException, match="failed; output: 'blocked'"):
        TaskCompletedSensor(task_id="wait", browser_use_task_id=task_id).poke(task_context())


def test_secrets_are_sent_masked_and_never_logged(mock_conn: str, requests_mock: rm.Mocker, captured_logs: Any) -> None:
    tid = "9b2f7c1e-4a5d-4e6f-8a7b-1c2d3e4f5a6b"
    requests_mock.post(f"{MOCK_BASE_URL}/tasks", status_code=202, json={"id": tid, "sessionId": SID})
    op = RunTaskOperator(
        task_id="run", task="log in", secrets={"password": "{{ params.pw }}"}, wait_for_completion=False
    )
    assert "secrets" not in op.template_fields
    ctx = {**task_context(), "params": {"pw": "correct-horse-battery"}}
    assert op.execute(ctx) == tid
    assert requests_mock.last_request.json()["secrets"] == {"password": "correct-horse-battery"}
    assert "correct-horse-battery" not in captured_logs()
    assert "correct-horse-battery" not in json.dumps(ctx["ti"].xcom)
    from airflow.sdk.execution_time.secrets_masker import redact
    from airflow.sdk.log import mask_secret  # noqa: F401  (masking registered: redact() hides it)

    assert "correct-horse-battery" not in str(redact("pw=correct-horse-battery"))


def test_output_files_are_saved_and_listed(emulator: BrowserUseEmulator, tmp_path: Path) -> None:
    emulator.state.scenario = Scenario().add(
        "export",
        duration=0.05,
        output_files=[{"file_name": "out.csv", "content": "a,b\n"}, {"file_name": "n/x.txt", "content": "x"}],
    )
    _, xcom = run(
        RunTaskOperator(task_id="run", task="export", poll_interval=0.05, output_files_path=f"file://{tmp_path}")
    )
    assert [Path(p.removeprefix("file://")).name for p in xcom["output_files"]] == ["out.csv", "n_x.txt"]
    saved = tmp_path / xcom["browser_use_task_id"] / "out.csv"
    assert saved.read_text() == "a,b\n"


def test_output_file_names_are_made_safe_and_distinct(emulator: BrowserUseEmulator, tmp_path: Path) -> None:
    long_name = "r" * 300 + ".csv"
    emulator.state.scenario = Scenario().add(
        "export",
        duration=0.05,
        output_files=[
            {"file_name": "out.csv", "content": "first"},
            {"file_name": "OUT.csv", "content": "second"},  # the same name on a case-blind file system
            {"file_name": "..\\..\\evil\x00.txt", "content": "contained"},
            {"file_name": long_name, "content": "long"},
        ],
    )
    _, xcom = run(
        RunTaskOperator(task_id="run", task="export", poll_interval=0.05, output_files_path=f"file://{tmp_path}")
    )
    folder = tmp_path / xcom["browser_use_task_id"]
    assert len(list(folder.iterdir())) == 4 and [p.name for p in tmp_path.iterdir()] == [folder.name]
    saved = [Path(p.removeprefix("file://")) for p in xcom["output_files"]]
    assert [p.read_text() for p in saved] == ["first", "second", "contained", "long"]
    assert {p.parent for p in saved} == {folder}  # nothing outside the task's folder
    names = [p.name for p in saved]
    file_ids = [f["id"] for f in emulator.state.get_task(xcom["browser_use_task_id"])["outputFiles"]]
    assert names[:3] == ["out.csv", f"{file_ids[1]}-OUT.csv", ".._.._evil_.txt"]
    assert names[3].endswith(".csv") and len(names[3].encode()) <= 160


@pytest.mark.parametrize("bad_name", ["..", ".", "", "   "])
def test_an_output_file_without_a_usable_name_is_refused_before_any_download(
    emulator: BrowserUseEmulator, tmp_path: Path, bad_name: str
) -> None:
    emulator.state.scenario = Scenario().add(
        "export",
        duration=0.05,
        output_files=[{"file_name": "fine.csv", "content": "a"}, {"file_name": bad_name, "content": "b"}],
    )
    with pytest.raises(AirflowException, match="has no name it could be saved under"):
        run(RunTaskOperator(task_id="run", task="export", poll_interval=0.05, output_files_path=f"file://{tmp_path}"))
    assert emulator.count("GET", "/files/tasks/.*") == 0
    assert list(tmp_path.iterdir()) == []


def test_the_output_folder_is_named_after_the_checked_id_not_the_answer(tmp_path: Path) -> None:
    from airflow_provider_browseruse._common import download_output_files

    class Hook:
        def get_output_file(self, task_id: str, file_id: str) -> dict[str, str]:
            return {"downloadUrl": "https://files.example/x"}

        def download(self, url: str, destination: Any, *, call: str) -> int:
            destination.write(b"data")
            return 4

    hostile_view = {"id": "../../escaped", "outputFiles": [{"id": SID, "fileName": "f.txt"}]}
    tid = "9b2f7c1e-4a5d-4e6f-8a7b-1c2d3e4f5a6b"
    paths = download_output_files(Hook(), logging.getLogger("t"), tid, hostile_view, f"file://{tmp_path}/out")  # type: ignore[arg-type]
    assert paths == [f"file://{tmp_path}/out/{tid}/f.txt"]
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": ""}, "task must be a non-empty prompt"),
        ({"task": "t", "session_id": "abc"}, "session_id must be a Browser Use id"),
        ({"task": "t", "structured_output": {"type": "objekt"}}, "structured_output is not a valid JSON Schema"),
        (
            {"task": "t", "structured_output": "a string"},
            "structured_output must be a JSON Schema dict or a pydantic model",
        ),
        ({"task": "t", "metadata": {str(n): "v" for n in range(6)}}, "metadata can hold at most 5 pairs"),
        ({"task": "t", "success_policy": "strict"}, "success_policy must be one of 'agent', 'judge', 'lenient'"),
        ({"task": "t", "success_policy": "judge"}, "needs judge=True"),
        ({"task": "t", "max_steps": 0}, "max_steps must be a positive whole number"),
        ({"task": "t", "timeout": -1}, "timeout must be a positive number"),
    ],
)
def test_run_task_bad_parameters_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunTaskOperator(task_id="run", **kwargs)


def test_unknown_llm_passes_through_for_the_api_to_decide(emulator: BrowserUseEmulator) -> None:
    with pytest.raises(AirflowFailException, match=r"HTTP 422: the API rejected the request: llm: Input should be"):
        run(RunTaskOperator(task_id="run", task="t", llm="my-new-model", poll_interval=0.05))
    assert emulator.count("POST", "/tasks") == 1


# --- StopTaskOperator and the link ------------------------------------------------------------


def test_stop_task_operator(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("forever", duration=60)
    created = emulator.state.create_task({"task": "forever"})
    ctx = task_context()
    result = StopTaskOperator(task_id="stop", browser_use_task_id=created["id"], stop_session=True).execute(ctx)
    assert result is not None and result["status"] == "stopped"
    assert ctx["ti"].xcom["session_id"] == created["sessionId"]
    assert emulator.active_session_count() == 0
    unknown = "9b2f7c1e-4a5d-4e6f-8a7b-1c2d3e4f5a6b"
    with pytest.raises(AirflowFailException, match="Task not found"):
        StopTaskOperator(task_id="stop", browser_use_task_id=unknown).execute(task_context())
    assert (
        StopTaskOperator(task_id="stop", browser_use_task_id=unknown, missing_ok=True).execute(task_context()) is None
    )


def test_session_link_reads_the_pushed_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time.xcom import XCom

    seen: dict[str, Any] = {}

    def get_value(*, ti_key: Any, key: str) -> str:
        seen.update(ti_key=ti_key, key=key)
        return "https://cloud.browser-use.com/sessions/abc"

    monkeypatch.setattr(XCom, "get_value", get_value)
    link = BrowserUseSessionLink()
    assert link.name == "Browser Use session"
    assert (
        link.get_link(StopSessionOperator(task_id="s", session_id=SID), ti_key="key")
        == "https://cloud.browser-use.com/sessions/abc"
    )  # type: ignore[arg-type]
    assert seen == {"ti_key": "key", "key": "browser_use_session_url"}


def test_execution_timeout_during_the_wait_stops_the_remote_task(
    emulator: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        from airflow.sdk.exceptions import AirflowTaskTimeout
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import AirflowTaskTimeout  # type: ignore[no-redef]

    emulator.state.scenario = Scenario().add("forever", duration=60)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # Airflow raises AirflowTaskTimeout inside execute via SIGALRM
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise AirflowTaskTimeout("Timeout, PID: 1")

    monkeypatch.setattr("airflow_provider_browseruse.operators.browser_use.time.sleep", sleep)
    ctx = task_context()
    with pytest.raises(AirflowTaskTimeout):
        run(RunTaskOperator(task_id="run", task="forever", poll_interval=0.05), ctx)
    assert emulator.state.get_task(ctx["ti"].xcom["browser_use_task_id"])["status"] == "stopped"
    assert emulator.active_session_count() == 0


def test_errors_carry_their_facts_and_survive_airflows_serialization() -> None:
    api = BrowserUseAPIError(
        "Browser Use get_session(x) failed: HTTP 404: gone", call="get_session(x)", http_status=404
    )
    assert (api.http_status, api.is_not_found, api.call) == (404, True, "get_session(x)")
    assert api.status_code == AirflowException.status_code  # Airflow's own attribute is left alone
    task = BrowserUseTaskError(
        "task t failed", {"id": "t", "status": "failed", "output": "captcha", "isSuccess": False}
    )
    assert (task.browser_use_task_id, task.status, task.output, task.is_success) == ("t", "failed", "captcha", False)
    for error in (api, task):  # Airflow rebuilds exceptions from serialize(): the message must do
        path, args, kwargs = error.serialize()
        assert path == f"airflow_provider_browseruse.exceptions.{type(error).__name__}"
        rebuilt = type(error)(*args, **kwargs)
        assert str(rebuilt) == str(error) and isinstance(rebuilt, AirflowException)


def test_a_session_given_with_session_settings_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match="give session_id or session_settings, not both"):
        RunTaskOperator(task_id="run", task="t", session_id=SID, session_settings={"proxyCountryCode": "de"})
    one_off = RunTaskOperator(task_id="run", task="t", session_settings={"proxyCountryCode": "de"})
    assert one_off.session_settings == {"proxyCountryCode": "de"}
