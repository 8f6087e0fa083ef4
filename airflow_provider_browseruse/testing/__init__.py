"""Test tools: a local emulator of the Browser Use API v2, its scripted scenarios, and run_dag.

Nothing here is imported by the hooks, operators or sensors.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrowserUseEmulator",
    "DagRunResult",
    "EmulatorProcess",
    "Fault",
    "OutputFile",
    "RequestRecord",
    "Scenario",
    "TaskScript",
    "run_dag",
]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m airflow_provider_browseruse.testing.emulator` imports it only once.
    if name in ("BrowserUseEmulator", "EmulatorProcess", "Fault", "RequestRecord"):
        from airflow_provider_browseruse.testing import emulator

        return getattr(emulator, name)
    if name in ("OutputFile", "Scenario", "TaskScript"):
        from airflow_provider_browseruse.testing import scenario

        return getattr(scenario, name)
    if name in ("DagRunResult", "run_dag"):
        from airflow_provider_browseruse.testing import dag_run

        return getattr(dag_run, name)
    raise AttributeError(name)
