"""Triggers: wait for a Browser Use task or session in the triggerer, holding no worker slot.

Each trigger polls with the shared async client (one connection pool per event loop), under the
hook's retry policy, until its condition holds or its wall-clock deadline passes, and fires one
event. Its kwargs hold ids and the connection id, never a key. Events are dicts validated by
:func:`task_event` and :func:`session_event` before an operator acts on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_browseruse import _wire
from airflow_provider_browseruse._compat import AirflowException

TASK_EVENTS = frozenset({"ended", "timeout", "error"})
SESSION_EVENTS = frozenset({"stopped", "timeout", "error"})


class _PollingTrigger(BaseTrigger):
    """Poll ``check()`` every ``poll_interval`` seconds until it returns an event or time is up."""

    id_key: str  # the kwarg naming the remote object, also sent in every event

    def __init__(self, *, object_id: str, browser_use_conn_id: str, poll_interval: float, end_time: float) -> None:
        super().__init__()
        self.object_id = object_id
        self.browser_use_conn_id = browser_use_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time  # time.time(): the worker and the triggerer are different processes

    def _kwargs(self) -> dict[str, Any]:
        return {
            self.id_key: self.object_id,
            "browser_use_conn_id": self.browser_use_conn_id,
            "poll_interval": self.poll_interval,
            "end_time": self.end_time,
        }

    def hook(self) -> Any:
        from airflow_provider_browseruse.hooks.browser_use import BrowserUseAsyncHook

        return BrowserUseAsyncHook(self.browser_use_conn_id)

    def event(self, kind: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent({"event": kind, self.id_key: self.object_id, **fields})

    async def check(self, hook: Any) -> TriggerEvent | None:
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_browseruse.exceptions import BrowserUseAPIError

        hook = self.hook()
        while True:
            try:
                event = await self.check(hook)
            except BrowserUseAPIError as error:
                yield self.event("error", message=str(error), status_code=error.status_code)
                return
            if event is not None:
                yield event
                return
            remaining = self.end_time - time.time()
            if remaining <= 0:
                yield self.event("timeout", message=f"still waiting at the deadline ({self.end_time:.0f})")
                return
            await asyncio.sleep(min(self.poll_interval, remaining))


class TaskStatusTrigger(_PollingTrigger):
    """Fires when a task has ended (``ended``), at the deadline (``timeout``) or on an API
    error (``error``). With ``stop_on_kill``, a user's kill of the deferred task (Airflow 3.3+)
    stops the remote task, and with ``stop_session_on_kill`` its session too; a triggerer
    restart never does.
    """

    id_key = "browser_use_task_id"

    def __init__(
        self,
        browser_use_task_id: str,
        *,
        browser_use_conn_id: str = "browser_use_default",
        poll_interval: float = 5.0,
        end_time: float,
        stop_on_kill: bool = False,
        stop_session_on_kill: bool = False,
    ) -> None:
        super().__init__(
            object_id=browser_use_task_id,
            browser_use_conn_id=browser_use_conn_id,
            poll_interval=poll_interval,
            end_time=end_time,
        )
        self.stop_on_kill = stop_on_kill
        self.stop_session_on_kill = stop_session_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.TaskStatusTrigger",
            {**self._kwargs(), "stop_on_kill": self.stop_on_kill, "stop_session_on_kill": self.stop_session_on_kill},
        )

    async def check(self, hook: Any) -> TriggerEvent | None:
        view = await hook.get_task_status(self.object_id)
        status = _wire.task_status(view)
        if status in _wire.TASK_TERMINAL_STATUSES:
            return self.event("ended", task_status=view["status"])
        if status is None:
            self.log.warning("Task %s has a status this provider does not know: %r", self.object_id, view.get("status"))
        return None

    async def on_kill(self) -> None:
        if not self.stop_on_kill:
            return
        await self.hook().stop_task(self.object_id, stop_session=self.stop_session_on_kill)
        self.log.info("Stopped Browser Use task %s: its Airflow task was killed.", self.object_id)


class SessionStatusTrigger(_PollingTrigger):
    """Fires when a session is stopped (``stopped``), at the deadline (``timeout``) or on an
    API error (``error``, with ``status_code`` 404 for an unknown session)."""

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
            object_id=session_id,
            browser_use_conn_id=browser_use_conn_id,
            poll_interval=poll_interval,
            end_time=end_time,
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.SessionStatusTrigger", self._kwargs()

    async def check(self, hook: Any) -> TriggerEvent | None:
        view = await hook.get_session(self.object_id)
        if _wire.session_status(view) is _wire.SessionStatus.STOPPED:
            return self.event("stopped")
        return None


def _validated(event: Any, id_key: str, expected_id: str | None, kinds: frozenset[str]) -> dict[str, Any]:
    if not isinstance(event, Mapping) or event.get("event") not in kinds:
        raise AirflowException(f"Unexpected event from the Browser Use trigger: {event!r}")
    object_id = event.get(id_key)
    try:
        _wire.require_uuid(object_id, id_key)
    except ValueError:
        raise AirflowException(
            f"Unexpected event from the Browser Use trigger (no valid {id_key}): {event!r}"
        ) from None
    if expected_id is not None and object_id != expected_id:
        raise AirflowException(f"The trigger reported on {id_key} {object_id!r}, not {expected_id!r}: {event!r}")
    return dict(event)


def task_event(event: Any, expected_task_id: str | None = None) -> dict[str, Any]:
    """A TaskStatusTrigger event, checked; an ``ended`` event must carry a terminal status."""
    checked = _validated(event, "browser_use_task_id", expected_task_id, TASK_EVENTS)
    if checked["event"] == "ended":
        try:
            ended = _wire.TaskStatus(checked.get("task_status")) in _wire.TASK_TERMINAL_STATUSES
        except ValueError:
            ended = False
        if not ended:
            raise AirflowException(f"The trigger reported an end with status {checked.get('task_status')!r}: {event!r}")
    return checked


def session_event(event: Any, expected_session_id: str | None = None) -> dict[str, Any]:
    """A SessionStatusTrigger event, checked."""
    return _validated(event, "session_id", expected_session_id, SESSION_EVENTS)
