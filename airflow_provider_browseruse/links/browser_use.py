"""The "Browser Use session" extra link: the session's page in the Browser Use web app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from airflow_provider_browseruse._common import SESSION_URL_KEY

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class BrowserUseSessionLink(BaseOperatorLink):
    """Links a task instance to the Browser Use session it worked with."""

    name = "Browser Use session"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(ti_key=ti_key, key=SESSION_URL_KEY) or ""
