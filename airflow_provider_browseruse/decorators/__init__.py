"""TaskFlow decorators: ``@task.browser_use`` (registered through the provider info)."""

from airflow_provider_browseruse.decorators.browser_use import browser_use_task

__all__ = ["browser_use_task"]
