"""Apache Airflow provider for the Browser Use Cloud API."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: How the connection form looks: one definition, read by Airflow 3.2+ from the provider info
#: and by older versions through ``BrowserUseHook.get_ui_field_behaviour``.
CONNECTION_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "port", "login"],
    "relabeling": {"password": "API Key", "host": "Base URL"},
    "placeholders": {
        "host": "https://api.browser-use.com/api/v2",
        "password": "bu_...",
        "extra": '{"ui_base_url": "https://cloud.browser-use.com"}',
    },
}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow (the ``apache_airflow_provider`` entry point)."""
    return {
        "package-name": "airflow-provider-browseruse",
        "name": "Browser Use",
        "description": "Run Browser Use Cloud AI browser agents from Airflow DAGs.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "browser_use",
                "hook-class-name": "airflow_provider_browseruse.hooks.browser_use.BrowserUseHook",
                "hook-name": "Browser Use",
                "ui-field-behaviour": {
                    "hidden-fields": CONNECTION_UI_FIELD_BEHAVIOUR["hidden_fields"],
                    "relabeling": CONNECTION_UI_FIELD_BEHAVIOUR["relabeling"],
                    "placeholders": CONNECTION_UI_FIELD_BEHAVIOUR["placeholders"],
                },
            }
        ],
        "task-decorators": [
            {"name": "browser_use", "class-name": "airflow_provider_browseruse.decorators.browser_use.browser_use_task"}
        ],
        "extra-links": ["airflow_provider_browseruse.links.browser_use.BrowserUseSessionLink"],
        "hook-class-names": ["airflow_provider_browseruse.hooks.browser_use.BrowserUseHook"],
    }
