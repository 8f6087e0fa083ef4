"""`make bench`: what the provider costs, each figure beside its baseline measured in the same run.

    .venv/bin/python benchmarks/run.py [--quick] [--json bench-results.json]

1. Import cost: importing the hook, operators and sensors modules in a fresh process that has
   already imported what any DAG file has (`from airflow.sdk import DAG, BaseOperator, ...`),
   median over fresh processes; beside apache-airflow-providers-http's operators module.
2. Per-call overhead: sequential `get_session` calls through BrowserUseHook against the emulator,
   beside a bare keep-alive requests.Session and Airflow's HttpHook making the same calls.
3. Polling economy: requests and bytes a RunTaskOperator spends on a task of T s at poll interval p.
4. Trigger scale: N TaskStatusTriggers in one event loop (poll every second, tasks ending over
   60 s): events, event-loop lag, CPU per 1,000 polls, memory per trigger and TCP connections;
   beside a baseline trigger that opens a client per poll, as most providers do.
6. Money: the overshoot past ``max_cost_usd`` for a task whose cost climbs at a known rate
   (bound: one poll interval's worth), and a 40-way mapped RunTaskOperator against a cap of 3
   sessions under a real scheduler, with and without a pool sized to the cap: wall time beside
   the ideal (tasks x duration / cap), 429s, successes, the peak of active sessions.
5. Waits that cost no worker: deferred RunTaskOperators under a real scheduler and triggerer,
   ending in the triggerer, beside resuming on a worker (dbt Cloud's pattern): worker seconds,
   worker runs and the delay from the remote task's end to the Airflow task's end
   (benchmarks/deferred_finish.py).

Benchmarks, not tests: nothing here asserts a time. The emulator runs in its own process so that
its CPU is not counted; everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "bu_benchmark_key_0123456789"
PRELUDE = "from airflow.sdk import DAG, BaseHook, BaseOperator, BaseOperatorLink, BaseSensorOperator\n"
#: What a DAG file imports: the packages, so v2's and v4's operators both.
OURS = (
    "import airflow_provider_browseruse.hooks, airflow_provider_browseruse.operators, "
    "airflow_provider_browseruse.sensors"
)
HTTP_PROVIDER = "import airflow.providers.http.operators.http"


HOMES: list[str] = []


def child_env() -> dict[str, str]:
    home = tempfile.mkdtemp(prefix="bench-airflow-home-")
    HOMES.append(home)  # removed at the end of main()
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure imports as installed: from bytecode, not source
    return env


# --- 1. import cost ----------------------------------------------------------------------------


def import_cost(runs: int) -> dict[str, Any]:
    env = child_env()
    code = PRELUDE + "import time\nt = time.perf_counter()\n{stmt}\nprint(time.perf_counter() - t)\n"
    samples: dict[str, list[float]] = {"ours": [], "http_provider": []}
    for _ in range(runs + 1):
        for name, stmt in (("ours", OURS), ("http_provider", HTTP_PROVIDER)):
            out = subprocess.run(
                [sys.executable, "-c", code.format(stmt=stmt)], env=env, capture_output=True, text=True
            )
            samples[name].append(float(out.stdout.strip().splitlines()[-1]) * 1000)
    for values in samples.values():
        del values[0]  # the first run writes the bytecode caches
    ours, http = statistics.median(samples["ours"]), statistics.median(samples["http_provider"])
    return {"import_ms_ours": ours, "import_ms_http_provider": http, "import_runs": runs}


# --- 2. per-call overhead ----------------------------------------------------------------------


def per_call(calls: int) -> dict[str, Any]:
    import requests

    from airflow_provider_browseruse.testing import EmulatorProcess

    emulator = EmulatorProcess(KEY, env=child_env()).start()
    base_url = emulator.base_url
    os.environ["AIRFLOW_CONN_BROWSER_USE_DEFAULT"] = emulator.airflow_connection()
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    os.environ["AIRFLOW_CONN_HTTP_BENCH"] = json.dumps(
        {
            "conn_type": "http",
            "host": host,
            "port": int(port),
            "schema": "http",
            "extra": {"X-Browser-Use-API-Key": KEY},
        }
    )
    try:
        from airflow.providers.http.hooks.http import HttpHook

        from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

        hook = BrowserUseHook()
        session_id = hook.create_session({"keepAlive": True})["id"]
        bare = requests.Session()
        bare.headers["X-Browser-Use-API-Key"] = KEY
        url = f"{base_url}/sessions/{session_id}"
        http_hook = HttpHook(method="GET", http_conn_id="http_bench")

        def run_hook() -> None:
            hook.get_session(session_id)

        def run_bare() -> None:
            bare.get(url, timeout=30).json()

        def run_http_hook() -> None:
            http_hook.run(f"api/v2/sessions/{session_id}").json()

        totals = {"hook": 0.0, "bare": 0.0, "http_hook": 0.0}
        for runner in (run_hook, run_bare, run_http_hook):  # warm up connections and code paths
            for _ in range(20):
                runner()
        block = 100
        for _ in range(max(1, calls // block)):  # interleaved blocks: drift hits all three alike
            for name, runner in (("hook", run_hook), ("bare", run_bare), ("http_hook", run_http_hook)):
                started = time.perf_counter()
                for _ in range(block):
                    runner()
                totals[name] += time.perf_counter() - started
        n = max(1, calls // block) * block
        hook.stop_session(session_id)
    finally:
        emulator.stop()
    return {
        "per_call_ms_hook": totals["hook"] / n * 1000,
        "per_call_ms_bare_requests": totals["bare"] / n * 1000,
        "per_call_ms_http_hook": totals["http_hook"] / n * 1000,
        "per_call_ratio_hook_over_bare": totals["hook"] / totals["bare"],
        "per_call_ratio_http_hook_over_bare": totals["http_hook"] / totals["bare"],
        "per_call_calls": n,
    }


# --- 3. polling economy ------------------------------------------------------------------------


class _TI:
    dag_id, run_id, task_id, map_index, try_number, start_date = "bench", "run", "run_task", -1, 1, None

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def polling_economy(duration: float, poll_interval: float) -> dict[str, Any]:
    from airflow_provider_browseruse.operators.browser_use import RunTaskOperator
    from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario

    scenario = Scenario().add("economy", duration=duration, start_delay=0, output="done")
    with BrowserUseEmulator(KEY, scenario=scenario) as emulator:
        os.environ["AIRFLOW_CONN_BROWSER_USE_DEFAULT"] = emulator.airflow_connection()
        RunTaskOperator(task_id="run_task", task="economy", poll_interval=poll_interval).execute({"ti": _TI()})  # type: ignore[arg-type]
        records = emulator.requests()
    by_kind = {
        "create": [r for r in records if r.method == "POST" and r.path == "/tasks"],
        "status": [r for r in records if r.path.endswith("/status")],
        "full": [r for r in records if r.method == "GET" and r.path.startswith("/tasks/") and r.path.count("/") == 2],
    }
    bound = 1 + math.ceil(duration / poll_interval) + 1
    return {
        "economy_task_seconds": duration,
        "economy_poll_interval": poll_interval,
        "economy_requests": len(records),
        "economy_requests_bound": bound,
        "economy_status_polls": len(by_kind["status"]),
        "economy_full_fetches": len(by_kind["full"]),
        "economy_bytes": sum(r.response_bytes for r in records),
        "economy_bytes_status_polls": sum(r.response_bytes for r in by_kind["status"]),
    }


# --- 4. trigger scale --------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _trigger_run(kind: str, base_url: str, task_ids: list[str], expected: dict[str, str]) -> dict[str, Any]:
    import httpx
    from airflow.triggers.base import BaseTrigger, TriggerEvent

    from airflow_provider_browseruse.triggers.browser_use import TaskStatusTrigger

    class PerPollClientTrigger(BaseTrigger):
        """The usual pattern: a new client (and TCP connection) for every poll."""

        def __init__(self, task_id: str) -> None:
            super().__init__()
            self.task_id = task_id

        def serialize(self) -> tuple[str, dict[str, Any]]:
            return "bench.PerPollClientTrigger", {"task_id": self.task_id}

        async def run(self):  # type: ignore[override]
            while True:
                async with httpx.AsyncClient(headers={"X-Browser-Use-API-Key": KEY}, timeout=30) as client:
                    answer = await client.get(f"{base_url}/tasks/{self.task_id}/status")
                view = answer.json()
                if view["status"] in ("finished", "failed", "stopped"):
                    yield TriggerEvent(
                        {"event": "ended", "browser_use_task_id": self.task_id, "task_status": view["status"]}
                    )
                    return
                await asyncio.sleep(1)

    lags: list[float] = []
    peak_rss = 0
    done = asyncio.Event()

    async def monitor() -> None:
        nonlocal peak_rss
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.05)
            lags.append(time.perf_counter() - before - 0.05)
            peak_rss = max(peak_rss, _rss_bytes())

    rss_before = _rss_bytes()
    end_time = time.time() + 600
    triggers = [
        TaskStatusTrigger(t, poll_interval=1.0, end_time=end_time) if kind == "ours" else PerPollClientTrigger(t)
        for t in task_ids
    ]

    async def first(trigger: Any) -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise RuntimeError("no event")

    watcher = asyncio.create_task(monitor())
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    events = await asyncio.gather(*(first(t) for t in triggers))
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    done.set()
    await watcher
    correct = sum(
        1
        for e, t in zip(events, task_ids, strict=True)
        if e.get("event") == "ended" and e.get("browser_use_task_id") == t and e.get("task_status") == expected[t]
    )
    return {
        "events_correct": correct,
        "events": len(events),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "loop_lag_p99_ms": sorted(lags)[int(0.99 * (len(lags) - 1))] * 1000 if lags else 0.0,
        "memory_per_trigger_kb": (peak_rss - rss_before) / len(task_ids) / 1024,
    }


def trigger_child(kind: str, base_url: str, count: str) -> None:
    """Run in a fresh process, so CPU and memory are this trigger kind's alone. The tasks are
    created here, after the imports, so that their lives start with the triggers'."""
    import requests

    from airflow_provider_browseruse.triggers.browser_use import TaskStatusTrigger  # noqa: F401  (import first)

    os.environ["AIRFLOW_CONN_BROWSER_USE_DEFAULT"] = json.dumps(
        {"conn_type": "browser_use", "host": base_url, "password": KEY}
    )
    http = requests.Session()
    http.headers["X-Browser-Use-API-Key"] = KEY
    tasks = {
        http.post(f"{base_url}/tasks", json={"task": f"[end {n % STEPS:02d}] task {n}"}, timeout=30).json()[
            "id"
        ]: "finished"
        for n in range(int(count))
    }
    print("POLLS_FROM " + str(len(tasks)), flush=True)
    result = asyncio.run(_trigger_run(kind, base_url, list(tasks), tasks))
    print("RESULT " + json.dumps(result))


