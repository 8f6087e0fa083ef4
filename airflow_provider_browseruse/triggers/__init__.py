"""Triggers for the Browser Use Cloud API: deferrable waiting in the triggerer."""

from airflow_provider_browseruse.triggers.browser_use import AgentRunTrigger, SessionStatusTrigger, TaskStatusTrigger

__all__ = ["AgentRunTrigger", "SessionStatusTrigger", "TaskStatusTrigger"]
