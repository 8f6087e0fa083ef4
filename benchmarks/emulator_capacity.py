"""How much the emulator carries: per-request latency, and 1,000 concurrent keep-alive pollers.

    .venv/bin/python benchmarks/emulator_capacity.py [--pollers 1000] [--seconds 20]

The emulator runs in its own process (as under `make demo`), so its figures are its own. Prints
a table and exits non-zero if a poller saw an error. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import requests

from airflow_provider_browseruse.testing import EmulatorProcess

KEY = "bu_bench_key"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def sequential_latency(base: str, calls: int) -> list[float]:
    http = requests.Session()
    http.headers["X-Browser-Use-API-Key"] = KEY
    session_id = http.post(f"{base}/sessions", json={}, timeout=5).json()["id"]
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        http.get(f"{base}/sessions/{session_id}", timeout=5).raise_for_status()
        times.append(time.perf_counter() - started)
    http.patch(f"{base}/sessions/{session_id}", json={"action": "stop"}, timeout=5)
    return times


async def pollers(base: str, count: int, seconds: float, interval: float) -> dict[str, float]:
    """Each poller holds one keep-alive connection and polls a task's status every interval.

    Raw HTTP/1.1 over asyncio streams: a client this thin costs far less than the server, so the
    figures are the emulator's, not the load generator's.
    """
    http = requests.Session()
    http.headers["X-Browser-Use-API-Key"] = KEY
    task_ids = [
        http.post(f"{base}/tasks", json={"task": f"poll me {n}"}, timeout=10).json()["id"] for n in range(count)
    ]
    host, port = base.split("//")[1].split("/")[0].split(":")
    latencies: list[float] = []
    errors = 0

    async def poll(task_id: str, offset: float) -> None:
        nonlocal errors
        await asyncio.sleep(offset)
        reader, writer = await asyncio.open_connection(host, int(port))
        request = (
            f"GET /api/v2/tasks/{task_id}/status HTTP/1.1\r\nHost: {host}\r\nX-Browser-Use-API-Key: {KEY}\r\n\r\n"
        ).encode()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200") or b'"status"' not in body:
                    errors += 1
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(poll(t, n * interval / count) for n, t in enumerate(task_ids)))
    elapsed = time.perf_counter() - started
    return {
        "polls": len(latencies),
        "errors": errors,
        "polls_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "connections": count,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pollers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with EmulatorProcess(KEY, task_duration=3600) as emulator:
        times = sequential_latency(emulator.base_url, args.calls)
        load = asyncio.run(pollers(emulator.base_url, args.pollers, args.seconds, args.interval))
    figures = {
        "sequential_get_session_median_ms": statistics.median(times) * 1000,
        "sequential_get_session_p99_ms": percentile(times, 0.99) * 1000,
        **{f"pollers_{k}": v for k, v in load.items()},
        "pollers": args.pollers,
        "poll_interval_s": args.interval,
        "seconds": args.seconds,
    }
    for name, value in figures.items():
        print(f"{name:<40} {value:,.2f}" if isinstance(value, float) else f"{name:<40} {value}")
    print(json.dumps(figures))
    return 1 if load["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
