"""The provider under the CeleryExecutor on PostgreSQL and Redis, with two workers, a triggerer
and the faults a cluster has: a worker killed mid-task, a triggerer restarted mid-wait, a task a
user marks failed through the REST API. The emulator plays the Browser Use API on loopback."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from cryptography.fernet import Fernet

from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from deploy.cluster import HEARTBEAT_TIMEOUT, Cluster
from deploy.conftest import API_KEY, CAP, SECRET, Rest, Scoreboard

BOOKS = {"books": [{"title": "Sapiens", "price_gbp": 54.23}, {"title": "Dune", "price_gbp": 12.5}]}
EXAMPLES = (
    "browser_use_scrape",
    "browser_use_teardown",
    "browser_use_one_off",
    "browser_use_deferrable",
    "browser_use_fan_out",
    "browser_use_login",
    "browser_use_taskflow",
    "browser_use_sweeper",
    "browser_use_v4_pipeline",
)


def run_state(cluster: Cluster, dag_id: str, run_id: str) -> str:
    rows = cluster.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id)
    return str(rows[0][0]) if rows else ""


def wait_for_runs(
    cluster: Cluster, dag_ids: tuple[str, ...] | list[str], run_id: str, timeout: float
) -> dict[str, str]:
    ended = ("success", "failed")
    cluster.wait_for(
        f"{len(dag_ids)} runs to end",
        lambda: all(run_state(cluster, dag_id, run_id) in ended for dag_id in dag_ids),
        timeout=timeout,
    )
    return {dag_id: run_state(cluster, dag_id, run_id) for dag_id in dag_ids}


def task_states(cluster: Cluster, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
    rows = cluster.query(
        "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?", dag_id, run_id
    )
    return {(task_id, index): str(state) for task_id, index, state in rows}


def xcom(cluster: Cluster, dag_id: str, run_id: str, task_id: str, key: str = "return_value", index: int = -1) -> Any:
    rows = cluster.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ? AND map_index = ?",
        dag_id,
        run_id,
        task_id,
        key,
        index,
    )
    return rows[0][0] if rows else None  # a JSON column: psycopg2 hands back the value itself


def no_duplicates(emulator: BrowserUseEmulator, since: float) -> Counter[str]:
    """Remote work created since ``since``, by prompt: every count must be 1."""
    prompts = Counter(t.prompt for t in emulator.state.tasks.values() if t.created >= since)
    prompts.update(r.prompt for r in emulator.state.v4.runs.values() if r.created >= since)
    return prompts


def wait_until_idle(cluster: Cluster, emulator: BrowserUseEmulator) -> None:
    cluster.wait_for(
        "no session, run or browser left",
        lambda: emulator.active_session_count() + emulator.active_run_count() + emulator.active_browser_count() == 0,
        timeout=60,
    )


def test_fan_out_of_40_through_a_pool_sized_to_the_cap(
    cluster: Cluster, rest: Rest, emulator: BrowserUseEmulator, scoreboard: Scoreboard
) -> None:
    emulator.state.max_concurrent_sessions = CAP
    emulator.state.scenario = Scenario().add("fan-out job", duration=1.0, start_delay=0, output="done")
    since = time.time()
    # The cluster fixture made the pool from the account's concurrentSessionLimit (the README's command).
    pool = rest.call("GET", "/pools/browser_use")
    assert (pool["slots"], pool["include_deferred"]) == (CAP, True)
    rest.trigger("deploy_fan_out", "fan_out")
    assert wait_for_runs(cluster, ["deploy_fan_out"], "fan_out", timeout=600) == {"deploy_fan_out": "success"}
    states = task_states(cluster, "deploy_fan_out", "fan_out")
    scoreboard.tasks = len(states)
    assert Counter(states.values()) == {"success": 40}
    answers = [xcom(cluster, "deploy_fan_out", "fan_out", "run", index=n) for n in range(40)]
    assert answers == ["done"] * 40
    prompts = no_duplicates(emulator, since)
    assert len(prompts) == 40 and set(prompts.values()) == {1}  # every prompt ran once: no duplicate
    assert emulator.state.peak_active_sessions == CAP  # the cap was used, never passed
    assert emulator.state.refused_at_cap == 0  # the pool kept Airflow under it: no 429
    wait_until_idle(cluster, emulator)


def test_example_dags_and_both_pipelines(
    cluster: Cluster, rest: Rest, emulator: BrowserUseEmulator, scoreboard: Scoreboard
) -> None:
    shelves = {
        "travel_2": {"category": "Travel", "books": 11, "cheapest_gbp": 23.21},
        "mystery_3": {"category": "Mystery", "books": 32, "cheapest_gbp": 9.5},
        "poetry_23": {"category": "Poetry", "books": 19, "cheapest_gbp": 14.0},
    }
    scenario = Scenario()
    for shelf, answer in shelves.items():
        scenario.add(shelf, output_json=answer, duration=1)
    (
        scenario.add("books.toscrape.com", output_json=BOOKS, duration=2, cost="0.12")
        .add("which is the cheapest", output="Dune", duration=1)
        .add("example.com/page", output="A title", duration=1)
        .add("shop.example.com", output="Order 1234: a teapot", duration=2)
        .add("example.com", output="Example Domain", duration=1)
        .add("news.ycombinator.com", output="Three sentences.", duration=5)
        .add("Paris", output="Sunny", duration=5)
        .add("Louvre", output="9:00 to 18:00", duration=2)
    )
    emulator.state.scenario = scenario
    since = time.time()
    for dag_id in EXAMPLES:
        rest.trigger(dag_id, "examples")
    ended = wait_for_runs(cluster, EXAMPLES, "examples", timeout=420)
    states = {dag_id: task_states(cluster, dag_id, "examples") for dag_id in EXAMPLES}
    scoreboard.tasks = sum(len(s) for s in states.values())
    assert set(ended.values()) == {"success"}, {d: s for d, s in states.items() if ended[d] != "success"}

    def value(dag_id: str, task_id: str, key: str = "return_value") -> Any:
        return xcom(cluster, dag_id, "examples", task_id, key)

    # v2 pipeline: structured output handed downstream, the session stopped, its link in XCom.
    session_id = value("browser_use_scrape", "create_session")
    assert value("browser_use_scrape", "scrape_books") == BOOKS
    assert value("browser_use_scrape", "cheapest_book") == {"title": "Dune", "price_gbp": 12.5}
    assert value("browser_use_scrape", "stop_session")["status"] == "stopped"
    assert value("browser_use_scrape", "scrape_books", "browser_use_session_url") == (
        f"https://cloud.browser-use.com/sessions/{session_id}"
    )
    # v4 pipeline: an uploaded file, a follow-up in the same conversation, a teardown.
    assert value("browser_use_v4_pipeline", "report") == {"priced": 2, "cheapest": "Dune"}
    assert value("browser_use_v4_pipeline", "cheapest", "session_id") == value(
        "browser_use_v4_pipeline", "price_check", "session_id"
    )
    assert len(value("browser_use_v4_pipeline", "end_session")["stopped_browsers"]) == 1
    # The rest of the examples, each by what it hands on.
    assert value("browser_use_teardown", "stop_session")["status"] == "stopped"
    assert value("browser_use_one_off", "report") == 1
    assert "Three sentences." in json.dumps(value("browser_use_deferrable", "summarise"))
    assert value("browser_use_fan_out", "report") == 6
    assert value("browser_use_taskflow", "summary") == {"books": 62, "cheapest_category": "Mystery"}
    assert value("browser_use_sweeper", "stop_forgotten_sessions") == []
    [login] = [t for t in emulator.state.tasks.values() if "shop.example.com" in t.prompt and t.created >= since]
    assert login.secrets == {"password": SECRET}  # the secret reached the API (and, see test_secrets, nothing else)
    prompts = no_duplicates(emulator, since)
    assert max(prompts.values()) == 1, prompts
    wait_until_idle(cluster, emulator)


def test_a_worker_killed_mid_task_is_adopted_by_the_retry_and_the_teardown_stops_the_session(
    cluster: Cluster, rest: Rest, emulator: BrowserUseEmulator, scoreboard: Scoreboard
) -> None:
    emulator.state.scenario = Scenario().add("worker-kill job", duration=HEARTBEAT_TIMEOUT + 40, output="the report")
    dag_id, run_id = "deploy_worker_killed", "killed_worker"
    since = time.time()
    rest.trigger(dag_id, run_id)
    running = "SELECT pid FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = 'work' AND state = 'running'"
    cluster.wait_for("the work to run", lambda: bool(cluster.query(running, dag_id, run_id)), timeout=180)
    cluster.wait_for(
        "the remote task to start", lambda: xcom(cluster, dag_id, run_id, "work", "browser_use_task_id") is not None
    )
    remote_task = xcom(cluster, dag_id, run_id, "work", "browser_use_task_id")
    [(pid,)] = cluster.query(running, dag_id, run_id)
    worker = cluster.component_of(int(pid))
    assert worker is not None and worker.startswith("worker"), f"task process {pid} runs under {worker}"
    killed = cluster.kill_tree(worker)  # the host is gone: worker, its pool and the task's process
    assert int(pid) in killed

    assert wait_for_runs(cluster, [dag_id], run_id, timeout=300) == {dag_id: "success"}
    cluster.start_worker(worker)  # the host comes back for the scenarios after this one
    states = task_states(cluster, dag_id, run_id)
    scoreboard.tasks = len(states)
    assert set(states.values()) == {"success"}
    [(tries,)] = cluster.query(
        "SELECT try_number FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = 'work'", dag_id, run_id
    )
    assert tries == 2  # the first try died with its worker; the second adopted the remote task
    assert xcom(cluster, dag_id, run_id, "work") == "the report"
    assert xcom(cluster, dag_id, run_id, "work", "browser_use_task_id") == remote_task
    assert no_duplicates(emulator, since) == {"worker-kill job: read the long report": 1}
    assert emulator.count("PATCH", f"/tasks/{remote_task}") == 0  # the kill stopped nothing: the retry used it
    session_id = xcom(cluster, dag_id, run_id, "create_session")
    assert emulator.state.get_session(session_id)["status"] == "stopped"  # the teardown stopped it
    wait_until_idle(cluster, emulator)


def test_deferred_waits_survive_a_triggerer_restart_and_a_task_failed_through_the_rest_api_stops_its_work(
    cluster: Cluster, rest: Rest, emulator: BrowserUseEmulator, scoreboard: Scoreboard
) -> None:
    emulator.state.scenario = Scenario().add("survivor", duration=75, output="survived").add("victim", duration=600)
    dag_id, run_id = "deploy_deferred", "deferred"
    since = time.time()
    rest.trigger(dag_id, run_id)
    tasks = ("v2_survivor", "v4_survivor", "v2_victim", "v4_victim")

    def deferred() -> set[str]:
        return {task for (task, _), state in task_states(cluster, dag_id, run_id).items() if state == "deferred"}

    cluster.wait_for("all four waits to be deferred", lambda: deferred() == set(tasks), timeout=240)
    v2 = {name: xcom(cluster, dag_id, run_id, f"v2_{name}", "browser_use_task_id") for name in ("survivor", "victim")}
    v4 = {name: xcom(cluster, dag_id, run_id, f"v4_{name}", "run_id") for name in ("survivor", "victim")}
    # The trigger rows (gone once the waits end), read as Airflow reads them: plain JSON, or
    # Fernet-encrypted. They name the connection and hold neither the key nor the secret.
    fernet = Fernet(cluster.env["AIRFLOW__CORE__FERNET_KEY"].encode())
    triggers = {
        classpath.rsplit(".", 1)[-1]: kwargs if kwargs.startswith("{") else fernet.decrypt(kwargs.encode()).decode()
        for classpath, kwargs in cluster.query("SELECT classpath, kwargs FROM trigger")
    }
    assert set(triggers) >= {"TaskStatusTrigger", "AgentRunTrigger"}
    assert all("browser_use_default" in kwargs for kwargs in triggers.values())
    assert not [kwargs for kwargs in triggers.values() if API_KEY in kwargs or SECRET in kwargs]

    def polls() -> tuple[int, int]:
        return (
            emulator.count("GET", f"/tasks/{v2['survivor']}/status"),
            emulator.count("GET", f"/v4/runs/{v4['survivor']}/status"),
        )

    cluster.stop("triggerer")  # mid-wait: nothing may be stopped, nothing started again
    assert emulator.state.get_task(v2["survivor"])["status"] in ("created", "started")
    assert emulator.state.v4.get_run(v4["survivor"])["status"] in ("queued", "dispatching", "running")
    before = polls()
    cluster.start_triggerer()
    cluster.wait_for(
        "the new triggerer to poll both survivors",
        lambda: all(now > then for now, then in zip(polls(), before, strict=True)),
        timeout=120,
    )
    for task in ("v2_victim", "v4_victim"):
        rest.call("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}", json={"new_state": "failed"})
    cluster.wait_for(
        "the victims' remote work to be stopped",
        lambda: (
            emulator.count("PATCH", f"/tasks/{v2['victim']}") == 1
            and emulator.count("POST", f"/v4/runs/{v4['victim']}/cancel") == 1
        ),
        timeout=90,
    )
    assert emulator.state.get_task(v2["victim"])["status"] == "stopped"
    assert emulator.state.v4.get_run(v4["victim"])["status"] == "cancelled"

    assert wait_for_runs(cluster, [dag_id], run_id, timeout=300) == {dag_id: "failed"}
    states = task_states(cluster, dag_id, run_id)
    scoreboard.tasks = len(states)
    assert states == {
        ("v2_survivor", -1): "success",
        ("v4_survivor", -1): "success",
        ("v2_victim", -1): "failed",
        ("v4_victim", -1): "failed",
    }
    assert xcom(cluster, dag_id, run_id, "v2_survivor") == "survived"
    assert xcom(cluster, dag_id, run_id, "v4_survivor") == "survived"
    assert emulator.count("PATCH", f"/tasks/{v2['survivor']}") == 0  # the restart stopped nothing
    assert emulator.count("POST", f"/v4/runs/{v4['survivor']}/cancel") == 0
    prompts = no_duplicates(emulator, since)
    assert len(prompts) == 4 and set(prompts.values()) == {1}, prompts  # the restart started nothing again
    wait_until_idle(cluster, emulator)
