"""OpenLineage facets of a finished agent task. Imported only by ``get_openlineage_facets_on_complete``,
which Airflow calls only when the OpenLineage provider is installed: no hard dependency.

Naming follows the OpenLineage dataset naming spec: a web page is namespace ``https://host``
with its path as the name; a local file is namespace ``file`` with its absolute path; object
storage is namespace ``s3://bucket`` (``gs://``, ...) with the key as the name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.openlineage.facet import Dataset, RunFacet
from airflow.providers.openlineage.extractors import OperatorLineage
from attrs import define

from airflow_provider_browseruse import _wire

if TYPE_CHECKING:
    from airflow_provider_browseruse._common import FinishedTask

#: The key of the run facet in the OpenLineage event.
RUN_FACET_KEY = "browserUseTask"


@define
class BrowserUseTaskRunFacet(RunFacet):
    """What the agent did: the Browser Use task and session, its model, steps, cost and verdicts."""

    taskId: str
    sessionId: str | None
    status: str | None
    llm: str | None
    steps: int
    costUsd: float
    isSuccess: bool | None
    judgeVerdict: bool | None


def web_dataset(url: str) -> Dataset | None:
    """A page as a dataset (query and fragment left out: they may carry tokens); None if not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}", name=parts.path or "/")


def file_dataset(path: str) -> Dataset:
    """A saved output file (an ObjectStoragePath's string) as a dataset."""
    parts = urlsplit(path)
    if parts.scheme in ("", "file", "local"):
        return Dataset(namespace="file", name=parts.path)
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/"))


def operator_lineage(
    finished: FinishedTask | None, start_url: str | None, allowed_domains: Sequence[str] | None
) -> OperatorLineage:
    """Inputs (the start URL and the allowed domains), outputs (the saved files), and the run facet.

    Before the task finished well (``finished`` None) there are only the inputs.
    """
    inputs = [web_dataset(start_url)] if start_url else []
    inputs += [web_dataset(f"https://{domain}") for domain in allowed_domains or ()]
    unique = list({(d.namespace, d.name): d for d in inputs if d is not None}.values())
    if finished is None:
        return OperatorLineage(inputs=unique)
    task: dict[str, Any] = finished.task
    facet = BrowserUseTaskRunFacet(
        taskId=str(task.get("id")),
        sessionId=task.get("sessionId"),
        status=task.get("status"),
        llm=task.get("llm"),
        steps=len(task.get("steps") or []),
        costUsd=float(_wire.to_decimal(task.get("cost"))),
        isSuccess=task.get("isSuccess"),
        judgeVerdict=task.get("judgeVerdict"),
    )
    return OperatorLineage(
        inputs=unique,
        outputs=[file_dataset(path) for path in finished.output_files],
        run_facets={RUN_FACET_KEY: facet},
    )
