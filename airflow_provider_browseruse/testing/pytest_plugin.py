"""An opt-in pytest plugin: a Browser Use emulator for testing your own DAGs offline.

Enable it in your ``conftest.py``::

    pytest_plugins = ["airflow_provider_browseruse.testing.pytest_plugin"]

Then ask for ``browser_use_emulator`` in a test. One server runs for the whole test session;
each test gets it reset (no sessions, tasks, faults or logged requests, the default scenario)
and the environment variable ``AIRFLOW_CONN_BROWSER_USE_DEFAULT`` pointing at it, so that every
operator, sensor and hook with the default connection talks to it. Run whole DAGs with
:func:`airflow_provider_browseruse.testing.run_dag`.

Unless ``AIRFLOW_HOME`` is set, the test session gets a fresh one in a temporary folder (with
its own SQLite metadata database, whatever ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` says, and no
example DAGs), so tests never touch ``~/airflow`` or a real database. Set ``AIRFLOW_HOME`` to
use your own configuration instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest

from airflow_provider_browseruse.testing.emulator import BrowserUseEmulator
from airflow_provider_browseruse.testing.scenario import Scenario

EMULATOR_API_KEY = "bu_emulator_key_for_tests"

_own_airflow_home: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _own_airflow_home
    if "AIRFLOW_HOME" in os.environ:
        return  # the user's own home and configuration
    if "airflow.configuration" in sys.modules:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                "airflow_provider_browseruse: Airflow read its configuration before this plugin could give the "
                "tests a home of their own; they use ~/airflow. Set AIRFLOW_HOME, or load the plugin first."
            ),
            stacklevel=2,
        )
        return
    _own_airflow_home = tempfile.mkdtemp(prefix="airflow-home-")
    os.environ["AIRFLOW_HOME"] = _own_airflow_home
    # Its own database too: run_dag creates or migrates it, and must never touch one named elsewhere.
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_own_airflow_home}/airflow.db"
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _own_airflow_home is not None:
        shutil.rmtree(_own_airflow_home, ignore_errors=True)


@pytest.fixture(scope="session")
def _browser_use_emulator_server() -> Iterator[BrowserUseEmulator]:
    with BrowserUseEmulator(api_key=EMULATOR_API_KEY) as emulator:
        yield emulator


@pytest.fixture
def browser_use_emulator(
    _browser_use_emulator_server: BrowserUseEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrowserUseEmulator]:
    """A running emulator, reset for this test, set as the default Browser Use connection."""
    emulator = _browser_use_emulator_server
    emulator.reset()
    emulator.state.scenario = Scenario()
    emulator.state.max_concurrent_sessions = None
    monkeypatch.setenv("AIRFLOW_CONN_BROWSER_USE_DEFAULT", emulator.airflow_connection())
    yield emulator
    emulator.clear_faults()
