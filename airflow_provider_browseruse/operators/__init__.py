"""Operators for the Browser Use Cloud API."""

from airflow_provider_browseruse.operators.browser_use import (
    BrowserUseBaseOperator,
    CreateSessionOperator,
    RunTaskOperator,
    StopIdleSessionsOperator,
    StopSessionOperator,
    StopTaskOperator,
)

__all__ = [
    "BrowserUseBaseOperator",
    "CreateSessionOperator",
    "RunTaskOperator",
    "StopIdleSessionsOperator",
    "StopSessionOperator",
    "StopTaskOperator",
]
