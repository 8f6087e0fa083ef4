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

__all__ = ["AirflowException", "AirflowFailException", "AirflowSensorTimeout"]
