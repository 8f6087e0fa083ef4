"""Test set-up: an isolated AIRFLOW_HOME before Airflow is imported, and the shared fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="browser-use-airflow-home-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("BROWSER_USE_API_KEY", None)

from airflow_provider_browseruse.testing import BrowserUseEmulator  # noqa: E402

try:  # Airflow 3.2+ (imported after the set-up above, as everything of Airflow's must be)
    from airflow.sdk.exceptions import TaskDeferred as TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred as TaskDeferred  # type: ignore[no-redef,attr-defined]

pytest_plugins = ["airflow_provider_browseruse.testing.pytest_plugin"]

MOCK_BASE_URL = "https://api.browser-use.test/api/v2"
MOCK_API_KEY = "bu_unit_test_key_0123456789"


class FakeTaskInstance:
    """The parts of a task instance the operators and sensors use. XCom values go through JSON,
    as they do in Airflow, so a value that would not survive the metadata database fails here."""

    def __init__(
        self,
        *,
        dag_id: str = "dag",
        run_id: str = "run",
        task_id: str = "op",
        map_index: int = -1,
        try_number: int = 1,
        start_date: datetime | None = None,
    ) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = dag_id, run_id, task_id, map_index
        self.try_number, self.start_date = try_number, start_date
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = json.loads(json.dumps(value))

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", map_indexes: int | None = None) -> Any:
        """This instance's own values: as Airflow, a mapped instance gets a list without
        ``map_indexes`` (every instance's), and nothing for another instance's index."""
        if map_indexes is None and self.map_index >= 0:
            return [self.xcom.get(key)]
        if map_indexes is not None and map_indexes != self.map_index:
            return None
        return self.xcom.get(key)


def first_event(trigger: Any) -> dict[str, Any]:
    """Run a trigger in a fresh event loop, as the triggerer would, and return its first event."""

    async def collect() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(collect())


@contextlib.contextmanager
def as_in_the_triggerer(trigger: Any, ti: FakeTaskInstance) -> Iterator[None]:
    """Give a trigger what the triggerer gives it: its task instance, and the SDK's XCom.set
    (which there goes through the triggerer's supervisor) pushing into ``ti``."""
    from airflow.sdk.execution_time.xcom import XCom

    def push(key: str, value: Any, **where: Any) -> None:
        assert (where["dag_id"], where["task_id"], where["map_index"]) == (ti.dag_id, ti.task_id, ti.map_index)
        ti.xcom_push(key=key, value=value)

    trigger.task_instance = ti
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(XCom, "set", staticmethod(push))
        yield


def task_context(**ti_fields: Any) -> dict[str, Any]:
    """A minimal task context: a :class:`FakeTaskInstance` under ``ti``."""
    return {"ti": FakeTaskInstance(**ti_fields)}


@pytest.fixture
def mock_conn(monkeypatch: pytest.MonkeyPatch) -> str:
    """The default connection pointed at a URL that only requests-mock answers."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_BROWSER_USE_DEFAULT",
        f'{{"conn_type": "browser_use", "host": "{MOCK_BASE_URL}", "password": "{MOCK_API_KEY}"}}',
    )
    return MOCK_BASE_URL


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """Everything logged so far: Airflow's structlog writes to the console, stdlib to caplog."""
    caplog.set_level("DEBUG")
    seen: list[str] = []

    def read() -> str:
        out, err = capfd.readouterr()
        seen.append(out + err)
        return "".join(seen) + caplog.text

    return read


@pytest.fixture
def emulator(browser_use_emulator: BrowserUseEmulator) -> Iterator[BrowserUseEmulator]:
    """The plugin's emulator (fresh state, default connection set) under a shorter name."""
    yield browser_use_emulator
