"""Imports whose home moved between the Airflow versions this provider supports (3.1 to 3.3)."""

from __future__ import annotations

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout
except ImportError:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
    )

from airflow import __version__ as _airflow_version

#: Whether a trigger may end its task (TaskSuccessEvent) here: proven under a real scheduler and
#: triggerer on 3.3 (tests/test_scheduler.py); older versions resume on a worker instead.
ENDS_FROM_TRIGGER = tuple(int(part) for part in _airflow_version.split(".")[:2] if part.isdigit()) >= (3, 3)

__all__ = ["ENDS_FROM_TRIGGER", "AirflowException", "AirflowFailException", "AirflowSensorTimeout"]
