"""Hooks for the Browser Use Cloud API."""

from airflow_provider_browseruse.hooks.browser_use import BrowserUseAsyncHook, BrowserUseHook

__all__ = ["BrowserUseAsyncHook", "BrowserUseHook"]
