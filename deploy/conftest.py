"""One cluster for the whole run (starting it is the slow part), the emulator in this process, and
a summary line per scenario in the CI log."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_browseruse.testing import BrowserUseEmulator
from deploy.cluster import Cluster, running_cluster

ROOT = Path(__file__).resolve().parent.parent
#: Recognisable strings: neither may appear in any log or in the metadata database.
API_KEY = "bu_deploy_key_5d1c0ffee9b8a7"
SECRET = "deploy-task-secret-horse-battery-91"
#: The account's cap on concurrent sessions in the fan-out.
CAP = 3

SUMMARIES: list[str] = []


def _interrupted(signum: int, frame: Any) -> None:
    # A CI timeout sends SIGTERM: unwind through the fixtures, which stop every server.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _interrupted)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARIES:
        terminalreporter.section("deploy scenarios")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def emulator() -> Iterator[BrowserUseEmulator]:
    server = BrowserUseEmulator(API_KEY, retry_after=1).start()
    try:
        yield server
    finally:
        server.stop()


def _dag_files() -> dict[str, str]:
    files = {path.name: path.read_text() for path in (ROOT / "example_dags").glob("*.py")}
    files |= {f"data/{path.name}": path.read_text() for path in (ROOT / "example_dags" / "data").iterdir()}
    files |= {path.name: path.read_text() for path in (Path(__file__).parent / "dags").glob("*.py")}
    return files


@pytest.fixture(scope="session")
def cluster(emulator: BrowserUseEmulator) -> Iterator[Cluster]:
    started = time.monotonic()
    with running_cluster(_dag_files(), emulator.base_url, API_KEY, {"AIRFLOW_VAR_SHOP_PASSWORD": SECRET}) as instance:
        dag_ids = [Path(name).stem for name in _dag_files() if "/" not in name]
        parsed = "SELECT count(*) FROM dag WHERE dag_id = ANY(%s)"
        instance.wait_for("every DAG to be parsed", lambda: instance.query(parsed, dag_ids)[0][0] == len(dag_ids))
        # The documented set-up, before any DAG runs (the taskflow example uses this pool too): a
        # pool as large as the account's cap, read from the API.
        emulator.state.max_concurrent_sessions = CAP
        limit = instance.session_limit()
        emulator.state.max_concurrent_sessions = None
        assert limit == str(CAP)
        pool = {"name": "browser_use", "slots": int(limit), "include_deferred": True}
        Rest(instance).call("POST", "/pools", json=pool)
        SUMMARIES.append(f"deploy: cluster up in {time.monotonic() - started:.0f} s: {', '.join(instance.processes)}")
        yield instance
    # running_cluster raised if a port were still listening or a process left running.
    SUMMARIES.append(f"deploy: cluster stopped: ports {instance.ports} closed, no process of it left")


class Rest:
    """The api-server's public REST API, as an admin (simple auth manager)."""

    def __init__(self, cluster: Cluster) -> None:
        self.base = f"{cluster.api_url}/api/v2"
        self.http = requests.Session()
        token = self.http.get(f"{cluster.api_url}/auth/token", timeout=30).json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"{self.base}{path}", timeout=60, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        self.call(
            "POST", f"/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        )


@pytest.fixture(scope="session")
def rest(cluster: Cluster) -> Rest:
    return Rest(cluster)


@dataclass
class Scoreboard:
    """What one scenario did on the emulator, for its summary line."""

    name: str
    emulator: BrowserUseEmulator
    started: float = field(default_factory=time.monotonic)
    first_request: int = 0
    tasks: int = 0

    def creates(self) -> int:
        """Remote work started: v2 sessions and tasks, v4 runs."""
        log = self.emulator.requests("POST")[self.first_request :]
        return sum(r.status < 300 and r.path in ("/tasks", "/sessions", "/v4/runs") for r in log)

    def leaks(self) -> int:
        e = self.emulator
        return e.active_session_count() + e.active_run_count() + e.active_browser_count()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[OUTCOME] = report.outcome
    return report


OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def scoreboard(emulator: BrowserUseEmulator, request: pytest.FixtureRequest) -> Iterator[Scoreboard]:
    """Counts from here; the test sets ``tasks``. Its line is printed whatever the outcome, and
    the account is uncapped again for the next scenario."""
    emulator.state.max_concurrent_sessions = None
    emulator.state.peak_active_sessions = emulator.state.refused_at_cap = 0
    board = Scoreboard(request.node.name.removeprefix("test_"), emulator, first_request=len(emulator.requests("POST")))
    try:
        yield board
    finally:
        emulator.state.max_concurrent_sessions = None
    SUMMARIES.append(
        f"deploy: {board.name}: {board.tasks} tasks, {time.monotonic() - board.started:.0f} s, "
        f"{board.creates()} creates, max {emulator.state.peak_active_sessions} active sessions, "
        f"{board.leaks()} leaks, {request.node.stash.get(OUTCOME, 'error')}"
    )
