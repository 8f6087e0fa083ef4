"""A deferrable DAG under a real Airflow: api-server, scheduler, DAG processor and triggerer
(LocalExecutor, SQLite) against the emulator on loopback, with a triggerer restart mid-wait."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import ROOT
from tests.fan_out import fan_out_runs
from tests.local_airflow import Airflow, local_airflow

pytestmark = pytest.mark.scheduler

DAG_ID = "browser_use_deferrable"
LOGIN_DAG_ID = "browser_use_login"
FAN_OUT_DAG_ID = "browser_use_fan_out"
API_KEY = "bu_scheduler_test_key_1a2b3c4d5e"
SECRET = "correct-horse-battery-staple-7f3a"
MAPPED_DEFERRED_DAG_ID = "mapped_deferred"
#: Deferred instances of one mapped task: half end in the triggerer, half resume on a worker.
MAPPED_DEFERRED_DAG = """
from airflow.sdk import DAG, task
from airflow_provider_browseruse.operators import RunTaskOperator

with DAG("mapped_deferred", schedule=None, default_args={"retries": 0}):
    runs = {
        task_id: RunTaskOperator.partial(
            task_id=task_id, deferrable=True, poll_interval=1, end_from_trigger=end_from_trigger
        ).expand(task=[f"mapped {task_id} job {n}" for n in range(3)])
        for task_id, end_from_trigger in (("in_triggerer", True), ("on_worker", False))
    }

    @task
    def received(in_triggerer, on_worker):
        return {"in_triggerer": list(in_triggerer), "on_worker": list(on_worker)}

    received(runs["in_triggerer"].output, runs["on_worker"].output)
