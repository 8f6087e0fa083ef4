"""`make demo`: run the example scraping DAG end to end with `airflow dags test`.

Against the local emulator by default (no network, no credits); against the real Browser Use
API when BROWSER_USE_API_KEY is set. Prints what each task produced and leaves nothing running.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
DAG_ID = "browser_use_scrape"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "airflow_provider_browseruse.testing.emulator",
            "--port", str(port), "--api-key", "bu_demo_emulator_key",
            "--scenario", str(ROOT / "scripts" / "demo-scenario.json"),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    base_url = line.rsplit(" ", 1)[-1]
    deadline = time.monotonic() + 15
    while True:  # ready when the port accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, base_url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the emulator did not start: {line}") from None
            time.sleep(0.05)


def active_sessions(base_url: str) -> int:
    root = base_url.removesuffix("/api/v2")
    with urllib.request.urlopen(f"{root}/_emulator/state", timeout=5) as answer:
        return int(json.load(answer)["activeSessionCount"])


def results(database: Path) -> tuple[dict[str, str], dict[tuple[str, str], object]]:
    with sqlite3.connect(database) as db:
        run_id = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()[0]
        states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE run_id = ?", (run_id,)).fetchall())
        rows = db.execute("SELECT task_id, key, value FROM xcom WHERE run_id = ?", (run_id,)).fetchall()
    # SQLite gives JSON numbers back as numbers (the column has numeric affinity), the rest as text.
    return states, {(task, key): json.loads(v) if isinstance(v, (str, bytes)) else v for task, key, v in rows}


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    home = WORK / "airflow-home"
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
    emulator = None
    api_key = os.environ.get("BROWSER_USE_API_KEY", "").strip()
    if api_key:
        target = "the Browser Use API (BROWSER_USE_API_KEY is set)"
        env["AIRFLOW_CONN_BROWSER_USE_DEFAULT"] = json.dumps({"conn_type": "browser_use", "password": api_key})
    else:
        emulator, base_url = start_emulator(env)
        target = f"the local emulator at {base_url}"
        env["AIRFLOW_CONN_BROWSER_USE_DEFAULT"] = json.dumps(
            {"conn_type": "browser_use", "host": base_url, "password": "bu_demo_emulator_key"}
        )
    log_path = WORK / "dags-test.log"
    print(f"Browser Use demo: DAG {DAG_ID!r} against {target}")
    try:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        with log_path.open("w") as log:
            run = subprocess.run(
                [sys.executable, "-m", "airflow", "dags", "test", DAG_ID], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        states, xcom = results(home / "airflow.db")
        scraped = xcom.get(("scrape_books", "return_value"))
        stopped = xcom.get(("stop_session", "return_value")) or {}
        outputs = xcom.get(("stop_session", "task_outputs")) or []
        cost = sum(float(o.get("cost") or 0) for o in outputs) + float(stopped.get("proxyCost") or 0)  # type: ignore[union-attr]
        lines = {
            "create_session": f"session {xcom.get(('create_session', 'return_value'))}",
            "scrape_books": json.dumps(scraped),
            "cheapest_book": json.dumps(xcom.get(("cheapest_book", "return_value"))),
            "stop_session": f"session {stopped.get('status')}; {len(outputs)} task(s); total cost ${cost:.4f}",  # type: ignore[union-attr]
        }
        for task_id, what in lines.items():
            state = states.get(task_id) or "not run"
            print(f"  {task_id:<15} {state:<8} {what if state == 'success' else ''}".rstrip())
        if emulator is not None:
            print(f"Active sessions left on the emulator: {active_sessions(base_url)}")
        print(f"Full log: {log_path.relative_to(ROOT)}")
        if run.returncode != 0:
            print(f"The DAG run failed (airflow dags test exited {run.returncode}); see the log.")
        return run.returncode
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
