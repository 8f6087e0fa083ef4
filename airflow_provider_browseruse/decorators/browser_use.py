"""``@task.browser_use``: a TaskFlow function that returns the prompt of a Browser Use agent task."""

from __future__ import annotations

import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory
from airflow.sdk.definitions._internal.types import SET_DURING_EXECUTION
from airflow.sdk.definitions.context import context_merge

from airflow_provider_browseruse import _common
from airflow_provider_browseruse._compat import AirflowFailException
from airflow_provider_browseruse.operators.browser_use import RunTaskOperator

try:  # Airflow 3.2+
    from airflow.sdk.bases.decorator import determine_kwargs
except ImportError:  # Airflow 3.1
    from airflow.utils.operator_helpers import determine_kwargs  # type: ignore[no-redef]

if TYPE_CHECKING:
    from airflow.sdk import Context


def pydantic_return_model(function: Callable[..., Any]) -> type | None:
    """The pydantic model a function's return annotation names, or None (also when it cannot be resolved)."""
    annotation = getattr(function, "__annotations__", {}).get("return")
    if annotation is None:
        return None

    def fake() -> None: ...

    fake.__annotations__ = {"return": annotation}
    try:
        resolved = typing.get_type_hints(fake, getattr(function, "__globals__", None)).get("return")
    except (NameError, TypeError):  # a TYPE_CHECKING-only or local name: nothing to infer
        return None
    return resolved if isinstance(resolved, type) and hasattr(resolved, "model_json_schema") else None


class _BrowserUseDecoratedOperator(DecoratedOperator, RunTaskOperator):
    """Calls the decorated function for the prompt, then runs it as :class:`RunTaskOperator` does.

    The function's arguments may be XComArgs and mapped values; the prompt it returns is sent as
    is (it is not rendered as a Jinja template). A pydantic model named by its return annotation
    is the task's ``structured_output`` unless one is given.
    """

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *RunTaskOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **RunTaskOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.browser_use"
    # The prompt is known only once the function ran: show it, not the placeholder, in the UI.
    overwrite_rtif_after_execution: bool = True

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        model = pydantic_return_model(python_callable)
        given = kwargs.get("structured_output")
        if model is not None and given is not None and given is not model:
            raise ValueError(
                f"structured_output={given!r} differs from the return annotation {model.__name__}: "
                "give one, or the same model in both"
            )
        if model is not None:
            kwargs["structured_output"] = model
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            task=SET_DURING_EXECUTION,
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        context_merge(context, self.op_kwargs)
        prompt = self.python_callable(*self.op_args, **determine_kwargs(self.python_callable, self.op_args, context))
        if not isinstance(prompt, str) or not prompt.strip():
            raise AirflowFailException(
                f"@task.browser_use: {self.python_callable.__name__}() must return the prompt for the agent, "
                f"a non-empty string; it returned {prompt!r}"
            )
        self.task = prompt
        return super().execute(context)

    def defer(
        self, *, trigger: Any, method_name: str, kwargs: dict[str, Any] | None = None, timeout: Any = None
    ) -> Any:
        # The worker that resumes has only the placeholder: hand it the prompt, for the UI's label.
        kwargs = {**(kwargs or {}), "prompt": self.task}
        return super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def execute_complete(self, context: Context, event: Any, prompt: str | None = None) -> Any:
        if isinstance(prompt, str):
            self.task = prompt
        return super().execute_complete(context, event)

    def _check_prompt(self) -> None:
        """The prompt is the function's return value: checked in ``execute``, once it exists."""


def browser_use_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Turn a function that returns a prompt into a Browser Use agent task (``@task.browser_use``).

    The decorator takes :class:`~airflow_provider_browseruse.operators.RunTaskOperator`'s
    arguments (all but ``task``, which the function returns), and the task returns what the
    operator returns: the output text, or with ``structured_output`` the parsed and validated JSON.

    :param python_callable: the function; its arguments may be XComArgs, mapped with ``.expand()``.
    """
    kwargs.setdefault("map_index_template", _common.MAP_INDEX_TEMPLATE)
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_BrowserUseDecoratedOperator,
        **kwargs,
    )
