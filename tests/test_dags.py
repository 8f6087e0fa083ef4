"""The example DAGs, run whole with dag.test() on SQLite against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_browseruse import testing
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import ROOT

pytestmark = pytest.mark.dag

BOOKS = {"books": [{"title": "Sapiens", "price_gbp": 54.23}, {"title": "Dune", "price_gbp": 12.5}]}


@pytest.fixture(scope="module")
def dagbag() -> Iterator[Any]:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models import DagBag
    from airflow.utils.db import resetdb

    resetdb()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(ROOT / "example_dags"))
    assert bag.import_errors == {}
    yield bag


def run_dag(
    dagbag: Any, dag_id: str, conf: dict[str, Any] | None = None
) -> tuple[Any, dict[str, str], dict[tuple[str, str], Any]]:
    """Run an example DAG with the plugin's helper; XComs of unmapped tasks by (task_id, key)."""
    result = testing.run_dag(dagbag.get_dag(dag_id), conf=conf)
    xcom = {(task_id, key): value for (task_id, index, key), value in result.xcoms.items() if index == -1}
    return result.dag_run, result.task_states, xcom


def rendered_map_indexes(dag_run: Any, task_id: str) -> list[str | None]:
    """The labels the UI shows for a mapped task's instances, by map index, read afresh."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance.map_index, TaskInstance._rendered_map_index)
            .filter(TaskInstance.run_id == dag_run.run_id, TaskInstance.task_id == task_id)
            .order_by(TaskInstance.map_index)
            .all()
        )
    return [label for _, label in rows]


def test_scrape_pipeline(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("books.toscrape.com", output_json=BOOKS, duration=0.3, cost="0.12")
    dag_run, states, xcom = run_dag(dagbag, "browser_use_scrape")
    assert str(dag_run.state) == "success"
    assert set(states.values()) == {"success"}
    session_id = xcom[("create_session", "return_value")]
    assert xcom[("scrape_books", "session_id")] == session_id
    assert xcom[("scrape_books", "return_value")] == BOOKS
    assert xcom[("cheapest_book", "return_value")] == {"title": "Dune", "price_gbp": 12.5}
    assert xcom[("stop_session", "return_value")]["status"] == "stopped"
    assert "liveUrl" not in xcom[("stop_session", "return_value")]
    assert [o["cost"] for o in xcom[("stop_session", "task_outputs")]] == ["0.1200"]
    assert (
        xcom[("scrape_books", "_link_BrowserUseSessionLink")] == f"https://cloud.browser-use.com/sessions/{session_id}"
    )
    assert emulator.active_session_count() == 0


def test_teardown_stops_the_session_when_upstream_fails(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    dag_run, states, xcom = run_dag(dagbag, "browser_use_teardown", {"fail_work": True})
    assert str(dag_run.state) == "failed"  # the run still reports the upstream failure
    assert states == {"create_session": "success", "visit": "success", "work": "failed", "stop_session": "success"}
    assert xcom[("stop_session", "return_value")]["status"] == "stopped"
    assert emulator.count("PATCH", f"/sessions/{xcom[('create_session', 'return_value')]}") == 1
    assert emulator.active_session_count() == 0


def test_teardown_runs_when_the_agent_task_fails(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add(
        "example.com", status="failed", output="blocked by a captcha", duration=0.1
    )
    dag_run, states, _ = run_dag(dagbag, "browser_use_teardown")
    assert str(dag_run.state) == "failed"
    assert states["visit"] == "failed"
    assert states["work"] == "upstream_failed"
    assert states["stop_session"] == "success"
    assert emulator.active_session_count() == 0


def test_one_off_task_with_sensors(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("Louvre", output="9:00 to 18:00", duration=0.5)
    dag_run, states, xcom = run_dag(dagbag, "browser_use_one_off")
    assert str(dag_run.state) == "success", states
    task_id = xcom[("start_task", "return_value")]
    assert xcom[("wait_for_task", "return_value")] == "9:00 to 18:00"
    assert xcom[("wait_for_session", "task_outputs")][0]["id"] == task_id
    assert xcom[("report", "return_value")] == 1
    assert emulator.count("POST", "/tasks") == 1
    assert emulator.active_session_count() == 0


# --- every RunTaskOperator path, as a DAG run --------------------------------------------------

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize(
    ("script", "kwargs", "expected_state", "expected_output"),
    [
        pytest.param({"output": "fine"}, {}, "success", "fine", id="success"),
        pytest.param({"status": "failed"}, {}, "failed", None, id="failed"),
        pytest.param({"status": "stopped"}, {"success_policy": "lenient"}, "failed", None, id="stopped"),
        pytest.param({"is_success": False}, {}, "failed", None, id="agent-says-no"),
        pytest.param(
            {"is_success": False, "output": "meh"}, {"success_policy": "lenient"}, "success", "meh", id="lenient"
        ),
        pytest.param(
            {"judge_verdict": False}, {"success_policy": "judge", "judge": True}, "failed", None, id="judge-no"
        ),
        pytest.param(
            {"judge_verdict": True, "output": "ok"},
            {"success_policy": "judge", "judge": True},
            "success",
            "ok",
            id="judge-yes",
        ),
        pytest.param({"output_json": {"n": 3}}, {"structured_output": SCHEMA}, "success", {"n": 3}, id="structured"),
        pytest.param({"output": '{"n": "three"}'}, {"structured_output": SCHEMA}, "failed", None, id="structured-bad"),
        pytest.param({"duration": 60}, {"timeout": 0.5}, "failed", None, id="timeout"),
    ],
)
def test_run_task_paths_as_dag_runs(
    dagbag: Any, emulator: BrowserUseEmulator, script: dict[str, Any], kwargs: dict[str, Any],
    expected_state: str, expected_output: Any,
) -> None:  # fmt: skip
    from airflow.sdk import DAG

    from airflow_provider_browseruse.operators.browser_use import RunTaskOperator

    emulator.state.scenario = Scenario().add("agent job", **{"duration": 0.2, **script})
    with DAG(dag_id="run_task_path", schedule=None, default_args={"retries": 0}) as dag:
        RunTaskOperator(task_id="run", task="an agent job", poll_interval=0.1, **kwargs)
    result = testing.run_dag(dag)  # a DAG built in the test: run_dag serializes it first
    assert result.state == ("success" if expected_state == "success" else "failed")
    assert result.task_states == {"run": expected_state}
    assert result.xcoms.get(("run", -1, "return_value")) == expected_output
    task_id = result.xcom("run", "browser_use_task_id")
    final = emulator.state.get_task(task_id)["status"]
    assert final == ("stopped" if "timeout" in kwargs else script.get("status", "finished"))
    assert emulator.count("POST", "/tasks") == 1
    assert emulator.active_session_count() == 0  # nothing left billing, whatever the path


def test_deferrable_dag(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = (
        Scenario()
        .add("news.ycombinator.com", output="Three sentences.", duration=3)
        .add("Paris", output="Sunny", duration=3)
    )
    dag_run, states, xcom = run_dag(dagbag, "browser_use_deferrable")
    assert str(dag_run.state) == "success", states
    assert set(states.values()) == {"success"}
    assert xcom[("summarise", "return_value")] == "Three sentences."
    assert xcom[("wait_one_off", "return_value")] == "Sunny"
    assert xcom[("wait_one_off_session", "return_value")]["status"] == "stopped"
    assert emulator.count("POST", "/tasks") == 2
    # One full fetch per task after the deferred waits, plus one: the operator's trigger fetches its
    # task to end it in the triggerer, and dag.test() still resumes a worker, which fetches it again.
    assert emulator.count("GET", r"/tasks/[^/]+") == 3
    assert emulator.active_session_count() == 0


def test_fan_out_in_one_session(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    """dag.test() runs the mapped instances one after another; tests/test_scheduler.py runs them at once."""
    emulator.state.scenario = Scenario().add("example.com/page", duration=0.2, output="A title")
    dag_run, states, xcom = run_dag(dagbag, "browser_use_fan_out")
    assert str(dag_run.state) == "success", states
    assert xcom[("report", "return_value")] == 6
    session_id = xcom[("create_session", "return_value")]
    tasks = emulator.state.get_session(session_id)["tasks"]
    assert [t["status"] for t in tasks] == ["finished"] * 6
    labels = rendered_map_indexes(dag_run, "read_title")
    assert labels == [f"Open https://example.com/page/{n} and return the page title." for n in range(1, 7)]
    assert emulator.active_session_count() == 0


def test_taskflow_decorator_maps_over_urls_into_a_summary(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = (
        Scenario()
        .add("travel_2", output_json={"category": "Travel", "books": 11, "cheapest_gbp": 23.21}, duration=0.2)
        .add("mystery_3", output_json={"category": "Mystery", "books": 32, "cheapest_gbp": 9.5}, duration=0.2)
        .add("poetry_23", output_json={"category": "Poetry", "books": 19, "cheapest_gbp": 14.0}, duration=0.2)
    )
    dag_run, states, xcom = run_dag(dagbag, "browser_use_taskflow")
    assert str(dag_run.state) == "success", states
    assert states == {
        "read_shelf[0]": "success",
        "read_shelf[1]": "success",
        "read_shelf[2]": "success",
        "summary": "success",
    }
    # Each mapped instance is labelled by its prompt in the UI, cut to 80 characters.
    labels = rendered_map_indexes(dag_run, "read_shelf")
    assert labels[0].startswith("Open https://books.toscrape.com/catalogue/category/books/travel_2/")
    assert all(len(label) == 80 and label.endswith("…") for label in labels), labels
    assert xcom[("summary", "return_value")] == {"books": 62, "cheapest_category": "Mystery"}
    prompts = sorted(task.prompt for task in emulator.state.tasks.values())
    assert [prompt.split("/")[6] for prompt in prompts] == ["mystery_3", "poetry_23", "travel_2"]
    assert emulator.active_session_count() == 0


# --- run_dag's own rules -----------------------------------------------------------------------


def test_run_dag_refuses_what_is_not_a_dag(tmp_path: Any) -> None:
    with pytest.raises(
        ValueError, match=r"dag must be a DAG object or the path of a DAG file; .*missing.py is not a file"
    ):
        testing.run_dag(tmp_path / "missing.py")
    with pytest.raises(ValueError, match="dag must be a DAG object or the path of a DAG file, got 42"):
        testing.run_dag(42)
    broken = tmp_path / "broken.py"
    broken.write_text("from airflow.sdk import DAG\nDAG(dag_id='x', schedule=None\n")
    with pytest.raises(ValueError, match=r"(?s)broken.py does not import:\n.*SyntaxError: '\(' was never closed"):
        testing.run_dag(broken)


def test_run_dag_asks_which_dag_of_a_file_with_several(tmp_path: Any) -> None:
    two = tmp_path / "two.py"
    two.write_text(
        "from airflow.sdk import DAG\na = DAG(dag_id='first', schedule=None)\nb = DAG(dag_id='second', schedule=None)\n"
    )
    with pytest.raises(ValueError, match="give dag_id, one of: first, second"):
        testing.run_dag(two)
    with pytest.raises(ValueError, match="dag_id='third' is not among: first, second"):
        testing.run_dag(two, dag_id="third")


def test_dag_run_result_reads_xcoms_of_plain_and_mapped_tasks() -> None:
    xcoms = {("plain", -1, "return_value"): 1, ("mapped", 1, "return_value"): "b", ("mapped", 0, "return_value"): "a"}
    xcoms[("plain", -1, "session_id")] = "s"
    result = testing.DagRunResult(state="success", task_states={}, xcoms=xcoms, dag_run=None)
    assert result.xcom("plain") == 1
    assert result.xcom("mapped") == ["a", "b"]
    assert result.xcom("mapped", map_index=1) == "b"
    with pytest.raises(KeyError, match="plain pushed no XCom 'output_files' \\(it pushed: return_value, session_id\\)"):
        result.xcom("plain", "output_files")
    with pytest.raises(KeyError, match="ghost pushed no XCom 'return_value' \\(it pushed: nothing\\)"):
        result.xcom("ghost")


def test_sweeper_stops_a_forgotten_session(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    forgotten = emulator.state.create_session({"keepAlive": True})["id"]
    emulator.state.create_task({"task": "job", "sessionId": forgotten, "metadata": {"airflow_dag_id": "scrape"}})
    emulator.state.sessions[forgotten].created -= 7200
    for task in emulator.state.tasks.values():
        task.created -= 7200  # it ended two hours ago
    watched = emulator.state.create_session({"keepAlive": True})["id"]  # not the provider's: left alone
    dag_run, states, xcom = run_dag(dagbag, "browser_use_sweeper")
    assert str(dag_run.state) == "success", states
    [entry] = xcom[("stop_forgotten_sessions", "return_value")]
    assert entry["session_id"] == forgotten and entry["reason"].startswith("idle for")
    assert emulator.state.get_session(forgotten)["status"] == "stopped"
    assert emulator.state.get_session(watched)["status"] == "active"
    emulator.state.stop_session(watched)


def test_v4_pipeline_with_an_input_file_a_follow_up_and_a_teardown(dagbag: Any, emulator: BrowserUseEmulator) -> None:
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    emulator.state.scenario = (
        Scenario()
        .add("books.toscrape.com", output_json=BOOKS, duration=0.3, cost="0.12")
        .add("which is the cheapest", output="Dune", duration=0.1, cost="0.01")
    )
    dag_run, states, xcom = run_dag(dagbag, "browser_use_v4_pipeline")
    assert str(dag_run.state) == "success"
    assert states == {"price_check": "success", "cheapest": "success", "report": "success", "end_session": "success"}
    session_id = xcom[("price_check", "session_id")]
    assert xcom[("cheapest", "session_id")] == session_id  # the follow-up continued the conversation
    assert xcom[("price_check", "return_value")] == BOOKS
    assert xcom[("report", "return_value")] == {"priced": 2, "cheapest": "Dune"}
    attachments = BrowserUseHook().get_run_attachments(xcom[("price_check", "run_id")])
    assert [(a["name"], a["status"]) for a in attachments] == [("wanted_books.csv", "uploaded")]
    assert len(xcom[("end_session", "return_value")]["stopped_browsers"]) == 1  # the kept-alive browser
    assert float(xcom[("end_session", "session_cost")]["totalCostUsd"]) >= 0.13
    assert emulator.active_run_count() == 0 and emulator.active_browser_count() == 0