STEPS = 20  # task lifetimes: STEPS groups, ending evenly over the spread


def trigger_scale(count: int, spread: float) -> dict[str, Any]:
    from airflow_provider_browseruse.testing import EmulatorProcess

    env = child_env()
    rules = [
        {"match": f"[end {n:02d}]", "duration": spread * (n + 1) / STEPS, "start_delay": 0, "output": "ok"}
        for n in range(STEPS)
    ]
    scenario = Path(tempfile.mkdtemp()) / "scenario.json"
    scenario.write_text(json.dumps({"rules": rules}))
    results: dict[str, Any] = {"trigger_count": count, "trigger_spread_seconds": spread}
    for kind in ("ours", "baseline"):
        with EmulatorProcess(KEY, scenario=scenario, env=env) as emulator:
            out = subprocess.run(
                [sys.executable, __file__, "--trigger-child", kind, emulator.base_url, str(count)],
                env={**env, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"trigger child failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            figures = json.loads(line[len("RESULT ") :])
            polls = [r for r in emulator.admin("requests") if r["path"].endswith("/status")]
            figures["polls"] = len(polls)
            figures["tcp_connections"] = len({r["client_port"] for r in polls})
            figures["cpu_seconds_per_1000_polls"] = figures["cpu_seconds"] / max(1, len(polls)) * 1000
            results.update({f"trigger_{kind}_{k}": v for k, v in figures.items()})
    return results


# --- report ------------------------------------------------------------------------------------

ROWS = (
    [
        ("Import cost (ms, median)", "import_ms_ours", "import_ms_http_provider", "HTTP provider operators"),
        ("get_session per call (ms)", "per_call_ms_hook", "per_call_ms_bare_requests", "bare requests.Session"),
        ("  ratio to bare requests", "per_call_ratio_hook_over_bare", "per_call_ratio_http_hook_over_bare", "HttpHook"),
        ("Polling: requests", "economy_requests", "economy_requests_bound", "bound 1 + ceil(T/p) + 1"),
        ("Polling: status polls / full fetches", "economy_status_polls", "economy_full_fetches", "full fetches"),
        ("Polling: bytes received", "economy_bytes", "economy_bytes_status_polls", "of which status polls"),
    ]
    + [
        (f"Triggers: {label}", f"trigger_ours_{key}", f"trigger_baseline_{key}", "per-poll client")
        for label, key in (
            ("correct events", "events_correct"),
            ("event-loop lag p99 (ms)", "loop_lag_p99_ms"),
            ("CPU s per 1,000 polls", "cpu_seconds_per_1000_polls"),
            ("memory per trigger (KiB)", "memory_per_trigger_kb"),
            ("TCP connections", "tcp_connections"),
            ("polls", "polls"),
        )
    ]
    + [
        (
            "Deferred task: worker seconds",
            "deferred_triggerer_worker_seconds",
            "deferred_worker_worker_seconds",
            "resume on a worker",
        ),
        (
            "Deferred task: worker runs",
            "deferred_triggerer_worker_runs",
            "deferred_worker_worker_runs",
            "resume on a worker",
        ),
        (
            "Deferred task: end delay (s, median)",
            "deferred_triggerer_end_delay_s",
            "deferred_worker_end_delay_s",
            "resume on a worker",
        ),
        ("Budget: overshoot past the cap (USD)", "budget_overshoot_usd", "budget_overshoot_bound_usd", "rate x poll"),
        ("Fan-out: wall s, pooled", "fan_out_pooled_wall_s", "fan_out_ideal_s", "ideal: tasks x T / cap"),
        ("Fan-out: wall s, unpooled", "fan_out_unpooled_wall_s", "fan_out_ideal_s", "ideal: tasks x T / cap"),
        ("Fan-out: 429s answered", "fan_out_pooled_429s", "fan_out_unpooled_429s", "unpooled"),
        ("Fan-out: tasks succeeded", "fan_out_pooled_succeeded", "fan_out_unpooled_succeeded", "unpooled"),
        ("Fan-out: peak active sessions", "fan_out_pooled_peak_sessions", "fan_out_unpooled_peak_sessions", "unpooled"),
    ]
)


# --- 6. money: a budget's overshoot, a wide fan-out at the session cap ---------------------------


def budget_overshoot(rate: float, cap: float, poll_interval: float) -> dict[str, Any]:
    """A task whose cost climbs at ``rate`` USD/s, stopped at ``max_cost_usd=cap``: how far past it."""
    from airflow_provider_browseruse._compat import AirflowFailException
    from airflow_provider_browseruse.operators.browser_use import RunTaskOperator
    from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario

    scenario = Scenario().add("budget", duration=600, start_delay=0, cost_per_second=str(rate))
    ti = _TI()
    with BrowserUseEmulator(KEY, scenario=scenario) as emulator:
        os.environ["AIRFLOW_CONN_BROWSER_USE_DEFAULT"] = emulator.airflow_connection()
        op = RunTaskOperator(task_id="run_task", task="budget", poll_interval=poll_interval, max_cost_usd=cap)
        with contextlib.suppress(AirflowFailException):  # the failure is the point: it was stopped
            op.execute({"ti": ti})  # type: ignore[arg-type]
        [task] = emulator.state.tasks.values()
        final = float(emulator.state.get_task(task.id)["cost"])
    return {
        "budget_cap_usd": cap,
        "budget_overshoot_usd": round(final - cap, 4),
        "budget_overshoot_bound_usd": round(rate * poll_interval, 4),
    }


def fan_out(tasks: int, cap: int, duration: float) -> dict[str, Any]:
    """The mapped fan-out of tests/fan_out.py against a session cap, with and without a pool."""
    sys.path.insert(0, str(ROOT))
    from airflow_provider_browseruse.testing import BrowserUseEmulator
    from tests.fan_out import fan_out_runs

    with tempfile.TemporaryDirectory(prefix="bench-fan-out-") as home, BrowserUseEmulator(KEY) as emulator:
        runs = fan_out_runs(Path(home), emulator, tasks=tasks, cap=cap, duration=duration, key=KEY)
    figures: dict[str, Any] = {"fan_out_tasks": tasks, "fan_out_cap": cap, "fan_out_ideal_s": runs["ideal_seconds"]}
    for name in ("pooled", "unpooled"):
        run = runs[name]
        figures[f"fan_out_{name}_wall_s"] = run["wall_seconds"]
        figures[f"fan_out_{name}_429s"] = run["answered_429"]
        figures[f"fan_out_{name}_succeeded"] = run["task_states"].get("success", 0)
        figures[f"fan_out_{name}_peak_sessions"] = run["peak_active_sessions"]
    return figures


# --- 5. waits that cost no worker --------------------------------------------------------------


def deferred_finish(tasks: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import deferred_finish

    return deferred_finish.measure(tasks=tasks, duration=6.0, poll=1.0, key=KEY, env=child_env())


def report(figures: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    lines = [f"{'figure':<40} {'provider':>12} {'baseline':>12}  baseline is"]
    for label, ours, base, what in ROWS:
        if ours in figures or base in figures:
            lines.append(f"{label:<40} {show(figures.get(ours)):>12} {show(figures.get(base)):>12}  {what}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller figures, for a smoke run")
    parser.add_argument("--json", default=str(ROOT / "bench-results.json"))
    parser.add_argument("--trigger-child", nargs=3, metavar=("KIND", "BASE_URL", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trigger_child:
        trigger_child(*args.trigger_child)
        return 0
    if "AIRFLOW_HOME" not in os.environ:
        os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-airflow-home-")
        HOMES.append(os.environ["AIRFLOW_HOME"])
    try:
        return _run(args)
    finally:
        for home in HOMES:
            shutil.rmtree(home, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "make bench" + (" (--quick)" if args.quick else ""),
    }
    import airflow

    figures["airflow"] = airflow.__version__
    steps = [
        ("import cost", lambda: import_cost(5 if args.quick else 15)),
        ("per-call overhead", lambda: per_call(500 if args.quick else 3000)),
        ("polling economy", lambda: polling_economy(3.0, 0.5)),
        ("trigger scale", lambda: trigger_scale(200 if args.quick else 1000, 15.0 if args.quick else 60.0)),
        ("deferred finish", lambda: deferred_finish(2 if args.quick else 4)),
        ("budget overshoot", lambda: budget_overshoot(0.5, 1.0, 1.0)),
        ("fan-out at the session cap", lambda: fan_out(10 if args.quick else 40, 3, 1.0)),
    ]
    for name, step in steps:
        print(f"... {name}", file=sys.stderr, flush=True)
        figures.update(step())
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures))
    print(f"\n{figures['machine']}, Airflow {figures['airflow']}; figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
