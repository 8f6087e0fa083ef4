"""Assets and OpenLineage: what a finished agent task tells downstream DAGs and lineage tools."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_browseruse import testing
from airflow_provider_browseruse.operators.browser_use import RunTaskOperator
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import task_context

START_URL = "https://books.toscrape.com/catalogue/page-1.html?token=s3cr3t-query#frag"


def finished_operator(emulator: BrowserUseEmulator, tmp_path: Path, **kwargs: Any) -> tuple[RunTaskOperator, Any]:
    emulator.state.scenario = Scenario().add(
        "export",
        duration=0.05,
        cost="0.25",
        output="saved",
        output_files=[{"file_name": "books.csv", "content": "t,p\n"}],
    )
    op = RunTaskOperator(
        task_id="run",
        task="export the books",
        start_url=START_URL,
        allowed_domains=["books.toscrape.com", "*.toscrape.com"],
        output_files_path=f"file://{tmp_path}",
        poll_interval=0.05,
        **kwargs,
    )
    context = task_context()
    assert op.execute(context) == "saved"
    return op, context


def test_openlineage_facets_name_the_pages_the_files_and_the_run(emulator: BrowserUseEmulator, tmp_path: Path) -> None:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from openlineage.client.serde import Serde

    op, context = finished_operator(emulator, tmp_path)
    task_id = context["ti"].xcom["browser_use_task_id"]
    lineage = op.get_openlineage_facets_on_complete(task_instance=None)
    assert lineage.inputs == [
        Dataset(namespace="https://books.toscrape.com", name="/catalogue/page-1.html"),
        Dataset(namespace="https://books.toscrape.com", name="/"),
        Dataset(namespace="https://*.toscrape.com", name="/"),
    ]
    assert lineage.outputs == [Dataset(namespace="file", name=str(tmp_path / task_id / "books.csv"))]
    facet = Serde.to_dict(lineage.run_facets["browserUseTask"])
    remote = emulator.state.get_task(task_id)
    assert {key: facet[key] for key in ("taskId", "sessionId", "status", "llm", "costUsd", "isSuccess")} == {
        "taskId": task_id,
        "sessionId": remote["sessionId"],
        "status": "finished",
        "llm": remote["llm"],
        "costUsd": 0.25,
        "isSuccess": True,
    }
    assert facet["steps"] == len(remote["steps"])
    assert "s3cr3t" not in json.dumps([Serde.to_dict(d) for d in lineage.inputs])  # a query may carry a token


def test_the_openlineage_provider_reads_the_operators_facets(emulator: BrowserUseEmulator, tmp_path: Path) -> None:
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.utils.state import TaskInstanceState

    op, context = finished_operator(emulator, tmp_path)

    class TaskInstance:  # what the extractor reads of it
        task = op
        dag_id, task_id, map_index, try_number = "dag", "run", -1, 1

    lineage = ExtractorManager().extract_metadata(
        dagrun=SimpleNamespace(run_id="run"),
        task=op,
        task_instance_state=TaskInstanceState.SUCCESS,
        task_instance=TaskInstance(),
    )
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("file", str(tmp_path / context["ti"].xcom["browser_use_task_id"] / "books.csv"))
    ]
    assert "browserUseTask" in lineage.run_facets


def test_before_the_task_finished_lineage_has_only_the_inputs() -> None:
    op = RunTaskOperator(task_id="run", task="job", start_url="https://example.com/a")
    lineage = op.get_openlineage_facets_on_complete(task_instance=None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("https://example.com", "/a")]
    assert lineage.outputs == [] and lineage.run_facets == {}


@pytest.mark.dag
def test_outlet_asset_events_carry_the_tasks_facts_to_a_downstream_dag(
    emulator: BrowserUseEmulator, tmp_path: Path
) -> None:
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.sdk import DAG, Asset
    from airflow.utils.session import create_session

    from airflow_provider_browseruse.sensors.browser_use import TaskCompletedSensor

    books, checked = Asset("s3://shelf/books.csv"), Asset("s3://shelf/checked.txt")
    emulator.state.scenario = (
        Scenario()
        .add(
            "export",
            duration=0.1,
            cost="0.25",
            output="saved",
            output_files=[{"file_name": "books.csv", "content": "x"}],
        )
        .add("check", duration=0.1, cost="0.05", output="ok")
    )
    with DAG("asset_producer", schedule=None, default_args={"retries": 0}) as producer:
        export = RunTaskOperator(
            task_id="export", task="export", poll_interval=0.05, output_files_path=f"file://{tmp_path}", outlets=[books]
        )
        start = RunTaskOperator(task_id="start_check", task="check", wait_for_completion=False)
        wait = TaskCompletedSensor(
            task_id="wait_check", browser_use_task_id=start.output, poke_interval=0.05, outlets=[checked]
        )
        export >> start >> wait
    with DAG("asset_consumer", schedule=[books]) as consumer:
        RunTaskOperator(task_id="use", task="use the books")
    result = testing.run_dag(producer, other_dags=[consumer])  # the consumer is serialized, not run
    assert result.state == "success", result.task_states
    with create_session() as session:
        events = {
            uri: extra
            for uri, extra in session.query(AssetModel.uri, AssetEvent.extra).join(
                AssetEvent, AssetEvent.asset_id == AssetModel.id
            )
        }
    export_id = result.xcom("export", "browser_use_task_id")
    assert events["s3://shelf/books.csv"] == {
        "browser_use_task_id": export_id,
        "session_id": result.xcom("export", "session_id"),
        "status": "finished",
        "cost_usd": 0.25,
        "is_success": True,
        "judge_verdict": None,
        "output_files": [f"file://{tmp_path}/{export_id}/books.csv"],
    }
    assert events["s3://shelf/checked.txt"]["browser_use_task_id"] == result.xcom("start_check")
    assert events["s3://shelf/checked.txt"]["cost_usd"] == 0.05
    with create_session() as session:
        queued = session.query(AssetDagRunQueue.target_dag_id).all()
    assert [row.target_dag_id for row in queued] == ["asset_consumer"]  # its next run gets the event
    assert emulator.active_session_count() == 0