"""


@pytest.fixture
def airflow(tmp_path: Path, browser_use_emulator: BrowserUseEmulator) -> Iterator[Airflow]:
    browser_use_emulator.state.api_key = API_KEY
    dags = {
        f"{dag_id}.py": (ROOT / "example_dags" / f"{dag_id}.py").read_text()
        for dag_id in (DAG_ID, LOGIN_DAG_ID, FAN_OUT_DAG_ID)
    }
    dags[f"{MAPPED_DEFERRED_DAG_ID}.py"] = MAPPED_DEFERRED_DAG
    with local_airflow(
        tmp_path, dags, browser_use_emulator.base_url, API_KEY, {"AIRFLOW_VAR_SHOP_PASSWORD": SECRET}
    ) as instance:
        yield instance


def test_deferrable_dag_survives_a_triggerer_restart_and_a_kill_stops_the_remote_task(
    airflow: Airflow, browser_use_emulator: BrowserUseEmulator
) -> None:
    emulator = browser_use_emulator
    emulator.state.scenario = (
        Scenario()
        .add("news.ycombinator.com", output="Three sentences.", duration=25)
        .add("Paris", output="Sunny", duration=25)
    )
    emulator.state.scenario.add("shop.example.com", output="Order 1234: a teapot", duration=8)
    parsed = "SELECT count(*) FROM dag WHERE dag_id IN (?, ?)"
    airflow.wait_for("the DAGs to be parsed", lambda: airflow.query(parsed, DAG_ID, LOGIN_DAG_ID)[0][0] == 2)
    for dag_id in (DAG_ID, LOGIN_DAG_ID):
        airflow.cli("dags", "unpause", dag_id)
        airflow.cli("dags", "trigger", dag_id)

    def deferred(run_id: str = "%") -> set[str]:
        rows = airflow.query(
            "SELECT task_id FROM task_instance WHERE dag_id = ? AND run_id LIKE ? AND state = 'deferred'",
            DAG_ID,
            run_id,
        )
        return {row[0] for row in rows}

    airflow.wait_for("both waits to be deferred", lambda: {"summarise", "wait_one_off"} <= deferred())
    triggers = airflow.query("SELECT classpath, kwargs FROM trigger")
    assert {row[0].rsplit(".", 1)[-1] for row in triggers} >= {"TaskStatusTrigger"}
    assert all(API_KEY not in row[1] for row in triggers)  # kwargs hold the connection id, never the key

    airflow.stop("triggerer")  # mid-wait: the remote tasks must keep running
    time.sleep(2)
    airflow.start("triggerer", "triggerer")

    def run_state(run_id: str = "%") -> str:
        rows = airflow.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id LIKE ?", DAG_ID, run_id)
        return rows[0][0] if rows else ""

    airflow.wait_for("the DAG run to end", lambda: run_state() in ("success", "failed"), timeout=240)
    states = dict(airflow.query("SELECT task_id, state FROM task_instance WHERE dag_id = ?", DAG_ID))
    assert run_state() == "success", (states, airflow.logs("triggerer")[-3000:])
    assert set(states.values()) == {"success"}
    assert emulator.count("POST", "/tasks") == 3  # two for this DAG, one for the login DAG: no duplicate
    assert emulator.count("PATCH", r"/tasks/.+") == 0  # the restart stopped nothing
    # summarise ended in the triggerer: its task fetched once (by the trigger), its XComs pushed there.
    [(summarised,)] = airflow.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'summarise' AND key = 'browser_use_task_id'", DAG_ID
    )
    summarised = json.loads(summarised)
    assert emulator.count("GET", f"/tasks/{summarised}") == 1
    [(output,)] = airflow.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'summarise' AND key = 'return_value'", DAG_ID
    )
    assert "Three sentences." in output
    statuses = [t["status"] for t in emulator.state.list_tasks(session_id=None, status=None, after=None, before=None)]
    assert statuses == ["finished"] * 3
    assert emulator.active_session_count() == 0

    # A user marks a deferred RunTaskOperator failed: the trigger's on_kill (Airflow 3.3+) stops its remote task.
    emulator.state.scenario = (
        Scenario().add("news.ycombinator.com", duration=300).add("Paris", output="Sunny", duration=1)
    )
    airflow.cli("dags", "trigger", DAG_ID, "--run-id", "killed_run")
    airflow.wait_for("the second run's wait to be deferred", lambda: "summarise" in deferred("killed_run"))
    remote_task = json.loads(
        airflow.query(
            "SELECT value FROM xcom WHERE run_id = 'killed_run' AND task_id = 'summarise' AND key = 'browser_use_task_id'"
        )[0][0]
    )
    # The operator checks the status once before deferring; a second poll means the triggerer runs the trigger.
    airflow.wait_for("the trigger to poll", lambda: emulator.count("GET", f"/tasks/{remote_task}/status") >= 2)
    http = requests.Session()
    token = http.get(f"{airflow.api_url}/auth/token", timeout=30).json()["access_token"]
    http.headers["Authorization"] = f"Bearer {token}"
    marked = http.patch(
        f"{airflow.api_url}/api/v2/dags/{DAG_ID}/dagRuns/killed_run/taskInstances/summarise",
        json={"new_state": "failed"},
        timeout=30,
    )
    assert marked.status_code == 200, marked.text
    airflow.wait_for(
        "the trigger's on_kill to stop the remote task",
        lambda: emulator.count("PATCH", f"/tasks/{remote_task}") == 1,
        timeout=60,
    )
    assert emulator.state.get_task(remote_task)["status"] == "stopped"
    airflow.wait_for("the second run to end", lambda: run_state("killed_run") in ("success", "failed"), timeout=180)
    assert run_state("killed_run") == "failed"
    airflow.wait_for("every session to be stopped", lambda: emulator.active_session_count() == 0, timeout=60)

    # The secret-leak check: the key and the task secret reached the API, and nowhere else.
    login_state = airflow.query("SELECT state FROM dag_run WHERE dag_id = ?", LOGIN_DAG_ID)[0][0]
    assert login_state == "success", airflow.logs("scheduler")[-2000:]
    [login_task] = [t for t in emulator.state.tasks.values() if "shop.example.com" in t.prompt]
    assert login_task.secrets == {"password": SECRET}
    leaks = []
    for path in airflow.home.rglob("*"):
        if path.is_file() and path.suffix != ".db":
            text = path.read_text(errors="replace")
            leaks += [f"{path.relative_to(airflow.home)}: {word}" for word in (API_KEY, SECRET) if word in text]
    with sqlite3.connect(airflow.home / "airflow.db") as db:
        dump = "\n".join(db.iterdump())  # XCom, rendered fields, trigger rows, task instances: everything
    leaks += [f"metadata db: {word}" for word in (API_KEY, SECRET) if word in dump]
    files = sum(1 for p in airflow.home.rglob("*.log*") if p.is_file())
    assert files >= 10  # the search covered task, trigger and component logs
    assert "xcom" in dump and "rendered_task_instance_fields" in dump and "trigger" in dump
    assert leaks == []


def test_mapped_tasks_in_one_session_wait_for_it_under_a_real_scheduler(
    airflow: Airflow, browser_use_emulator: BrowserUseEmulator
) -> None:
    """Six mapped instances, one kept-alive session, a scheduler running four at once: the API
    refuses a second running task in a session, so the instances must take turns, not fail."""
    emulator = browser_use_emulator
    emulator.state.scenario = Scenario().add("example.com/page", output="A title", duration=2)
    parsed = "SELECT count(*) FROM dag WHERE dag_id = ?"
    airflow.wait_for("the DAG to be parsed", lambda: airflow.query(parsed, FAN_OUT_DAG_ID)[0][0] == 1)
    airflow.cli("dags", "unpause", FAN_OUT_DAG_ID)
    airflow.cli("dags", "trigger", FAN_OUT_DAG_ID)

    def run_state() -> str:
        rows = airflow.query("SELECT state FROM dag_run WHERE dag_id = ?", FAN_OUT_DAG_ID)
        return rows[0][0] if rows else ""

    airflow.wait_for("the fan-out run to end", lambda: run_state() in ("success", "failed"), timeout=300)
    states = airflow.query("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ?", FAN_OUT_DAG_ID)
    assert run_state() == "success", (states, airflow.logs("scheduler")[-3000:])
    assert sorted(row[1] for row in states if row[0] == "read_title") == list(range(6))
    assert {row[2] for row in states} == {"success"}
    [session] = emulator.state.sessions.values()
    tasks = emulator.state.get_session(session.id)["tasks"]
    assert len(tasks) == 6 and {t["status"] for t in tasks} == {"finished"}  # one each: no duplicate
    assert sorted(int(t.metadata["airflow_map_index"]) for t in emulator.state.tasks.values()) == list(range(6))
    busy = [r for r in emulator.requests("POST", "/tasks") if r.status == 400]
    assert busy, "the mapped instances never overlapped: this test proved nothing"
    task_logs = "".join(p.read_text(errors="replace") for p in (airflow.home / "logs").rglob("*.log"))
    assert "waiting for it to end before starting this one" in task_logs
    assert emulator.active_session_count() == 0


def test_mapped_deferred_instances_finish_in_the_triggerer_or_on_a_worker(
    airflow: Airflow, browser_use_emulator: BrowserUseEmulator
) -> None:
    """Each deferred mapped instance must come back to its own remote task, on either path."""
    emulator = browser_use_emulator
    # Long enough that the worker that deferred has been reported done before the task resumes:
    # a late executor event for it makes Airflow 3.3's scheduler fail the running resume (seen
    # here once with 3 s tasks: "finished with state success, but ... state attribute is running").
    emulator.state.scenario = Scenario().add("mapped", duration=10, output="A 20 answer")
    parsed = "SELECT count(*) FROM dag WHERE dag_id = ?"
    airflow.wait_for("the DAG to be parsed", lambda: airflow.query(parsed, MAPPED_DEFERRED_DAG_ID)[0][0] == 1)
    airflow.cli("dags", "unpause", MAPPED_DEFERRED_DAG_ID)
    airflow.cli("dags", "trigger", MAPPED_DEFERRED_DAG_ID)
    ended = "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')"
    airflow.wait_for("the run to end", lambda: bool(airflow.query(ended, MAPPED_DEFERRED_DAG_ID)), timeout=300)
    states = airflow.query(
        "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ?", MAPPED_DEFERRED_DAG_ID
    )
    assert airflow.query(ended, MAPPED_DEFERRED_DAG_ID) == [("success",)], states
    assert sorted((task_id, index) for task_id, index, _ in states if task_id != "received") == [
        (task_id, n) for task_id in ("in_triggerer", "on_worker") for n in range(3)
    ]
    # A downstream task receives the same values from both paths (the triggerer stores XComs itself).
    [(raw,)] = airflow.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'received' AND key = 'return_value'",
        MAPPED_DEFERRED_DAG_ID,
    )
    assert json.loads(raw) == {"in_triggerer": ["A 20 answer"] * 3, "on_worker": ["A 20 answer"] * 3}
    outputs = airflow.query(
        "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND key IN ('browser_use_task_id', 'return_value')",
        MAPPED_DEFERRED_DAG_ID,
    )
    ids = {
        (task_id, index): json.loads(value) for task_id, index, key, value in outputs if key == "browser_use_task_id"
    }
    for (task_id, index), remote_id in ids.items():
        remote = emulator.state.tasks[remote_id]
        assert remote.prompt == f"mapped {task_id} job {index}"  # each instance kept its own task
        assert emulator.count("GET", f"/tasks/{remote_id}") == 1  # fetched once: by the trigger, or by a worker
    returned = {(task_id, index) for task_id, index, key, _ in outputs if key == "return_value" and index >= 0}
    assert returned == set(ids) and len(ids) == 6
    assert emulator.count("POST", "/tasks") == 6
    assert emulator.active_session_count() == 0


def test_a_wide_fan_out_never_fails_on_the_session_cap(
    tmp_path: Path, browser_use_emulator: BrowserUseEmulator
) -> None:
    """40 mapped RunTaskOperators, a cap of 3 sessions, parallelism 8: with a pool sized to the cap
    (one command, from the account's concurrentSessionLimit), and without one (429s waited out)."""
    figures = fan_out_runs(tmp_path, browser_use_emulator, tasks=40, cap=3, duration=1.0, key=API_KEY)
    print(json.dumps(figures, indent=1))  # wall times and 429s, for the log
    assert figures["pool_slots"] == 3
    for name in ("pooled", "unpooled"):
        run = figures[name]
        assert run["run_state"] == "success", figures
        assert run["task_states"] == {"success": 40}, figures
        assert run["peak_active_sessions"] == 3  # the cap was used, and never passed
        assert run["tasks_created"] == 40 and run["most_tasks_for_one_prompt"] == 1  # none twice
        assert run["active_sessions_after"] == 0
    assert figures["unpooled"]["answered_429"] > 0  # without the pool the cap was hit, and waited out


V4_DAG_ID = "browser_use_v4_pipeline"
V4_FAULTS_DAG_ID = "v4_under_a_scheduler"
#: A v4 run whose first try gives up while the run goes on (the retry must adopt it, through
#: Airflow 3.3's task state store), and a deferred v4 run a user marks failed.
V4_FAULTS_DAG = """
from datetime import timedelta
from airflow.sdk import DAG
from airflow_provider_browseruse.operators import RunAgentOperator

with DAG("v4_under_a_scheduler", schedule=None, default_args={"retries": 0}):
    RunAgentOperator(
        task_id="adopted", task="v4 adopt me", poll_interval=0.5, timeout=4, stop_on_give_up=False,
        retries=1, retry_delay=timedelta(seconds=0),
    )
    RunAgentOperator(task_id="killed", task="v4 kill me", deferrable=True, poll_interval=1)
    RunAgentOperator.partial(task_id="mapped", deferrable=True, poll_interval=1).expand(
        task=[f"v4 mapped job {n}" for n in range(4)]
    )
"""


@pytest.fixture
def v4_airflow(tmp_path: Path, browser_use_emulator: BrowserUseEmulator) -> Iterator[Airflow]:
    browser_use_emulator.state.api_key = API_KEY
    dags = {
        f"{V4_DAG_ID}.py": (ROOT / "example_dags" / f"{V4_DAG_ID}.py").read_text(),
        f"{V4_FAULTS_DAG_ID}.py": V4_FAULTS_DAG,
        "data/wanted_books.csv": "title\nDune\n",
    }
    with local_airflow(tmp_path, dags, browser_use_emulator.base_url, API_KEY) as instance:
        yield instance


def test_v4_under_a_real_scheduler_adopts_on_retry_stops_on_kill_and_leaks_nothing(
    v4_airflow: Airflow, browser_use_emulator: BrowserUseEmulator
) -> None:
    airflow, emulator = v4_airflow, browser_use_emulator
    emulator.state.scenario = (
        Scenario()
        .add("books.toscrape.com", output_json={"books": [{"title": "Dune", "price_gbp": 12.5}]}, duration=2)
        .add("which is the cheapest", output="Dune", duration=1)
        .add("v4 adopt me", output="adopted", duration=8)
        .add("v4 kill me", duration=300)
    )
    parsed = "SELECT count(*) FROM dag WHERE dag_id IN (?, ?)"
    airflow.wait_for("the DAGs to be parsed", lambda: airflow.query(parsed, V4_DAG_ID, V4_FAULTS_DAG_ID)[0][0] == 2)
    for dag_id in (V4_DAG_ID, V4_FAULTS_DAG_ID):
        airflow.cli("dags", "unpause", dag_id)
        airflow.cli("dags", "trigger", dag_id, "--run-id", "v4")

    def ti_state(dag_id: str, task_id: str) -> str:
        rows = airflow.query(
            "SELECT state FROM task_instance WHERE dag_id = ? AND task_id = ? AND run_id = 'v4'", dag_id, task_id
        )
        return (rows[0][0] or "") if rows else ""

    def xcom(dag_id: str, task_id: str, key: str) -> object:
        rows = airflow.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = ? AND run_id = 'v4'",
            dag_id,
            task_id,
            key,
        )
        return json.loads(rows[0][0]) if rows else None

    # A user marks the deferred run's task failed: the trigger's on_kill cancels the run and stops its browser.
    airflow.wait_for("the v4 wait to be deferred", lambda: ti_state(V4_FAULTS_DAG_ID, "killed") == "deferred")
    killed_run = str(xcom(V4_FAULTS_DAG_ID, "killed", "run_id"))
    airflow.wait_for("the trigger to poll", lambda: emulator.count("GET", f"/v4/runs/{killed_run}/status") >= 2)
    http = requests.Session()
    http.headers["Authorization"] = (
        f"Bearer {http.get(f'{airflow.api_url}/auth/token', timeout=30).json()['access_token']}"
    )
    marked = http.patch(
        f"{airflow.api_url}/api/v2/dags/{V4_FAULTS_DAG_ID}/dagRuns/v4/taskInstances/killed",
        json={"new_state": "failed"},
        timeout=30,
    )
    assert marked.status_code == 200, marked.text
    airflow.wait_for(
        "the trigger's on_kill to cancel the run", lambda: emulator.count("POST", f"/v4/runs/{killed_run}/cancel") == 1
    )
    assert emulator.state.v4.get_run(killed_run)["status"] == "cancelled"

    def ended(dag_id: str) -> str:
        rows = airflow.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = 'v4'", dag_id)
        return rows[0][0] if rows and rows[0][0] in ("success", "failed") else ""

    for dag_id in (V4_DAG_ID, V4_FAULTS_DAG_ID):
        airflow.wait_for(f"{dag_id} to end", lambda dag_id=dag_id: ended(dag_id) != "", timeout=240)
    states = dict(airflow.query("SELECT task_id, state FROM task_instance WHERE dag_id = ?", V4_DAG_ID))
    assert ended(V4_DAG_ID) == "success", (states, airflow.logs("scheduler")[-2000:])
    assert xcom(V4_DAG_ID, "report", "return_value") == {"priced": 1, "cheapest": "Dune"}
    # The retry found the run its first try left going (task state store) and used it: one run, two tries.
    [(tries,)] = airflow.query(
        "SELECT try_number FROM task_instance WHERE dag_id = ? AND task_id = 'adopted'", V4_FAULTS_DAG_ID
    )
    assert (tries, ti_state(V4_FAULTS_DAG_ID, "adopted")) == (2, "success")
    adopted = [run for run in emulator.state.v4.runs.values() if run.prompt == "v4 adopt me"]
    assert len(adopted) == 1 and xcom(V4_FAULTS_DAG_ID, "adopted", "return_value") == "adopted"
    # Mapped instances ran at once, each on its own run, each handed its own answer.
    mapped = airflow.query(
        "SELECT map_index, state FROM task_instance WHERE dag_id = ? AND task_id = 'mapped' ORDER BY map_index",
        V4_FAULTS_DAG_ID,
    )
    assert mapped == [(n, "success") for n in range(4)]
    answers = dict(
        airflow.query(
            "SELECT map_index, value FROM xcom WHERE dag_id = ? AND task_id = 'mapped' AND key = 'return_value'",
            V4_FAULTS_DAG_ID,
        )
    )
    assert all(f"v4 mapped job {n}" in answers[n] for n in range(4)), answers
    assert len([run for run in emulator.state.v4.runs.values() if run.prompt.startswith("v4 mapped job")]) == 4
    # price check, follow-up, adopted, killed, 4 mapped: no duplicate
    assert emulator.count("POST", "/v4/runs") == 8
    airflow.wait_for(
        "no run and no browser left",
        lambda: emulator.active_run_count() == 0 and emulator.active_browser_count() == 0,
        timeout=60,
    )
    leaks = [
        f"{path.relative_to(airflow.home)}"
        for path in airflow.home.rglob("*")
        if path.is_file() and path.suffix != ".db" and API_KEY in path.read_text(errors="replace")
    ]
    with sqlite3.connect(airflow.home / "airflow.db") as db:
        dump = "\n".join(db.iterdump())
    assert leaks == [] and API_KEY not in dump
    assert "token=" not in dump  # no live-view, upload or download URL in XCom or anywhere else
