"""A production-shaped Airflow on one machine, for `make test-deploy`: PostgreSQL (its own data
directory) and Redis from Debian's packages, the api-server, scheduler, DAG processor, triggerer
and two Celery workers, every one a process of its own on loopback.

Each part is started here and stopped here, whatever happened: :func:`running_cluster` leaves
nothing listening and nothing running, and says so.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from tests.local_airflow import Airflow, free_port

#: Celery workers started (each its own process tree, as if on its own host).
WORKERS = ("worker1", "worker2")
#: A task whose worker died is failed (and retried) this long after its last heartbeat.
HEARTBEAT_TIMEOUT = 30


def _as_postgres(*command: str) -> list[str]:
    # PostgreSQL refuses to run as root; its Debian package creates the `postgres` user for it.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: run scripts/deploy-prerequisites.sh first")
    return found[-1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(port: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.2)


class PostgreSQL:
    """A PostgreSQL server in its own data directory, a passwordless loopback superuser ``airflow``."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.sockets = root / "pgsock"
        self.log = root / "pglog" / "postgresql.log"
        self.port = free_port()
        self.dsn = f"postgresql://airflow@127.0.0.1:{self.port}/airflow"

    def start(self) -> None:
        for path in (self.data, self.sockets, self.log.parent):
            path.mkdir(mode=0o700)
            if os.geteuid() == 0:
                shutil.chown(path, "postgres", "postgres")
        subprocess.run(
            _as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "airflow", "-E", "UTF8"),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off -c max_connections=300"
        subprocess.run(
            _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"),
            check=True,
            capture_output=True,
        )
        self.execute("CREATE DATABASE airflow", database="postgres")

    def execute(self, sql: str, *params: Any, database: str = "airflow") -> list[tuple[Any, ...]]:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname=database)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params or None)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def dump(self) -> str:
        """The whole metadata database as SQL (``pg_dump``)."""
        done = subprocess.run(
            [_pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow", "airflow"],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
                capture_output=True,
                timeout=60,
            )


class Redis:
    """A Redis server on loopback, nothing saved to disk."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = root / "redis.log"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_listening(self.port, "Redis")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Cluster(Airflow):
    """Airflow components on the CeleryExecutor; queries go to the PostgreSQL metadata database."""

    def __init__(self, home: Path, env: dict[str, str], database: PostgreSQL, ports: list[int]) -> None:
        super().__init__(home, env)
        self.database = database
        self.ports = ports

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.database.execute(sql.replace("?", "%s"), *params)

    def start_worker(self, name: str) -> None:
        seen = len(self.logs(name))  # a restarted worker appends to its log: only new lines count
        self.start(
            name,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@deploy",
            "--pid",
            str(self.home / f"{name}.pid"),
            "--skip-serve-logs",  # two workers on one host would both bind the log server's port
            "--concurrency",
            "8",
        )
        self.wait_for(f"{name} to be ready", lambda: "ready." in self.logs(name)[seen:], timeout=120)

    def start_triggerer(self) -> None:
        # Its log server would listen on every interface; the api-server reads the log files.
        self.start("triggerer", "triggerer", "--skip-serve-logs")

    def kill_tree(self, name: str) -> list[int]:
        """SIGKILL a component and every process under it at once, as a host that dies; return the pids."""
        process = self.processes.pop(name)
        pids = [process.pid, *_descendants(process.pid)]
        for pid in pids:
            with suppress(ProcessLookupError):  # it may have died with its parent
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
        return pids

    def component_of(self, pid: int) -> str | None:
        """Which component ``pid`` runs under (a worker for a task's process), or None."""
        owners = {process.pid: name for name, process in self.processes.items()}
        while pid > 1:
            if pid in owners:
                return owners[pid]
            pid = _parent(pid)
        return None


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def processes_mentioning(marker: str) -> list[str]:
    """Processes whose command line or environment names ``marker`` (our temporary root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline or marker.encode() in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:120]}")
    return found


@contextmanager
def running_cluster(
    dags: dict[str, str], base_url: str, api_key: str, extra_env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """Start everything, yield the cluster; on the way out stop it all and check that nothing is
    left listening or running (an AssertionError names what is)."""
    root = Path(tempfile.mkdtemp(prefix="browser-use-deploy-"))
    root.chmod(0o755)  # the postgres user must reach its data directory
    home = root / "airflow"
    (home / "dags").mkdir(parents=True)
    for name, text in dags.items():
        (home / "dags" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "dags" / name).write_text(text)
    database, broker = PostgreSQL(root), Redis(root)
    api_port = free_port()
    sql = f"postgresql+psycopg2://airflow@127.0.0.1:{database.port}/airflow"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__PARALLELISM": "16",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),  # connections stored encrypted
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql,
        "AIRFLOW__CELERY__BROKER_URL": broker.url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{sql}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": "deploy-test-jwt-secret-0123456789abcdef",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW_CONN_BROWSER_USE_DEFAULT": json.dumps(
            {"conn_type": "browser_use", "host": base_url, "password": api_key}
        ),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")) if p
        ),
        **(extra_env or {}),
    }
    cluster = Cluster(home, env, database, [database.port, broker.port, api_port])
    cluster.api_url = f"http://127.0.0.1:{api_port}"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        stack.callback(_check_nothing_left, root, cluster.ports)
        stack.callback(database.stop)
        database.start()
        stack.callback(broker.stop)
        broker.start()
        cluster.cli("db", "migrate", timeout=300)
        stack.callback(_stop_all, cluster)
        cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
        cluster.start("scheduler", "scheduler")
        cluster.start("dag-processor", "dag-processor")
        cluster.start_triggerer()
        for name in WORKERS:
            cluster.start_worker(name)
        _wait_listening(api_port, "the api-server", timeout=120)
        yield cluster


def _stop_all(cluster: Cluster) -> None:
    # Workers first (no task may start against a stopping scheduler), then the rest; a component
    # that already died must not keep the others running.
    for name in sorted(cluster.processes, key=lambda n: not n.startswith("worker")):
        with suppress(ProcessLookupError):
            cluster.stop(name)


def _check_nothing_left(root: Path, ports: list[int]) -> None:
    running = processes_mentioning(str(root))
    for line in running:  # a task's own process group outlives its worker's: kill it, then fail
        with suppress(ProcessLookupError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    listening = [port for port in ports if _listening(port)]
    print(
        f"deploy: stopped everything: {len(listening)} ports listening, {len(running)} processes left", file=sys.stderr
    )
    assert listening == [] and running == [], f"left listening: {listening}; left running: {running}"
