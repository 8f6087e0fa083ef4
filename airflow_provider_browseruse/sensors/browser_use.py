"""Sensors for the Browser Use Cloud API: one status read per poke."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_browseruse import _common, _wire, _wire_v4
from airflow_provider_browseruse._compat import AirflowException, AirflowFailException, AirflowSensorTimeout
from airflow_provider_browseruse.exceptions import BrowserUseAPIError, BrowserUseTaskError
from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook
from airflow_provider_browseruse.links.browser_use import BrowserUseSessionLink

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger

#: The longest sensor timeout accepted: a year.
SENSOR_TIMEOUT_LIMIT = 365 * 24 * 3600.0

# The triggers module is imported only when a sensor defers: airflow.triggers.base costs every
# DAG file that imports these sensors ~8 ms (make bench).


class BrowserUseBaseSensor(BaseSensorOperator):
    """Holds the connection and the watched id; with ``deferrable``, checks once, then waits in
    the triggerer."""

    operator_extra_links = (BrowserUseSessionLink(),)
    #: The parameter naming what the sensor watches (``session_id`` or ``browser_use_task_id``).
    watched_parameter: str
    #: The trigger event that means the condition holds.
    done_event: str

    def __init__(
        self, *, browser_use_conn_id: str = "browser_use_default", deferrable: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _wire.check_seconds(self.poke_interval, "poke_interval")
        # Airflow's own sensor timeout may be long (its default is 7 days), but never NaN or infinite.
        _wire.check_seconds(self.timeout, "timeout", maximum=SENSOR_TIMEOUT_LIMIT)
        self.browser_use_conn_id = browser_use_conn_id
        self.deferrable = _common.default_deferrable() if deferrable is None else deferrable

    @cached_property
    def hook(self) -> BrowserUseHook:
        return BrowserUseHook(self.browser_use_conn_id)

    def pre_execute(self, context: Context) -> None:
        _common.reserve_session_link(context["ti"])
        super().pre_execute(context)

    @cached_property
    def watched_id(self) -> str:
        """The rendered id of what this sensor watches, checked once (a bad one fails without retries)."""
        return _common.require_id(getattr(self, self.watched_parameter), self.watched_parameter)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        checked = self.poke(context)
        if checked.is_done:
            return checked.xcom_value
        deadline = _common.wall_clock_deadline(float(self.timeout), self.execution_timeout, context["ti"])
        self.defer(trigger=self.trigger(deadline), method_name="execute_complete")

    def poke(self, context: Context) -> PokeReturnValue:
        raise NotImplementedError

    def trigger(self, end_time: float) -> BaseTrigger:
        raise NotImplementedError

    def checked_event(self, event: Any) -> dict[str, Any]:
        raise NotImplementedError

    def read_watched(self, hook_method: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """Return ``hook_method(watched_id)``; an unknown id fails at once (no further pokes)."""
        try:
            return hook_method(self.watched_id)
        except BrowserUseAPIError as error:
            if error.is_not_found:
                raise AirflowFailException(f"{error}. Is {self.watched_parameter} right?") from error
            raise

    def execute_complete(self, context: Context, event: Any) -> Any:
        """Resume after the deferred wait: one last poke on success, a clear failure otherwise."""
        event = self.checked_event(event)
        if event["event"] == "timeout":
            raise AirflowSensorTimeout(f"{self.task_id}: the wait timed out after {self.timeout} s")
        if event["event"] == "error":
            if event.get("http_status") == 404:
                raise AirflowFailException(event.get("message"))
            raise AirflowException(event.get("message"))
        checked = self.poke(context)
        if event["event"] != self.done_event or not checked.is_done:
            raise AirflowException(f"The trigger reported {event!r} but the API does not agree")
        return checked.xcom_value


class SessionStoppedSensor(BrowserUseBaseSensor):
    """Wait until a Browser Use session is ``stopped``.

    Works in ``poke`` and ``reschedule`` mode. When done, returns the final session without its
    access-granting URLs and pushes ``task_outputs``, exactly as
    :class:`~airflow_provider_browseruse.operators.browser_use.StopSessionOperator`. An unknown
    session fails at once (no further pokes).

    :param session_id: the session to watch (templated).
    :param browser_use_conn_id: the Airflow connection (type ``browser_use``).
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``); the
        status is checked once first, and ``poke_interval`` and ``timeout`` still apply.
    """

    template_fields: Sequence[str] = ("session_id",)
    watched_parameter = "session_id"
    done_event = "stopped"

    def __init__(self, *, session_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _common.check_id_if_known(session_id, "session_id")
        self.session_id = session_id

    def trigger(self, end_time: float) -> BaseTrigger:
        from airflow_provider_browseruse.triggers.browser_use import SessionStatusTrigger

        return SessionStatusTrigger(
            self.watched_id,
            browser_use_conn_id=self.browser_use_conn_id,
            poll_interval=float(self.poke_interval),
            end_time=end_time,
        )

    def checked_event(self, event: Any) -> dict[str, Any]:
        return _common.session_event(event, self.watched_id)

    def poke(self, context: Context) -> PokeReturnValue:
        _common.push_session(context["ti"], self.hook, self.watched_id)
        view = self.read_watched(self.hook.get_session)
        if _wire.session_status(view) is not _wire.SessionStatus.STOPPED:
            self.log.info("Session %s is %s.", self.watched_id, view.get("status"))
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=_common.publish_session(context["ti"], self.log, view))


class TaskCompletedSensor(BrowserUseBaseSensor):
    """Wait until a Browser Use task has ended, and judge it as ``RunTaskOperator`` does.

    Done when the task is ``finished`` and passes ``success_policy``; fails on ``failed`` or
    ``stopped`` (or a finished task the policy rejects) with a ``BrowserUseTaskError``, and at
    once on an unknown task. Pushes ``browser_use_task_id``, ``session_id`` and ``task`` and
    returns the output, like RunTaskOperator.

    :param browser_use_task_id: the Browser Use task to watch (templated).
    :param success_policy: ``agent`` (default), ``judge`` or ``lenient``.
    :param structured_output: the task's JSON Schema dict or pydantic model, to parse the output.
    :param output_files_path: where to save the task's output files (templated).
    :param max_cost_usd: a budget in USD: a task still running past it is stopped, and the sensor
        fails without retries, naming the cost and the cap.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = ("browser_use_task_id", "output_files_path")
    watched_parameter = "browser_use_task_id"
    done_event = "ended"

    def __init__(
        self,
        *,
        browser_use_task_id: str,
        success_policy: str | _wire.SuccessPolicy = _wire.SuccessPolicy.AGENT,
        structured_output: Any = None,
        output_files_path: Any = None,
        max_cost_usd: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _common.check_id_if_known(browser_use_task_id, "browser_use_task_id")
        _common.schema_of(structured_output)
        if max_cost_usd is not None:
            _wire.check_cost_cap(max_cost_usd, "max_cost_usd")
        self.max_cost_usd = max_cost_usd
        self.browser_use_task_id = browser_use_task_id
        self.success_policy = _wire.success_policy(success_policy)
        self.structured_output = structured_output
        self.output_files_path = output_files_path

    def trigger(self, end_time: float) -> BaseTrigger:
        from airflow_provider_browseruse.triggers.browser_use import TaskStatusTrigger

        return TaskStatusTrigger(
            self.watched_id,
            browser_use_conn_id=self.browser_use_conn_id,
            poll_interval=float(self.poke_interval),
            end_time=end_time,
            max_cost_usd=self.max_cost_usd,
        )

    def checked_event(self, event: Any) -> dict[str, Any]:
        return _common.task_event(event, self.watched_id)

    def execute_complete(self, context: Context, event: Any) -> Any:
        """Resume after the deferred wait; a task past its budget is stopped and fails the sensor."""
        checked = self.checked_event(event)
        if checked["event"] == "over_budget":
            self._stop_over_budget(
                context, _wire.to_decimal(checked.get("cost")), stopped=checked.get("stopped") is True
            )
        return super().execute_complete(context, event)

    def poke(self, context: Context) -> PokeReturnValue:
        view = self.read_watched(self.hook.get_task_status)
        if _wire.task_status(view) not in _wire.TASK_TERMINAL_STATUSES:
            cost = _wire.over_budget(view, self.max_cost_usd)
            if cost is not None:
                self._stop_over_budget(context, cost)
            self.log.info("Task %s is %s.", self.watched_id, view.get("status"))
            return PokeReturnValue(is_done=False)
        context["ti"].xcom_push(key=_common.BROWSER_USE_TASK_ID_KEY, value=self.watched_id)
        finished = _common.finish_task(
            self.hook,
            context["ti"],
            self.log,
            self.watched_id,
            success_policy=self.success_policy,
            structured_output=self.structured_output,
            output_files_path=self.output_files_path,
        )
        _common.annotate_outlets(context, self.outlets, finished, self.log)
        return PokeReturnValue(is_done=True, xcom_value=finished.output)

    def _stop_over_budget(self, context: Context, cost: Any, *, stopped: bool = False) -> None:
        assert self.max_cost_usd is not None
        if not stopped:  # a one-off session closes with its task
            stopped = _common.stop_task_quietly(self.hook, self.log, self.watched_id, stop_session=False)
        _common.push_cost(context["ti"], cost)
        raise _common.over_budget_failure(self.watched_id, cost, self.max_cost_usd, stopped=stopped)


class AgentRunSensor(BrowserUseBaseSensor):
    """Wait until a Browser Use v4 agent run has ended, and judge it as ``RunAgentOperator`` does.

    Done when the run is ``completed`` and passes ``success_policy`` (with ``judge``, once its
    verdict has landed); fails on ``failed`` or ``cancelled`` with a ``BrowserUseTaskError``, and
    at once on an unknown run. Pushes ``run_id``, ``session_id`` and ``run`` and returns the
    answer (parsed and checked with ``structured_output``).

    :param run_id: the run to watch (templated).
    :param success_policy: ``agent`` (default; ``completed`` is enough), ``lenient`` or ``judge``.
    :param structured_output: the run's JSON Schema dict or pydantic model, to parse the answer.
    :param max_cost_usd: a budget in USD: a run still going past it is cancelled, and the sensor
        fails without retries, naming the cost and the cap.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = ("run_id",)
    watched_parameter = "run_id"
    done_event = "ended"

    def __init__(
        self,
        *,
        run_id: str,
        success_policy: str | _wire.SuccessPolicy = _wire.SuccessPolicy.AGENT,
        structured_output: Any = None,
        max_cost_usd: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _common.check_id_if_known(run_id, "run_id")
        schema = _common.schema_of(structured_output)
        if schema is not None and not isinstance(structured_output, type):
            _wire.check_json_schema(schema, "structured_output")
        if max_cost_usd is not None:
            _wire.check_cost_cap(max_cost_usd, "max_cost_usd")
        self.run_id = run_id
        self.success_policy = _wire.success_policy(success_policy)
        self.structured_output = structured_output
        self.max_cost_usd = max_cost_usd

    def trigger(self, end_time: float) -> BaseTrigger:
        from airflow_provider_browseruse.triggers.browser_use import AgentRunTrigger

        return AgentRunTrigger(
            self.watched_id,
            browser_use_conn_id=self.browser_use_conn_id,
            poll_interval=float(self.poke_interval),
            end_time=end_time,
            max_cost_usd=self.max_cost_usd,
        )

    def checked_event(self, event: Any) -> dict[str, Any]:
        return _common.run_event(event, self.watched_id)

    def execute_complete(self, context: Context, event: Any) -> Any:
        """Resume after the deferred wait; a run past its budget fails the sensor; an ended run
        is judged once its verdict has landed (the judge works after the run ends)."""
        checked = self.checked_event(event)
        if checked["event"] == "over_budget":
            self._over_budget(context, _wire.to_decimal(checked.get("cost")), cancelled=checked.get("stopped") is True)
        if checked["event"] != "ended":
            return super().execute_complete(context, event)
        while not (result := self.poke(context)).is_done:  # bounded: poke fails past JUDGEMENT_WAIT
            time.sleep(min(float(self.poke_interval), 5.0))
        return result.xcom_value

    def poke(self, context: Context) -> PokeReturnValue:
        reader = self.hook.get_run if self.max_cost_usd is not None else self.hook.get_run_status
        view = self.read_watched(reader)
        if not _wire_v4.is_terminal(view):
            cost = _wire_v4.over_budget(view, self.max_cost_usd)
            if cost is not None:
                self._over_budget(context, cost)
            self.log.info("Run %s is %s.", self.watched_id, view.get("status"))
            return PokeReturnValue(is_done=False)
        ti = context["ti"]
        run = self.hook.get_run(self.watched_id)
        if _wire_v4.awaits_judgement(run, self.success_policy):
            # The end as the API dates it; else when this sensor first saw it (a fixed moment).
            self._end_seen = getattr(self, "_end_seen", None) or time.time()
            ended_at = _wire.parse_timestamp(run.get("updatedAt")) or self._end_seen
            if time.time() - ended_at <= _wire_v4.JUDGEMENT_WAIT:
                self.log.info("Run %s has ended; waiting for the judge's verdict.", self.watched_id)
                return PokeReturnValue(is_done=False)
            raise BrowserUseTaskError(
                f"Browser Use run {self.watched_id} ended, but no judge's verdict landed within "
                f"{_wire_v4.JUDGEMENT_WAIT:.0f} s (was the run started with judge?)",
                run,
            )
        ti.xcom_push(key=_common.RUN_ID_KEY, value=self.watched_id)
        ti.xcom_push(key=_common.RUN_KEY, value=_wire_v4.run_for_xcom(run))
        _common.push_agent_session(ti, self.hook, str(run["sessionId"]))
        _common.push_cost(ti, _wire_v4.run_cost(run))
        self.log.info("%s.", _wire_v4.outcome(run))
        failure = _wire_v4.run_failure(run, self.success_policy)
        if failure is not None:
            raise BrowserUseTaskError(failure, run)
        try:
            output = _common.parsed_run_output(run, self.structured_output)
        except ValueError as error:
            raise BrowserUseTaskError(f"Browser Use run {self.watched_id}: {error}", run) from error
        return PokeReturnValue(is_done=True, xcom_value=output)

    def _over_budget(self, context: Context, cost: Any, *, cancelled: bool = False) -> None:
        assert self.max_cost_usd is not None
        if not cancelled:
            cancelled = _common.stop_run_quietly(self.hook, self.log, self.watched_id, None)
        _common.push_cost(context["ti"], cost)
        raise _common.over_budget_run_failure(self.watched_id, cost, self.max_cost_usd, cancelled=cancelled)
