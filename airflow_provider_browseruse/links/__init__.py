"""Extra links to the Browser Use web app."""

from airflow_provider_browseruse.links.browser_use import BrowserUseSessionLink

__all__ = ["BrowserUseSessionLink"]
