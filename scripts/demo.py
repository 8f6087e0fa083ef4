"""`make demo`: run the example scraping DAG end to end with `airflow dags test`.

Against the local emulator by default (no network, no credits); against the real Browser Use
API when BROWSER_USE_API_KEY is set. Prints what each task produced and leaves nothing running.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from airflow_provider_browseruse.testing import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
DAG_ID = "browser_use_scrape"
V4_DAG_ID = "browser_use_v4_pipeline"


def results(database: Path, dag_id: str = DAG_ID) -> tuple[dict[str, str], dict[tuple[str, str], object]]:
    with sqlite3.connect(database) as db:
        run_id = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
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
        scenario = ROOT / "scripts" / "demo-scenario.json"
        emulator = EmulatorProcess("bu_demo_emulator_key", scenario=scenario, env=env).start()
        target = f"the local emulator at {emulator.base_url}"
        env["AIRFLOW_CONN_BROWSER_USE_DEFAULT"] = emulator.airflow_connection()
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
        v4_log = WORK / "dags-test-v4.log"
        print(f"Browser Use demo: DAG {V4_DAG_ID!r} (API v4) against the same API")
        with v4_log.open("w") as log:
            v4_run = subprocess.run(
                [sys.executable, "-m", "airflow", "dags", "test", V4_DAG_ID],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        states, xcom = results(home / "airflow.db", V4_DAG_ID)
        session_cost = xcom.get(("end_session", "session_cost")) or {}
        ended = xcom.get(("end_session", "return_value")) or {}
        lines = {
            "price_check": json.dumps(xcom.get(("price_check", "return_value"))),
            "cheapest": json.dumps(xcom.get(("cheapest", "return_value"))),
            "report": json.dumps(xcom.get(("report", "return_value"))),
            "end_session": f"{len(ended.get('stopped_browsers') or [])} browser(s) stopped; session cost "  # type: ignore[union-attr]
            f"${float(session_cost.get('totalCostUsd') or 0):.4f}",  # type: ignore[union-attr]
        }
        for task_id, what in lines.items():
            state = states.get(task_id) or "not run"
            print(f"  {task_id:<15} {state:<8} {what if state == 'success' else ''}".rstrip())
        if emulator is not None:
            state = emulator.admin("state")
            print(
                f"Left on the emulator: {state['activeSessionCount']} active v2 session(s), "
                f"{state['activeRunCount']} active v4 run(s), {state['activeBrowserCount']} active browser(s)"
            )
        print(f"Full logs: {log_path.relative_to(ROOT)}, {v4_log.relative_to(ROOT)}")
        for code, dag_id in ((run.returncode, DAG_ID), (v4_run.returncode, V4_DAG_ID)):
            if code != 0:
                print(f"The DAG run of {dag_id} failed (airflow dags test exited {code}); see the log.")
        return run.returncode or v4_run.returncode
    finally:
        if emulator is not None:
            emulator.stop()


if __name__ == "__main__":
    sys.exit(main())
