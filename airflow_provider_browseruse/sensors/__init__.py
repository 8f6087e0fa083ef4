"""Sensors for the Browser Use Cloud API."""

from airflow_provider_browseruse.sensors.browser_use import (
    BrowserUseBaseSensor,
    SessionStoppedSensor,
    TaskCompletedSensor,
)

__all__ = ["BrowserUseBaseSensor", "SessionStoppedSensor", "TaskCompletedSensor"]
