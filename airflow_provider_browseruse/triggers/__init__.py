"""Triggers for the Browser Use Cloud API: deferrable waiting in the triggerer."""

from airflow_provider_browseruse.triggers.browser_use import SessionStatusTrigger, TaskStatusTrigger

__all__ = ["SessionStatusTrigger", "TaskStatusTrigger"]
