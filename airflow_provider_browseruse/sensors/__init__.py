"""Sensors for the Browser Use Cloud API."""

from airflow_provider_browseruse.sensors.browser_use import (
    AgentRunSensor,
    BrowserUseBaseSensor,
    SessionStoppedSensor,
    TaskCompletedSensor,
)

__all__ = ["AgentRunSensor", "BrowserUseBaseSensor", "SessionStoppedSensor", "TaskCompletedSensor"]
