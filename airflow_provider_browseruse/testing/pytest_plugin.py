"""An opt-in pytest plugin: a Browser Use emulator for testing your own DAGs offline.

Enable it in your ``conftest.py``::

    pytest_plugins = ["airflow_provider_browseruse.testing.pytest_plugin"]

Then ask for ``browser_use_emulator`` in a test. One server runs for the whole test session;
each test gets it reset (no sessions, tasks, faults or logged requests, the default scenario)
and the environment variable ``AIRFLOW_CONN_BROWSER_USE_DEFAULT`` pointing at it, so that every
operator, sensor and hook with the default connection talks to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_browseruse.testing.emulator import BrowserUseEmulator
from airflow_provider_browseruse.testing.scenario import Scenario

EMULATOR_API_KEY = "bu_emulator_key_for_tests"


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
