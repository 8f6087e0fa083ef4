"""``@task.browser_use``: registered through the provider info, run like RunTaskOperator."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import requests_mock as rm
from airflow.sdk import DAG, task

from airflow_provider_browseruse import _common
from airflow_provider_browseruse._compat import AirflowFailException
from airflow_provider_browseruse.decorators.browser_use import _BrowserUseDecoratedOperator, browser_use_task
from airflow_provider_browseruse.operators.browser_use import RunTaskOperator
from airflow_provider_browseruse.testing import BrowserUseEmulator, Scenario
from tests.conftest import TaskDeferred, first_event, task_context


class Shelf(pydantic.BaseModel):
    category: str
    books: int


def operator_of(make: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a decorated function inside a DAG and return the operator it made."""
    with DAG("decorated", schedule=None):
        return make(*args, **kwargs).operator


def test_the_decorator_is_registered_as_task_browser_use() -> None:
    decorator = task.browser_use

    @decorator(poll_interval=1)
    def ask() -> str:
        return "hello"

    op = operator_of(ask)
    assert isinstance(op, _BrowserUseDecoratedOperator) and isinstance(op, RunTaskOperator)
    assert op.poll_interval == 1
    assert op.custom_operator_name == "@task.browser_use"


def test_the_prompt_is_the_return_value_and_the_output_is_the_task_value(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("books about travel", output="11 books", duration=0.1)

    @browser_use_task(poll_interval=0.05, deferrable=False)
    def ask(topic: str, ti: Any = None) -> str:
        return f"Count the books about {topic} (asked by {ti.task_id})."

    op = operator_of(ask, "travel")
    context = task_context(task_id="ask")
    assert op.execute(context) == "11 books"
    [remote] = emulator.state.tasks.values()
    assert remote.prompt == "Count the books about travel (asked by ask)."
    assert context["ti"].xcom[_common.BROWSER_USE_TASK_ID_KEY] == remote.id
    assert op.map_index_label == "Count the books about travel (asked by ask)."
    assert emulator.active_session_count() == 0


@pytest.mark.parametrize("returned", ["", "   ", None, 42, ["a prompt"]])
def test_a_function_that_returns_no_prompt_fails_before_any_request(
    mock_conn: str, requests_mock: rm.Mocker, returned: Any
) -> None:
    @browser_use_task
    def ask() -> Any:
        return returned

    op = operator_of(ask)
    with pytest.raises(AirflowFailException, match=r"ask\(\) must return the prompt for the agent, a non-empty string"):
        op.execute(task_context())
    assert requests_mock.call_count == 0


def test_a_pydantic_return_annotation_is_the_structured_output(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("travel", output_json={"category": "Travel", "books": 11}, duration=0.1)

    @browser_use_task(poll_interval=0.05, deferrable=False)
    def shelf(url: str) -> Shelf:
        return f"Read the shelf at {url} (travel)."

    op = operator_of(shelf, "https://books.toscrape.com/travel")
    assert op.structured_output is Shelf
    assert op.execute(task_context()) == {"category": "Travel", "books": 11}
    [remote] = emulator.state.tasks.values()
    assert remote.output_text == '{"category": "Travel", "books": 11}'


def test_a_return_annotation_that_is_not_a_model_changes_nothing() -> None:
    @browser_use_task
    def ask() -> str:
        return "hello"

    assert operator_of(ask).structured_output is None


def test_a_structured_output_that_contradicts_the_annotation_is_refused() -> None:
    class Other(pydantic.BaseModel):
        x: int

    @browser_use_task(structured_output=Other)
    def shelf() -> Shelf:
        return "read"

    with pytest.raises(ValueError, match="structured_output=.*Other.* differs from the return annotation Shelf"):
        operator_of(shelf)


def test_operator_parameters_are_checked_at_parsing_as_for_the_operator() -> None:
    @browser_use_task(poll_interval=-1)
    def ask() -> str:
        return "hello"

    with pytest.raises(ValueError, match="poll_interval"):
        operator_of(ask)


def test_a_deferred_decorated_task_finishes_without_calling_the_function_again(emulator: BrowserUseEmulator) -> None:
    emulator.state.scenario = Scenario().add("slow job", output="done", duration=0.5)
    calls: list[str] = []

    @browser_use_task(poll_interval=0.1, deferrable=True)
    def ask() -> str:
        calls.append("called")
        return "a slow job"

    context = task_context()
    with pytest.raises(TaskDeferred) as deferred:
        operator_of(ask).execute(context)
    resumed = operator_of(ask)  # the worker resumes a fresh copy: its prompt is not known
    assert resumed.map_index_label == ""
    handed_on = deferred.value.kwargs  # what Airflow stores for the resume
    assert resumed.execute_complete(context, first_event(deferred.value.trigger), **handed_on) == "done"
    assert calls == ["called"]
    assert resumed.map_index_label == "a slow job"  # the UI's label, rendered after the resume
    assert context["ti"].xcom["task"]["task"] == "a slow job"
    assert emulator.active_session_count() == 0


def test_mapped_instances_get_the_default_label_template() -> None:
    @browser_use_task
    def ask(url: str) -> str:
        return f"Read {url}"

    with DAG("mapped", schedule=None):
        mapped = ask.expand(url=["https://a.example", "https://b.example"]).operator
        plain = RunTaskOperator.partial(task_id="plain").expand(task=["a", "b"])
        own = RunTaskOperator.partial(task_id="own", map_index_template="{{ task.task }}").expand(task=["a"])
    assert mapped.map_index_template == _common.MAP_INDEX_TEMPLATE
    assert plain.map_index_template == _common.MAP_INDEX_TEMPLATE
    assert own.map_index_template == "{{ task.task }}"


def test_the_label_is_the_start_url_without_its_secrets_or_the_prompt_cut_short() -> None:
    op = RunTaskOperator(task_id="run", task="x" * 200, start_url="https://user:pw@shop.example/cart?token=abc#f")
    assert op.map_index_label == "https://shop.example/cart"
    op = RunTaskOperator(task_id="run", task="Read\nthe   page " + "y" * 200)
    assert op.map_index_label.startswith("Read the page yyy") and len(op.map_index_label) == 80
