"""Triggers: wait for a Browser Use task or session in the triggerer, holding no worker slot.

Each trigger polls with :class:`~airflow_provider_browseruse.hooks.browser_use.BrowserUseAsyncHook`
(one connection pool per event loop), under the hook's retry policy, until its condition holds
or its wall-clock deadline passes, and fires one event. Its kwargs hold ids and the connection
id, never a key. Operators check every event with ``_common.task_event`` or
``_common.session_event`` before acting on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_provider_browseruse import _common, _wire, _wire_v4
from airflow_provider_browseruse.exceptions import BrowserUseAPIError
from airflow_provider_browseruse.hooks.browser_use import BrowserUseAsyncHook


class _PollingTrigger(BaseTrigger):
    """Poll ``check()`` every ``poll_interval`` seconds until it returns an event or time is up."""

    id_key: str  # the kwarg naming the remote object, also sent in every event

    def __init__(self, *, watched_id: str, browser_use_conn_id: str, poll_interval: float, end_time: float) -> None:
        super().__init__()
        self.watched_id = watched_id
        self.browser_use_conn_id = browser_use_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time  # time.time(): the worker and the triggerer are different processes

    def _kwargs(self) -> dict[str, Any]:
        return {
            self.id_key: self.watched_id,
            "browser_use_conn_id": self.browser_use_conn_id,
            "poll_interval": self.poll_interval,
            "end_time": self.end_time,
        }

    def hook(self) -> BrowserUseAsyncHook:
        return BrowserUseAsyncHook(self.browser_use_conn_id)

    def event(self, kind: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent({"event": kind, self.id_key: self.watched_id, **fields})

    async def check(self, hook: BrowserUseAsyncHook) -> TriggerEvent | None:
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook()
        while True:
            event = await self._check_within_deadline(hook)
            if event is not None:
                yield event
                return
            remaining = self.end_time - time.time()
            if remaining <= 0:
                yield self._timeout_event()
                return
            await asyncio.sleep(min(self.poll_interval, remaining))

    async def _check_within_deadline(self, hook: BrowserUseAsyncHook) -> TriggerEvent | None:
        """One check, bounded by the time left, that turns every failure into an event.

        Whatever a server answers must not kill the trigger: Airflow would then fail the task
        without ``execute_complete``, and the remote work would never be stopped.
        """
        remaining = self.end_time - time.time()
        if remaining <= 0:
            return self._timeout_event()
        try:
            return await asyncio.wait_for(self.check(hook), remaining)
        except asyncio.TimeoutError:
            return self._timeout_event()
        except BrowserUseAPIError as error:
            return self.event("error", message=str(error), http_status=error.http_status)
        except Exception as error:
            self.log.exception("Checking %s %s failed unexpectedly", self.id_key, self.watched_id)
            message = hook.redact(f"unexpected {type(error).__name__}: {error}")
            return self.event("error", message=message, http_status=None)

    def _timeout_event(self) -> TriggerEvent:
        return self.event("timeout", message=f"still waiting at the deadline ({self.end_time:.0f})")


class TaskStatusTrigger(_PollingTrigger):
    """Fire when a task has ended (``ended``), passed ``max_cost_usd`` while running
    (``over_budget``, with its ``cost``; the trigger stops it first, and its session too when
    it ``owns_session``, and says whether that worked in ``stopped``), at the deadline
    (``timeout``) or on an API error (``error``).

    With ``end_from_trigger``, a task that ended well ends its Airflow task here, with no worker:
    the trigger fetches the final task, judges it by ``success_policy``, parses its output
    against ``output_schema``, pushes the XComs the operator would push (``task``,
    ``cost_usd``, and the output as ``return_value`` when ``push_output``), and fires Airflow's
    ``TaskSuccessEvent``.
    A failure or an output that does not parse fires ``ended`` as without it, and the operator
    handles it on a worker; an error fetching the task is an ``error`` event, as for a poll.

    With ``stop_on_give_up``, a user's kill of the deferred task (Airflow 3.3+) stops the remote
    task, and its session too when the operator ``owns_session`` (a one-off session it started);
    a triggerer restart never does.
    """

    id_key = "browser_use_task_id"

    def __init__(
        self,
        browser_use_task_id: str,
        *,
        browser_use_conn_id: str = "browser_use_default",
        poll_interval: float = 5.0,
        end_time: float,
        stop_on_give_up: bool = False,
        owns_session: bool = False,
        end_from_trigger: bool = False,
        success_policy: str = _wire.SuccessPolicy.AGENT.value,
        output_schema: dict[str, Any] | None = None,
        push_output: bool = True,
        max_cost_usd: float | None = None,
    ) -> None:
        super().__init__(
            watched_id=browser_use_task_id,
            browser_use_conn_id=browser_use_conn_id,
            poll_interval=poll_interval,
            end_time=end_time,
        )
        self.stop_on_give_up = stop_on_give_up
        self.owns_session = owns_session
        self.end_from_trigger = end_from_trigger
        self.success_policy = _wire.success_policy(success_policy)
        self.output_schema = output_schema
        self.push_output = push_output
        self.max_cost_usd = max_cost_usd
        self._last_status: str | None = None
        self._progress = _common.Progress()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.TaskStatusTrigger",
            {
                **self._kwargs(),
                "stop_on_give_up": self.stop_on_give_up,
                "owns_session": self.owns_session,
                "end_from_trigger": self.end_from_trigger,
                "success_policy": self.success_policy.value,
                "output_schema": self.output_schema,
                "push_output": self.push_output,
                "max_cost_usd": self.max_cost_usd,
            },
        )

    async def check(self, hook: BrowserUseAsyncHook) -> TriggerEvent | None:
        view = await hook.get_task_status(self.watched_id)
        status = _wire.task_status(view)
        if status in _wire.TASK_TERMINAL_STATUSES:
            if self.end_from_trigger and status is _wire.TaskStatus.FINISHED:
                success = await self._success_event(hook)
                if success is not None:
                    return success
            return self.event("ended", task_status=view["status"])
        cost = _wire.over_budget(view, self.max_cost_usd)
        if cost is not None:
            return self.event("over_budget", cost=str(cost), stopped=await self._stop_at_budget(hook, cost))
        if view.get("status") != self._last_status:
            self._last_status = view.get("status")
            if status is None:
                self.log.warning(
                    "Task %s has a status this provider does not know: %r", self.watched_id, view["status"]
                )
            else:
                self.log.info("Task %s is %s.", self.watched_id, self._last_status)
        elif self._progress.due():
            facts = _wire.progress_facts(await hook.get_task(self.watched_id))
            self.log.info("Task %s is still %s (%s; %s).", self.watched_id, self._last_status, self._progress, facts)
        return None

    async def _success_event(self, hook: BrowserUseAsyncHook) -> TriggerEvent | None:
        """Airflow's TaskSuccessEvent for a task that ended well; None leaves the rest to a worker.

        A failed fetch is the wait's error, as a failed poll is (final answers are not asked again).
        """
        task = await hook.get_task(self.watched_id)
        if _wire.task_failure(task, self.success_policy) is not None:
            return None  # the worker raises BrowserUseTaskError, and Airflow's retries apply
        try:
            output = _wire.parse_output(task.get("output"), self.output_schema)
        except ValueError:
            return None  # the worker fails it with the schema error
        xcoms: dict[str, Any] = {
            _common.TASK_KEY: _wire.task_without_steps(task),
            _common.COST_KEY: float(_wire.to_decimal(task.get("cost"))),
        }
        if self.push_output:
            xcoms["return_value"] = output
        if not await self._push_xcoms(xcoms):
            return None
        self.log.info("%s. Ended here, in the triggerer: no worker needed.", _wire.outcome(task))
        return TaskSuccessEvent()

    async def _push_xcoms(self, xcoms: dict[str, Any]) -> bool:
        """Push XComs as a worker does (the SDK's XCom, through the triggerer's supervisor).

        Not through TaskSuccessEvent's own ``xcoms``: Airflow 3.3 stores those JSON-encoded once
        more, and a downstream task would get the string '"..."'. Without a task instance (a
        trigger run outside a triggerer) nothing is pushed, and a worker finishes the task.
        """
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return False
        from airflow.sdk.execution_time.xcom import XCom
        from asgiref.sync import sync_to_async

        where = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}
        for key, value in xcoms.items():  # each waits for a round of the triggerer's supervisor
            await sync_to_async(XCom.set)(key=key, value=value, **where)
        return True

    async def _stop_at_budget(self, hook: BrowserUseAsyncHook, cost: Any) -> bool:
        """Stop the task here, at once: a worker may take minutes to take the event."""
        try:
            await hook.stop_task(self.watched_id, stop_session=self.owns_session)
        except Exception as error:
            self.log.error(
                "Could not stop task %s at its budget (%s); a worker will try.",
                self.watched_id,
                hook.redact(str(error)),
            )
            return False
        self.log.warning(
            "Stopped task %s: its cost $%s passed max_cost_usd=%s.", self.watched_id, cost, self.max_cost_usd
        )
        return True

    async def on_kill(self) -> None:
        if not self.stop_on_give_up:
            return
        await self.hook().stop_task(self.watched_id, stop_session=self.owns_session)
        self.log.info("Stopped Browser Use task %s: its Airflow task was killed.", self.watched_id)


class SessionStatusTrigger(_PollingTrigger):
    """Fire when a session is stopped (``stopped``), at the deadline (``timeout``) or on an API
    error (``error``, with ``http_status`` 404 for an unknown session)."""

    id_key = "session_id"

    def __init__(
        self,
        session_id: str,
        *,
        browser_use_conn_id: str = "browser_use_default",
        poll_interval: float = 5.0,
        end_time: float,
    ) -> None:
        super().__init__(
            watched_id=session_id,
            browser_use_conn_id=browser_use_conn_id,
            poll_interval=poll_interval,
            end_time=end_time,
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.SessionStatusTrigger", self._kwargs()

    async def check(self, hook: BrowserUseAsyncHook) -> TriggerEvent | None:
        view = await hook.get_session(self.watched_id)
        if _wire.session_status(view) is _wire.SessionStatus.STOPPED:
            return self.event("stopped")
        return None


class AgentRunTrigger(_PollingTrigger):
    """Wait for a v4 agent run: fire when it has ended (``ended``, with ``run_status``), passed
    ``max_cost_usd`` while running (``over_budget``, with its ``cost``; the trigger cancels it
    first and says whether that worked in ``stopped``), at the deadline (``timeout``) or on an
    API error (``error``). The run's status is polled; with ``max_cost_usd`` the whole run,
    which alone carries the cost.

    The operator finishes on a worker (checking a structured answer, asking for a repair,
    copying files, stopping the browser). With ``cancel_on_kill``, a user's kill of the deferred
    task (Airflow 3.3+) cancels the run and stops the browsers of ``browser_session_id`` (a
    session the operator started); a triggerer restart never does.
    """

    id_key = _common.RUN_ID_KEY

    def __init__(
        self,
        run_id: str,
        *,
        browser_use_conn_id: str = "browser_use_default",
        poll_interval: float = 5.0,
        end_time: float,
        max_cost_usd: float | None = None,
        cancel_on_kill: bool = False,
        browser_session_id: str | None = None,
    ) -> None:
        super().__init__(
            watched_id=run_id, browser_use_conn_id=browser_use_conn_id, poll_interval=poll_interval, end_time=end_time
        )
        self.max_cost_usd = max_cost_usd
        self.cancel_on_kill = cancel_on_kill
        self.browser_session_id = browser_session_id
        self._last_status: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.AgentRunTrigger",
            {
                **self._kwargs(),
                "max_cost_usd": self.max_cost_usd,
                "cancel_on_kill": self.cancel_on_kill,
                "browser_session_id": self.browser_session_id,
            },
        )

    async def check(self, hook: BrowserUseAsyncHook) -> TriggerEvent | None:
        if self.max_cost_usd is not None:
            view = await hook.get_run(self.watched_id)
        else:
            view = await hook.get_run_status(self.watched_id)
        if _wire_v4.is_terminal(view):
            return self.event("ended", run_status=view["status"])
        cost = _wire_v4.over_budget(view, self.max_cost_usd)
        if cost is not None:
            return self.event("over_budget", cost=str(cost), stopped=await self._cancel_at_budget(hook, cost))
        if view.get("status") != self._last_status:
            self._last_status = view.get("status")
            self.log.info("Run %s is %s.", self.watched_id, self._last_status)
        return None

    async def _cancel_at_budget(self, hook: BrowserUseAsyncHook, cost: Any) -> bool:
        try:
            await hook.cancel_run(self.watched_id)
        except Exception as error:
            self.log.error(
                "Could not cancel run %s at its budget (%s); a worker will try.",
                self.watched_id,
                hook.redact(str(error)),
            )
            return False
        self.log.warning(
            "Cancelled run %s: its cost $%s passed max_cost_usd=%s.", self.watched_id, cost, self.max_cost_usd
        )
        return True

    async def on_kill(self) -> None:
        """Cancel the run and stop the browser of the session the operator started: each tried
        whatever became of the other."""
        if not self.cancel_on_kill:
            return
        hook = self.hook()
        try:
            await hook.cancel_run(self.watched_id)
            self.log.info("Cancelled Browser Use run %s: its Airflow task was killed.", self.watched_id)
        except Exception as error:
            self.log.error("Could not cancel run %s (%s): cancel it by hand.", self.watched_id, hook.redact(str(error)))
        if self.browser_session_id is not None:
            try:
                await hook.stop_agent_session_browsers(self.browser_session_id)
                self.log.info("Stopped the browser of session %s.", self.browser_session_id)
            except Exception as error:
                self.log.error(
                    "Could not stop the browser of session %s (%s): stop it by hand.",
                    self.browser_session_id,
                    hook.redact(str(error)),
                )
