"""Operators for the Browser Use Cloud API: v2 tasks and sessions, v4 agent runs."""

from airflow_provider_browseruse.operators.browser_use import (
    BrowserUseBaseOperator,
    CreateSessionOperator,
    RunTaskOperator,
    StopIdleSessionsOperator,
    StopSessionOperator,
    StopTaskOperator,
)
from airflow_provider_browseruse.operators.browser_use_v4 import EndAgentSessionOperator, RunAgentOperator

__all__ = [
    "BrowserUseBaseOperator",
    "CreateSessionOperator",
    "EndAgentSessionOperator",
    "RunAgentOperator",
    "RunTaskOperator",
    "StopIdleSessionsOperator",
    "StopSessionOperator",
    "StopTaskOperator",
]
