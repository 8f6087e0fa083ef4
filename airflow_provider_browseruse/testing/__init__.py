"""Test tools: a local emulator of the Browser Use API v2 and its scripted scenarios.

Nothing here is imported by the hooks, operators or sensors.
"""

from airflow_provider_browseruse.testing.emulator import BrowserUseEmulator, Fault, RequestRecord
from airflow_provider_browseruse.testing.scenario import OutputFile, Scenario, TaskScript

__all__ = ["BrowserUseEmulator", "Fault", "OutputFile", "RequestRecord", "Scenario", "TaskScript"]
