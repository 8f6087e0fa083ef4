"""A real Airflow on this machine: api-server, scheduler, DAG processor and triggerer as
subprocesses (LocalExecutor, SQLite), for tests/test_scheduler.py and `make bench`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Airflow:
    """Airflow components as subprocesses sharing one AIRFLOW_HOME and SQLite database."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_url = ""

    def cli(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def session_limit(self) -> str:
        """The README's command for the pool size: the account's concurrentSessionLimit, as printed."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow_provider_browseruse", "concurrent-session-limit"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited: {self.logs(name)[-3000:]}"
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}; scheduler log:\n{self.logs('scheduler')[-3000:]}"
            )
            time.sleep(0.5)

    def logs(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def local_airflow(
    home: Path, dags: dict[str, str], base_url: str, api_key: str, extra_env: dict[str, str] | None = None
) -> Iterator[Airflow]:
    """Start Airflow in ``home`` with ``dags`` (file name: source), the default Browser Use
    connection at ``base_url``; stop every component on the way out."""
    folder = home / "dags"
    folder.mkdir()
    for name, text in dags.items():  # a name may hold a folder: data files beside the DAGs
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "scheduler-test-jwt-secret-0123456789",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW_CONN_BROWSER_USE_DEFAULT": json.dumps(
            {"conn_type": "browser_use", "host": base_url, "password": api_key}
        ),
        **(extra_env or {}),
    }
    instance = Airflow(home, env)
    instance.api_url = f"http://127.0.0.1:{port}"
    instance.cli("db", "migrate")
    instance.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
    instance.start("dag-processor", "dag-processor")
    instance.start("scheduler", "scheduler")
    instance.start("triggerer", "triggerer")
    try:
        yield instance
    finally:
        for name in list(instance.processes):
            instance.stop(name)
