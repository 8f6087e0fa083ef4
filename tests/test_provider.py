"""Packaging: the provider is registered, its connection form is right, and imports stay light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import airflow
import jsonschema

from airflow_provider_browseruse import get_provider_info
from airflow_provider_browseruse.testing import BrowserUseEmulator

AIRFLOW_3_2 = tuple(int(part) for part in airflow.__version__.split(".")[:2]) >= (3, 2)


def test_provider_info_matches_airflows_schema() -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_provider_is_registered_with_its_connection_form() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-browseruse" in manager.providers
    hook = manager.hooks["browser_use"]
    assert hook is not None
    assert (hook.hook_class_name, hook.connection_id_attribute_name, hook.hook_name) == (
        "airflow_provider_browseruse.hooks.browser_use.BrowserUseHook",
        "browser_use_conn_id",
        "Browser Use",
    )
    if AIRFLOW_3_2:  # read from the provider info
        behaviour = manager.field_behaviours["browser_use"]
    else:  # read from the hook, and only where the FAB UI is installed
        from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

        behaviour = BrowserUseHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {"password": "API Key", "host": "Base URL"}
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert "https://api.browser-use.com/api/v2" in json.dumps(behaviour["placeholders"])


def test_airflow_cli_lists_the_provider() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    packages = {p["package_name"] for p in json.loads(listed.stdout[listed.stdout.index("[{") :].splitlines()[0])}
    assert "airflow-provider-browseruse" in packages


def test_dag_parsing_does_not_import_an_http_client() -> None:
    code = (
        "import sys, airflow.sdk\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_browseruse.operators, airflow_provider_browseruse.sensors\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('requests', 'urllib3', 'jsonschema', 'fastapi')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_connection_test_against_the_emulator(emulator: BrowserUseEmulator, monkeypatch) -> None:
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

    ok, message = BrowserUseHook().test_connection()
    assert ok, message
    assert message == f"Connected to Browser Use: project {emulator.state.project_id}, Emulator."
    monkeypatch.setenv(
        "AIRFLOW_CONN_WRONG",
        json.dumps({"conn_type": "browser_use", "host": emulator.base_url, "password": "bu_wrong"}),
    )
    ok, message = BrowserUseHook("wrong").test_connection()
    assert not ok
    assert "the API key was rejected" in message and "'wrong'" in message


def test_the_package_imports_operators_nowhere() -> None:
    """Operators are the top of the house (with the decorator built on them): sensors, triggers and
    the rest never import them."""
    import ast

    package = Path(__file__).resolve().parent.parent / "airflow_provider_browseruse"
    importers = []
    for module in package.rglob("*.py"):
        if module.parent.name in ("operators", "decorators"):
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if any(name.startswith("airflow_provider_browseruse.operators") for name in names):
                importers.append(module.relative_to(package))
    assert importers == []


def test_public_classes_are_re_exported_by_their_packages() -> None:
    from airflow_provider_browseruse import decorators, hooks, links, operators, sensors, triggers

    assert decorators.__all__ == ["browser_use_task"]

    assert set(operators.__all__) >= {
        "CreateSessionOperator",
        "RunTaskOperator",
        "StopSessionOperator",
        "StopTaskOperator",
        "RunAgentOperator",
        "EndAgentSessionOperator",
    }
    assert set(sensors.__all__) >= {"SessionStoppedSensor", "TaskCompletedSensor", "AgentRunSensor"}
    assert set(triggers.__all__) == {"SessionStatusTrigger", "TaskStatusTrigger", "AgentRunTrigger"}
    assert set(hooks.__all__) == {"BrowserUseHook", "BrowserUseAsyncHook"}
    assert links.__all__ == ["BrowserUseSessionLink"]
    for package in (hooks, links, operators, sensors, triggers):
        for name in package.__all__:
            module = getattr(package, name).__module__
            assert module in (f"{package.__name__}.browser_use", f"{package.__name__}.browser_use_v4"), name
