"""Operators for the Browser Use Cloud API: thin; the rules live in ``_wire``, ``_common`` and the hook."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.log import mask_secret

from airflow_provider_browseruse import _common, _wire, _wire_v4
from airflow_provider_browseruse._compat import ENDS_FROM_TRIGGER, AirflowException, AirflowFailException
from airflow_provider_browseruse._retry import LISTING_CLOCK_SKEW, look_again, may_have_taken_effect
from airflow_provider_browseruse.exceptions import BrowserUseAPIError
from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook
from airflow_provider_browseruse.links.browser_use import BrowserUseSessionLink

if TYPE_CHECKING:
    from airflow.sdk import Context

# The triggers module is imported only when an operator defers: airflow.triggers.base costs every
# DAG file that imports these operators ~8 ms (make bench), and most tasks never defer.

#: Metadata pairs the provider keeps for its own tags (see ``_wire.TAG_*``).
OWN_TAGS = 5
#: How far the API's clock may be from the worker's when matching a session's ``startedAt``.
SESSION_START_SKEW = 5.0


class BrowserUseBaseOperator(BaseOperator):
    """Holds the connection id and builds the hook when a task runs, never at DAG parsing."""

    operator_extra_links = (BrowserUseSessionLink(),)

    def __init__(self, *, browser_use_conn_id: str = "browser_use_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.browser_use_conn_id = browser_use_conn_id

    @cached_property
    def hook(self) -> BrowserUseHook:
        return BrowserUseHook(self.browser_use_conn_id)

    def pre_execute(self, context: Context) -> None:
        _common.reserve_session_link(context["ti"])
        super().pre_execute(context)


class StopSessionOperator(BrowserUseBaseOperator):
    """Stop a Browser Use session (a cloud browser) and hand on what its tasks produced.

    Sends ``PATCH /sessions/{id}`` with ``{"action": "stop"}``, which also stops the session's
    running tasks, and waits until the session reports ``stopped``. A session that is already
    stopped is a success. Use it as a teardown so that the browser stops whatever happened
    upstream: ``create >> work >> stop.as_teardown(setups=create)``.

    Returns the final session (the API's SessionView with its tasks) without the URLs that grant
    access to the browser. Pushes, under the XCom key ``task_outputs``, one entry per task of the
    session, in order: ``id``, ``status``, ``output``, ``isSuccess``, ``judgeVerdict``, ``cost``.

    :param session_id: the session to stop (templated).
    :param browser_use_conn_id: the Airflow connection (type ``browser_use``).
    :param missing_ok: treat an unknown (or already deleted) session as done instead of failing.
    :param poll_interval: seconds between status checks while the session is still stopping.
    :param timeout: seconds to wait for ``stopped`` before failing.
    :param deferrable: wait in the triggerer, not in a worker slot (default: Airflow's
        ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = ("session_id",)
    ui_color = "#f3e5f5"

    def __init__(
        self,
        *,
        session_id: str,
        missing_ok: bool = False,
        poll_interval: float = 2.0,
        timeout: float = 120.0,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _common.check_id_if_known(session_id, "session_id")
        _wire.check_seconds(poll_interval, "poll_interval")
        _wire.check_seconds(timeout, "timeout")
        self.session_id = session_id
        self.missing_ok = missing_ok
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.deferrable = _common.default_deferrable() if deferrable is None else deferrable

    def execute(self, context: Context) -> dict[str, Any] | None:
        session_id = _common.require_id(self.session_id, "session_id")
        _common.push_session(context["ti"], self.hook, session_id)
        try:
            view = self.hook.stop_session(session_id)
        except BrowserUseAPIError as error:
            if not error.is_not_found:
                raise
            if not self.missing_ok:
                raise AirflowFailException(
                    f"{error}. Is session_id right? Set missing_ok=True to allow this."
                ) from error
            self.log.info("Session %s does not exist (any more): nothing to stop.", session_id)
            context["ti"].xcom_push(key=_common.TASK_OUTPUTS_KEY, value=[])
            return None
        if _wire.session_status(view) is _wire.SessionStatus.STOPPED:
            self.log.info("Session %s is stopped (finished at %s).", session_id, view.get("finishedAt"))
        elif self.deferrable:
            self._defer(context, session_id)
        else:
            view = self._wait_until_stopped(session_id)
        return _common.publish_session(context["ti"], self.log, view)

    def _defer(self, context: Context, session_id: str) -> None:
        from airflow_provider_browseruse.triggers.browser_use import SessionStatusTrigger

        self.defer(
            trigger=SessionStatusTrigger(
                session_id,
                browser_use_conn_id=self.browser_use_conn_id,
                poll_interval=self.poll_interval,
                end_time=_common.wall_clock_deadline(self.timeout, self.execution_timeout, context["ti"]),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: Any) -> dict[str, Any]:
        """Resume after the deferred wait for ``stopped``."""
        session_id = _common.require_id(self.session_id, "session_id")
        event = _common.session_event(event, session_id)
        if event["event"] != "stopped":
            raise AirflowException(f"Session {session_id} was asked to stop but did not: {event.get('message')}")
        return _common.publish_session(context["ti"], self.log, self.hook.get_session(session_id))

    def _wait_until_stopped(self, session_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            self.log.info("Session %s is still stopping; checking again in %s s.", session_id, self.poll_interval)
            time.sleep(self.poll_interval)
            view = self.hook.get_session(session_id)
            if _wire.session_status(view) is _wire.SessionStatus.STOPPED:
                return view
            if time.monotonic() >= deadline:
                raise AirflowException(
                    f"Session {session_id} was asked to stop but is still {view.get('status')!r} "
                    f"after {self.timeout} s."
                )


class CreateSessionOperator(BrowserUseBaseOperator):
    """Start a Browser Use session (a cloud browser) for the tasks downstream.

    ``keep_alive`` defaults to False here (the API's own default is True): the session then
    closes after its first task, so a one-task pipeline cannot leave a billing browser. Set it
    to True to run several tasks in one session, and stop it with :class:`StopSessionOperator`
    as a teardown.

    Returns the session id (so ``RunTaskOperator(session_id=create.output)`` works) and pushes
    it under the XCom key ``session_id``.

    :param profile_id: a browser profile (cookies, logins) to start from (templated).
    :param proxy_country_code: country of the proxy (the API defaults to ``us``).
    :param start_url: page to open when the session starts (templated).
    :param keep_alive: keep the browser up after a task ends, until stopped.
    :param persist_memory: tasks in the session share memory and history.
    :param enable_recording: record the session.
    :param browser_screen_width: screen width in pixels (320 to 6144).
    :param browser_screen_height: screen height in pixels (320 to 3456).
    :param extra_fields: further CreateSessionRequest fields, with the API's names, sent as given.
    :param timeout: seconds to keep asking while the account's concurrent-session cap is full
        (429: nothing was created, so asking again is safe).
    """

    template_fields: Sequence[str] = ("profile_id", "start_url")
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        profile_id: str | None = None,
        proxy_country_code: str | None = None,
        start_url: str | None = None,
        keep_alive: bool = False,
        persist_memory: bool | None = None,
        enable_recording: bool | None = None,
        browser_screen_width: int | None = None,
        browser_screen_height: int | None = None,
        extra_fields: Mapping[str, Any] | None = None,
        timeout: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _common.check_id_if_known(profile_id, "profile_id")
        _wire.check_seconds(timeout, "timeout")
        self.timeout = timeout
        if browser_screen_width is not None:
            _wire.check_count(browser_screen_width, "browser_screen_width", minimum=320, maximum=6144)
        if browser_screen_height is not None:
            _wire.check_count(browser_screen_height, "browser_screen_height", minimum=320, maximum=3456)
        self.profile_id = profile_id
        self.proxy_country_code = proxy_country_code
        self.start_url = start_url
        self.keep_alive = keep_alive
        self.persist_memory = persist_memory
        self.enable_recording = enable_recording
        self.browser_screen_width = browser_screen_width
        self.browser_screen_height = browser_screen_height
        self.extra_fields = dict(extra_fields or {})

    def execute(self, context: Context) -> str:
        body = _wire.request_body(
            {
                "profile_id": _common.require_id(self.profile_id, "profile_id") if self.profile_id else None,
                "proxy_country_code": self.proxy_country_code,
                "start_url": self.start_url,
                "keep_alive": self.keep_alive,
                "persist_memory": self.persist_memory,
                "enable_recording": self.enable_recording,
                "browser_screen_width": self.browser_screen_width,
                "browser_screen_height": self.browser_screen_height,
            },
            self.extra_fields,
        )
        session = self._create_when_slot_free(body)
        session_id = str(session["id"])
        _common.push_session(context["ti"], self.hook, session_id)
        self.log.info("Started Browser Use session %s (keepAlive %s).", session_id, session.get("keepAlive"))
        return session_id

    def _create_when_slot_free(self, body: Mapping[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        refusals = 0
        while True:
            try:
                return self._create(body)
            except BrowserUseAPIError as error:
                if error.http_status != 429:
                    raise
                refusals += 1
                waited = time.monotonic() - started
                time.sleep(_common.session_cap_pause(error, refusals, waited, self.timeout - waited, self.log))

    def _create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        asked_at = time.time()
        try:
            return self.hook.create_session(body)
        except BrowserUseAPIError as error:
            if not may_have_taken_effect(error):
                raise
            self.log.warning("Creating the session may or may not have worked (%s); looking for it.", error)
            found = look_again(lambda: self._only_new_session(asked_at, body))
            if found is None:
                raise AirflowException(f"{error}. It may have started a session; none was found.") from error
            self.log.warning("Found the session the failed call created: %s.", found["id"])
            return found

    def _only_new_session(self, asked_at: float, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The one active session that started around ``asked_at`` with the asked ``keepAlive``.

        Sessions carry no tags, so a session is adopted only when it is the only one that fits;
        with several this fails, since stopping a session another DAG started would be worse.
        """
        fits = [
            session
            for session in self.hook.list_sessions(status=_wire.SessionStatus.ACTIVE)
            if (_wire.parse_timestamp(session.get("startedAt")) or 0) >= asked_at - SESSION_START_SKEW
            and session.get("keepAlive") == body.get("keepAlive", True)
        ]
        if len(fits) > 1:
            ids = ", ".join(str(session["id"]) for session in fits)
            raise AirflowException(f"Creating the session may have worked, but several sessions fit: {ids}.")
        return fits[0] if fits else None


class RunTaskOperator(BrowserUseBaseOperator):
    """Run a Browser Use agent task, wait for it to end, and return its output.

    The task runs in ``session_id`` or, without it, in a one-off session that closes when the
    task ends. Ids go to XCom (``browser_use_task_id``, ``session_id``) as soon as the task
    exists. While waiting, the light status endpoint is polled every ``poll_interval`` seconds;
    the full task is fetched once at the end and pushed (without its steps) under the key ``task``.

    Success: ``finished`` is required; ``failed`` and ``stopped`` fail the Airflow task with a
    :class:`~airflow_provider_browseruse.exceptions.BrowserUseTaskError` carrying the task's id,
    status and output; ``success_policy`` decides what a ``finished`` needs (``agent``: isSuccess
    not false, the default; ``judge``: judgeVerdict true; ``lenient``).

    Returns the output: the text, or with ``structured_output`` the parsed JSON (checked
    against the schema; a pydantic model class is validated and returned as a dict).

    Never leaks a browser: when it gives up (its ``timeout``, ``execution_timeout``, an error
    while waiting, a kill) it stops the remote task, and the session too when it was a one-off
    session it created, unless ``stop_on_give_up=False``. Each task is tagged in its
    ``metadata`` with the DAG, run, task and try, so an Airflow retry finds it again: one still
    running is waited for and one that finished is used, instead of starting a second one.

    :param task: the prompt for the agent (templated).
    :param session_id: the session to run in (templated); None for a one-off session.
    :param llm: the model name, passed as given (the API decides what it accepts).
    :param start_url: page to start from (templated).
    :param max_steps: the most steps the agent may take.
    :param structured_output: a JSON Schema dict or a pydantic model class for the output.
    :param metadata: up to 5 string pairs of your own (templated); the provider adds 5 tags.
    :param secrets: values the agent may type (passwords); rendered with Jinja at run time but
        never stored as a rendered field, masked in logs, never logged.
    :param allowed_domains: domains the agent may visit.
    :param judge: ask the API's judge for a verdict; ``judge_ground_truth`` and ``judge_llm``
        refine it.
    :param session_settings: settings for the one-off session (with the API's names); refused
        together with ``session_id``.
    :param extra_fields: further CreateTaskRequest fields, with the API's names, sent as given.
    :param success_policy: ``agent``, ``judge`` or ``lenient`` (see above).
    :param wait_for_completion: False returns the task id right after creation.
    :param poll_interval: seconds between status checks.
    :param timeout: seconds to wait for the task to end before stopping it and failing.
    :param stop_on_give_up: stop the remote task when giving up on it (default True).
    :param output_files_path: where to save the task's output files (an ObjectStoragePath or
        URL: local, s3://, gs://...; templated); their paths go to XCom under ``output_files``.
    :param deferrable: wait in the triggerer, not in a worker slot (default: Airflow's
        ``[operators] default_deferrable``). The status is checked once before deferring; a
        user's kill of the deferred task stops the remote work on Airflow 3.3+ (the trigger's
        ``on_kill``); the trigger's own deadline (``timeout`` or ``execution_timeout``) lets the
        operator stop the remote task before failing.
    :param max_cost_usd: a budget for the task, in USD: the running ``cost`` each status poll
        returns is checked against it, and once past it the task is stopped (with its one-off
        session) and the Airflow task fails without retries, naming the cost and the cap. The
        overshoot is at most what the task spends in one ``poll_interval``.
    :param end_from_trigger: when deferred, let a task that ends well finish in the triggerer,
        pushing the same XComs, with no worker (default True). Failures always come back to a
        worker, and so does a task with ``output_files_path``, ``outlets`` or a pydantic
        ``structured_output`` (finishing it needs the worker).
    """

    template_fields: Sequence[str] = ("task", "session_id", "start_url", "metadata", "output_files_path")
    template_fields_renderers = {"metadata": "json"}
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        task: str,
        session_id: str | None = None,
        llm: str | None = None,
        start_url: str | None = None,
        max_steps: int | None = None,
        structured_output: Mapping[str, Any] | type | None = None,
        metadata: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        allowed_domains: Sequence[str] | None = None,
        judge: bool = False,
        judge_ground_truth: str | None = None,
        judge_llm: str | None = None,
        session_settings: Mapping[str, Any] | None = None,
        extra_fields: Mapping[str, Any] | None = None,
        success_policy: str | _wire.SuccessPolicy = _wire.SuccessPolicy.AGENT,
        wait_for_completion: bool = True,
        poll_interval: float = 5.0,
        timeout: float = 3600.0,
        stop_on_give_up: bool = True,
        output_files_path: Any = None,
        deferrable: bool | None = None,
        end_from_trigger: bool = True,
        max_cost_usd: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.session_id = session_id
        self.llm = llm
        self.start_url = start_url
        self.max_steps = max_steps
        self.structured_output = structured_output
        self.metadata = metadata
        self.secrets = secrets
        self.allowed_domains = allowed_domains
        self.judge = judge
        self.judge_ground_truth = judge_ground_truth
        self.judge_llm = judge_llm
        self.session_settings = session_settings
        self.extra_fields = dict(extra_fields or {})
        self.success_policy = _wire.success_policy(success_policy)
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.stop_on_give_up = stop_on_give_up
        self.output_files_path = output_files_path
        self.deferrable = _common.default_deferrable() if deferrable is None else deferrable
        self.end_from_trigger = end_from_trigger
        self.max_cost_usd = max_cost_usd
        self._check_parameters()
        #: The remote task this operator waits for, to stop if it gives up; None when there is none.
        self._waited_task_id: str | None = None
        #: The task once it ended well, for OpenLineage; None before.
        self._finished: _common.FinishedTask | None = None

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """As ``BaseOperator.partial``; each mapped instance is labelled by its start URL or prompt."""
        kwargs.setdefault("map_index_template", _common.MAP_INDEX_TEMPLATE)
        return super().partial(**kwargs)

    def _check_parameters(self) -> None:
        """Refuse at DAG parsing what can be known wrong then, naming the parameter."""
        self._check_prompt()
        _common.check_id_if_known(self.session_id, "session_id")
        _common.check_string_mapping(self.metadata, "metadata")
        _common.check_string_mapping(self.secrets, "secrets")
        _common.check_string_list(self.allowed_domains, "allowed_domains")
        _wire.check_seconds(self.poll_interval, "poll_interval")
        _wire.check_seconds(self.timeout, "timeout")
        if self.success_policy is _wire.SuccessPolicy.JUDGE and not self.judge:
            raise ValueError("success_policy='judge' needs judge=True: without the judge there is no verdict")
        if self.metadata is not None and len(self.metadata) > _wire.MAX_METADATA_PAIRS - OWN_TAGS:
            raise ValueError(
                f"metadata can hold at most {_wire.MAX_METADATA_PAIRS - OWN_TAGS} pairs of your own (the API allows "
                f"{_wire.MAX_METADATA_PAIRS}; the provider uses {OWN_TAGS} to find its tasks again), "
                f"got {len(self.metadata)}"
            )
        if self.max_steps is not None:
            _wire.check_count(self.max_steps, "max_steps")
        if self.max_cost_usd is not None:
            _wire.check_cost_cap(self.max_cost_usd, "max_cost_usd")
        if self.session_settings is not None and self.session_id is not None:
            raise ValueError(
                "session_settings applies only to the one-off session a task starts without session_id; "
                "give session_id or session_settings, not both (set the session's settings on CreateSessionOperator)"
            )
        schema = _common.schema_of(self.structured_output)
        if schema is not None and not isinstance(self.structured_output, type):
            _wire.check_json_schema(schema, "structured_output")

    @property
    def map_index_label(self) -> str:
        """What the UI shows for a mapped instance (the default ``map_index_template``)."""
        return _common.map_index_label(self.start_url, self.task)

    def _check_prompt(self) -> None:
        if not isinstance(self.task, str) or not self.task.strip():
            raise ValueError(f"task must be a non-empty prompt for the agent, got {self.task!r}")

    @property
    def _owns_session(self) -> bool:
        """Whether the task runs in a one-off session this operator started (and so may stop)."""
        return not self.session_id

    # --- building the request ----------------------------------------------------------------

    def _tags(self, context: Context) -> dict[str, str]:
        ti = context["ti"]
        return {
            _wire.TAG_DAG_ID: str(ti.dag_id),
            _wire.TAG_RUN_ID: str(ti.run_id),
            _wire.TAG_TASK_ID: str(ti.task_id),
            _wire.TAG_MAP_INDEX: str(getattr(ti, "map_index", -1)),
            _wire.TAG_TRY: str(getattr(ti, "try_number", 1)),
        }

    def _rendered_secrets(self, context: Context) -> dict[str, str] | None:
        if self.secrets is None:
            return None
        rendered = self.render_template(self.secrets, context)
        for name, value in rendered.items():
            if not isinstance(value, str):
                raise AirflowFailException(f"secrets[{name!r}] must be a string, got a {type(value).__name__}")
            mask_secret(value)
        return rendered

    def _request(self, context: Context, tags: Mapping[str, str]) -> dict[str, Any]:
        metadata = dict(self.metadata or {})
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise AirflowFailException(f"metadata[{key!r}] must be a string, got {value!r}")
        schema = _common.schema_of(self.structured_output)
        return _wire.request_body(
            {
                "task": self.task,
                "session_id": _common.require_id(self.session_id, "session_id") if self.session_id else None,
                "llm": self.llm,
                "start_url": self.start_url,
                "max_steps": self.max_steps,
                "structured_output": json.dumps(schema) if schema is not None else None,
                "metadata": {**metadata, **tags},
                "secrets": self._rendered_secrets(context),
                "allowed_domains": list(self.allowed_domains) if self.allowed_domains is not None else None,
                "judge": self.judge or None,
                "judge_ground_truth": self.judge_ground_truth,
                "judge_llm": self.judge_llm,
                "session_settings": dict(self.session_settings) if self.session_settings is not None else None,
            },
            self.extra_fields,
        )

    # --- running -----------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        if not isinstance(self.task, str) or not self.task.strip():
            raise AirflowFailException(f"task rendered to an empty prompt: {self.task!r}")
        tags = self._tags(context)
        body = self._request(context, tags)
        run_started = getattr(context.get("dag_run"), "start_date", None)
        started = self._start(body, tags, run_started.timestamp() if run_started else None)
        task_id, session_id = str(started["id"]), str(started["sessionId"])
        context["ti"].xcom_push(key=_common.BROWSER_USE_TASK_ID_KEY, value=task_id)
        _common.push_session(context["ti"], self.hook, session_id)
        self.log.info("Follow task %s in its session's page: %s", task_id, self.hook.session_ui_url(session_id))
        if not self.wait_for_completion:
            return task_id
        self._waited_task_id = task_id
        if self.deferrable:
            self._defer_unless_ended(context, task_id)
        else:
            try:
                self._wait(context, task_id)
            except BaseException:
                self._stop_remote_work("the wait ended in an error")
                raise
        return self._finish(context, task_id)

    def _defer_unless_ended(self, context: Context, task_id: str) -> None:
        from airflow_provider_browseruse.triggers.browser_use import TaskStatusTrigger

        try:
            ended = _wire.task_status(self.hook.get_task_status(task_id)) in _wire.TASK_TERMINAL_STATUSES
        except BaseException:
            self._stop_remote_work("the status check before deferring failed")
            raise
        if ended:
            return
        self.defer(
            trigger=TaskStatusTrigger(
                task_id,
                browser_use_conn_id=self.browser_use_conn_id,
                poll_interval=self.poll_interval,
                end_time=_common.wall_clock_deadline(self.timeout, self.execution_timeout, context["ti"]),
                stop_on_give_up=self.stop_on_give_up,
                owns_session=self._owns_session,
                end_from_trigger=self._ends_in_triggerer,
                success_policy=self.success_policy.value,
                output_schema=_common.schema_of(self.structured_output),
                push_output=self.do_xcom_push,
                max_cost_usd=self.max_cost_usd,
            ),
            method_name="execute_complete",
        )

    @property
    def _ends_in_triggerer(self) -> bool:
        """Whether a deferred task that ends well may finish in the triggerer, with no worker.

        Not when finishing needs the worker: files to copy, asset events to emit (the triggerer
        emits none), a pydantic model to validate with (the triggerer cannot import a DAG's),
        per-key XComs (``multiple_outputs``) or an output that a downstream task maps over.
        Only on Airflow 3.3+, where it is proven under a real scheduler.
        """
        return (
            self.end_from_trigger
            and ENDS_FROM_TRIGGER
            and self.output_files_path is None
            and not self.outlets
            and not isinstance(self.structured_output, type)
            # The triggerer stores XComs as they are: no per-key XComs, no length for an .expand().
            and not getattr(self, "multiple_outputs", False)
            and not (self.has_dag() and next(self.iter_mapped_dependants(), None) is not None)
        )

    def execute_complete(self, context: Context, event: Any) -> Any:
        """Resume after the deferred wait: finish, or stop the remote task and fail."""
        ti = context["ti"]
        # map_indexes: without it, a mapped instance would get every instance's id.
        expected = ti.xcom_pull(task_ids=ti.task_id, key=_common.BROWSER_USE_TASK_ID_KEY, map_indexes=ti.map_index)
        event = _common.task_event(event, expected)
        task_id = event["browser_use_task_id"]
        self._waited_task_id = task_id
        if event["event"] == "timeout":
            self._stop_remote_work("its deadline passed while deferred")
            raise AirflowException(
                f"Browser Use task {task_id} did not end within the timeout ({self.timeout} s or the "
                "execution_timeout); it was stopped."
            )
        if event["event"] == "error":
            self._stop_remote_work("waiting for it failed")
            raise AirflowException(f"Waiting for Browser Use task {task_id} failed: {event.get('message')}")
        if event["event"] == "over_budget":
            self._stop_over_budget(
                context, task_id, _wire.to_decimal(event.get("cost")), stopped=event.get("stopped") is True
            )
        return self._finish(context, task_id)

    def _stop_over_budget(self, context: Context, task_id: str, cost: Any, *, stopped: bool = False) -> None:
        """Stop the task (and a one-off session) that passed ``max_cost_usd``, and fail for good.

        Always, whatever ``stop_on_give_up`` says: a budget is a promise to stop paying.

        :param stopped: the trigger stopped it already.
        """
        assert self.max_cost_usd is not None
        self._waited_task_id = None
        if not stopped:
            stopped = _common.stop_task_quietly(self.hook, self.log, task_id, stop_session=self._owns_session)
        _common.push_cost(context["ti"], cost)
        raise _common.over_budget_failure(task_id, cost, self.max_cost_usd, stopped=stopped)

    def _finish(self, context: Context, task_id: str) -> Any:
        self._waited_task_id = None  # it has ended: nothing left to stop
        self._finished = _common.finish_task(
            self.hook,
            context["ti"],
            self.log,
            task_id,
            success_policy=self.success_policy,
            structured_output=self.structured_output,
            output_files_path=self.output_files_path,
        )
        _common.annotate_outlets(context, self.outlets, self._finished, self.log)
        return self._finished.output

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (when its provider is installed): the start URL and allowed domains as
        inputs, the saved output files as outputs, and a run facet with the task's model, cost,
        steps and verdicts."""
        from airflow_provider_browseruse import _openlineage

        return _openlineage.operator_lineage(self._finished, self.start_url, self.allowed_domains)

    def _start(self, body: dict[str, Any], tags: Mapping[str, str], since: float | None = None) -> dict[str, Any]:
        """Return this task instance's remote task from an earlier try, or create one.

        :param since: when the DAG run started (epoch seconds): no earlier task can be older.
        """
        if int(tags[_wire.TAG_TRY]) > 1:
            earlier = self._earlier_task(tags, since)
            if earlier is not None:
                return earlier
        created = self._create_when_session_free(body)
        self.log.info("Started Browser Use task %s in session %s.", created["id"], created["sessionId"])
        return created

    def _create_when_session_free(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the task; while its session runs another task (a sibling mapped task, say), or
        the account's session cap is full (429), wait.

        The API refuses a second running task in one session, and a session past the cap, and
        creates nothing then, so asking again later can never start a duplicate. Bounded by
        ``timeout``.
        """
        started = time.monotonic()
        deadline = started + self.timeout
        progress: _common.Progress | None = None
        refusals = 0
        while True:
            try:
                return self._create(body)
            except BrowserUseAPIError as error:
                if error.http_status == 429:
                    refusals += 1
                    now = time.monotonic()
                    time.sleep(_common.session_cap_pause(error, refusals, now - started, deadline - now, self.log))
                    continue
                if not _wire.is_session_busy(error.http_status, error.detail):
                    if error.http_status in (400, 404, 422):
                        raise AirflowFailException(str(error)) from error
                    raise
                session_id = body["sessionId"]
                if time.monotonic() >= deadline:
                    raise AirflowException(
                        f"Session {session_id} was still running another task after {self.timeout} s; "
                        "this task was not started."
                    ) from error
                if progress is None:
                    progress = _common.Progress()
                    running = _wire.running_task_id(self.hook.get_session(session_id)) or "(another)"
                    self.log.info(
                        "Session %s is running task %s; waiting for it to end before starting this one.",
                        session_id,
                        running,
                    )
                elif progress.due():
                    self.log.info("Still waiting for session %s to be free (%s).", session_id, progress)
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the task once; after an ambiguous failure, find it by its tags instead of resending."""
        asked_at = time.time()
        try:
            return self.hook.create_task(body)
        except BrowserUseAPIError as error:
            if not may_have_taken_effect(error):
                raise
            self.log.warning("Creating the task may or may not have worked (%s); looking for it.", error)
            found = look_again(lambda: self._tagged_task(body["metadata"], asked_at))
            if found is None:
                raise AirflowException(f"{error}. No task it may have created was found.") from error
            return found

    def _tagged_task(self, tags: Mapping[str, str], since: float | None) -> dict[str, Any] | None:
        """The newest task created after ``since`` (give or take the clocks) carrying ``tags``."""
        recent = self.hook.list_tasks(after=since - LISTING_CLOCK_SKEW if since is not None else None)
        return next((task for task in recent if _wire.is_tagged_for(task, tags)), None)

    def _earlier_task(self, tags: Mapping[str, str], since: float | None) -> dict[str, Any] | None:
        """The task an earlier try started, if it can still be used (running, or finished)."""
        task = self._tagged_task({key: tags[key] for key in _wire.INSTANCE_TAGS}, since)
        if task is None or _wire.task_status(task) in _wire.TASK_FAILED_STATUSES:
            return None  # none, or it failed: this try starts a new one
        self.log.info(
            "Try %s of this task started Browser Use task %s, which is %s: using it, not starting another.",
            (task.get("metadata") or {}).get(_wire.TAG_TRY),
            task["id"],
            task.get("status"),
        )
        return task

    def _wait(self, context: Context, task_id: str) -> None:
        """Poll until the task ends; log each status once and, every few minutes, its progress."""
        deadline = time.monotonic() + self.timeout
        progress, last_status = _common.Progress(), None
        while True:
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
            view = self.hook.get_task_status(task_id)
            status = _wire.task_status(view)
            if status in _wire.TASK_TERMINAL_STATUSES:
                return
            cost = _wire.over_budget(view, self.max_cost_usd)
            if cost is not None:
                self._stop_over_budget(context, task_id, cost)
            if view.get("status") != last_status:
                last_status = view.get("status")
                if status is None:
                    self.log.warning("Task %s has a status this provider does not know: %r", task_id, last_status)
                else:
                    self.log.info("Task %s is %s.", task_id, last_status)
            elif progress.due():
                facts = _wire.progress_facts(self.hook.get_task(task_id))
                self.log.info("Task %s is still %s (%s; %s).", task_id, last_status, progress, facts)
            if time.monotonic() >= deadline:
                self._stop_remote_work(f"it did not end within timeout={self.timeout} s")
                raise AirflowException(
                    f"Browser Use task {task_id} did not end within {self.timeout} s; it was stopped."
                )

    def _stop_remote_work(self, why: str) -> None:
        """Stop the task being waited for (and a one-off session this operator started); never raises."""
        task_id, self._waited_task_id = self._waited_task_id, None
        if task_id is None or not self.stop_on_give_up:
            return
        try:
            self.hook.stop_task(task_id, stop_session=self._owns_session)
        except Exception as error:
            self.log.error("Could not stop Browser Use task %s (%s): stop it by hand.", task_id, error)
            return
        what = " and its session" if self._owns_session else ""
        self.log.warning("Stopped Browser Use task %s%s because %s.", task_id, what, why)

    def on_kill(self) -> None:
        self._stop_remote_work("the Airflow task was killed")


class StopTaskOperator(BrowserUseBaseOperator):
    """Stop a Browser Use task, and with ``stop_session=True`` its session too.

    A task that has already ended is left as it is (logged). Returns the task without its steps.

    :param browser_use_task_id: the Browser Use task to stop (templated); named so because
        ``task_id`` is Airflow's own.
    :param stop_session: stop the task's session as well.
    :param missing_ok: treat an unknown task as done instead of failing.
    """

    template_fields: Sequence[str] = ("browser_use_task_id",)

    def __init__(
        self, *, browser_use_task_id: str, stop_session: bool = False, missing_ok: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _common.check_id_if_known(browser_use_task_id, "browser_use_task_id")
        self.browser_use_task_id = browser_use_task_id
        self.stop_session = stop_session
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any] | None:
        task_id = _common.require_id(self.browser_use_task_id, "browser_use_task_id")
        try:
            task = self.hook.stop_task(task_id, stop_session=self.stop_session)
        except BrowserUseAPIError as error:
            if not error.is_not_found:
                raise
            if not self.missing_ok:
                raise AirflowFailException(f"{error}. Is browser_use_task_id right?") from error
            self.log.info("Task %s does not exist: nothing to stop.", task_id)
            return None
        _common.push_session(context["ti"], self.hook, str(task["sessionId"]))
        _common.push_cost(context["ti"], _wire.to_decimal(task.get("cost")))
        self.log.info(
            "Browser Use task %s is %s (cost $%s).", task_id, task.get("status"), _wire.to_decimal(task.get("cost"))
        )
        return _wire.task_without_steps(task)


class StopIdleSessionsOperator(BrowserUseBaseOperator):
    """Stop forgotten sessions: browsers that bill while nobody watches them.

    A worker killed hard runs no ``on_kill``, a DAG may lack a teardown, a session may be made by
    hand: schedule this (hourly, say) as a safety net. It lists the active sessions and stops each
    one that is idle (no running task) for longer than ``max_idle``, or older than ``max_age``.

    By default only sessions the provider started are touched: those with a task tagged with the
    provider's ``airflow_*`` metadata (sessions themselves carry no tags, so a session from
    ``CreateSessionOperator`` that never ran a task is not recognised: ``include_all=True``
    covers it, and every other session of the account). A session with a running task is never
    stopped unless ``include_running=True``.

    API v4 conversations are swept by the same rules through their live browsers (v4 has no
    "stop session"): a conversation is the provider's when its workspace carries the name
    :class:`~airflow_provider_browseruse.operators.RunAgentOperator` gives it (``airflow-...``);
    stopping means cancelling its run (with ``include_running``) and stopping its browser. Its
    entries have ``kind`` ``agent_session``, ``session_id``, ``browser_id`` and ``running_run_id``.

    Bare browsers of ``/browsers`` (reached over CDP; the provider starts none, and their
    idleness cannot be seen) are stopped only with ``include_all`` and past ``max_age``; an
    agent session's own browser goes with its session.

    Returns, and logs, one entry per session or browser stopped (or, with ``dry_run``, that
    would be): ``kind`` (``session`` or ``browser``), ``session_id`` or ``browser_id``,
    ``age_seconds``, ``cost_usd`` (what it has cost so far) and ``reason``; for sessions also
    ``idle_seconds`` and ``running_task_id``. Pushes their total cost as ``cost_usd``. An error
    on one session or browser does not stop the sweep: it goes on, then fails naming each one
    it could not sweep (a retry sweeps again).

    :param max_idle: seconds (or a timedelta) a session may sit idle.
    :param max_age: seconds (or a timedelta) a session may live; None for no limit.
    :param include_all: also sessions the provider did not start.
    :param include_running: also sessions running a task (their task is stopped with them).
    :param dry_run: only report.
    """

    ui_color = "#fff3e0"

    def __init__(
        self,
        *,
        max_idle: float | timedelta = 1800.0,
        max_age: float | timedelta | None = None,
        include_all: bool = False,
        include_running: bool = False,
        dry_run: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_idle = _wire.check_seconds(_common.as_seconds(max_idle), "max_idle")
        self.max_age = None if max_age is None else _wire.check_seconds(_common.as_seconds(max_age), "max_age")
        self.include_all = include_all
        self.include_running = include_running
        # Not ``self.dry_run``: that name is BaseOperator's own method.
        self.report_only = dry_run

    def execute(self, context: Context) -> list[dict[str, Any]]:
        now = time.time()
        found: list[dict[str, Any]] = []
        failed: list[str] = []  # one session's error must not leave the others billing
        for item in self.hook.list_sessions(status=_wire.SessionStatus.ACTIVE):
            try:
                view = self.hook.get_session(str(item["id"]))
                why = self._reason_to_stop(view, now)
                if why is not None:
                    found.append(self._stop(view, now, why))
            except BrowserUseAPIError as error:
                if not error.is_not_found:  # else it is gone since it was listed
                    self.log.error("Could not sweep session %s: %s", item.get("id"), error)
                    failed.append(f"session {item.get('id')}: {error}")
        found += self._stop_idle_conversations(now, failed)
        if self.include_all and self.max_age is not None:
            found += self._stop_old_browsers(now, failed)
        self._report(context, found)
        if failed:
            raise AirflowException(f"{len(failed)} could not be swept (the rest were): " + "; ".join(failed))
        return found

    def _report(self, context: Context, found: list[dict[str, Any]]) -> None:
        what = "would stop" if self.report_only else "stopped"
        total = sum((_wire.to_decimal(entry["cost_usd"]) for entry in found), _wire.to_decimal(0))
        self.log.info(
            "%s %d forgotten session(s) and browser(s); together they had cost $%s.",
            what.capitalize(),
            len(found),
            total,
        )
        _common.push_cost(context["ti"], total)

    def _stop_idle_conversations(self, now: float, failed: list[str]) -> list[dict[str, Any]]:
        """API v4: the live browsers of conversations, stopped by the same rules as sessions.

        A conversation is the provider's when its workspace has the name ``RunAgentOperator``
        gives it (``airflow-...``). Its run, when one is still going and ``include_running``
        allows, is cancelled first. A project without v4 (Zero Data Retention) has none.
        """
        try:
            browsers = self.hook.list_browsers(status=_wire.SessionStatus.ACTIVE, api_version=4)
        except BrowserUseAPIError as error:
            if error.http_status in (403, 404):  # Zero Data Retention, or a gateway without v4
                self.log.info("API v4 is not available here (%s): no v4 conversations to sweep.", error)
            else:  # the v2 sweep goes on; the task fails at the end, naming this
                self.log.error("Could not list the v4 browsers: %s", error)
                failed.append(f"v4 browsers: {error}")
            return []
        found = []
        for browser in browsers:
            session_id = browser.get("agentSessionId")
            if not session_id:
                continue  # a bare browser: see _stop_old_browsers
            try:
                entry = self._sweep_conversation(str(session_id), browser, now)
            except BrowserUseAPIError as error:
                if not error.is_not_found:  # else gone since it was listed
                    self.log.error("Could not sweep v4 session %s: %s", session_id, error)
                    failed.append(f"v4 session {session_id}: {error}")
                continue
            if entry is not None:
                found.append(entry)
        return found

    def _sweep_conversation(self, session_id: str, browser: Mapping[str, Any], now: float) -> dict[str, Any] | None:
        conversation = self.hook.get_agent_session(session_id)
        if not self.include_all:
            workspace_id = conversation.get("workspaceId")
            name = self.hook.get_workspace(str(workspace_id)).get("name") if workspace_id else None
            if not str(name or "").startswith(_wire_v4.WORKSPACE_TAG_PREFIX):
                return None
        running = not _wire_v4.is_terminal(conversation)
        if running and not self.include_running:
            return None
        last_moment = _wire.parse_timestamp(conversation.get("updatedAt")) or _wire.parse_timestamp(
            browser.get("startedAt")
        )
        idle = None if running or last_moment is None else now - last_moment
        age = _wire.age_seconds(browser, now)
        if idle is not None and idle > self.max_idle:
            why = f"idle for {idle:.0f} s (max_idle {self.max_idle:.0f} s)"
        elif self.max_age is not None and age is not None and age > self.max_age:
            why = f"{age:.0f} s old (max_age {self.max_age:.0f} s)"
        else:
            return None
        if not self.report_only:
            if running and conversation.get("latestRunId"):
                self.hook.cancel_run(str(conversation["latestRunId"]))
            self._stop_unless_reporting(self.hook.stop_agent_browser, str(browser["id"]))
        try:  # after the stop: a figure for the report must not keep a browser billing
            cost = _wire.to_decimal(self.hook.get_agent_session_cost(session_id).get("totalCostUsd"))
        except BrowserUseAPIError as error:
            self.log.warning("Could not read the cost of v4 session %s: %s", session_id, error)
            cost = _wire.browser_cost(browser)
        self.log.warning(
            "%s the browser of v4 session %s: %s; the session had cost $%s.",
            "Would stop" if self.report_only else "Stopped",
            session_id,
            why,
            cost,
        )
        return {
            "kind": "agent_session",
            "session_id": session_id,
            "browser_id": str(browser["id"]),
            "age_seconds": round(age or 0.0, 1),
            "idle_seconds": None if idle is None else round(idle, 1),
            "cost_usd": float(cost),
            "running_run_id": str(conversation.get("latestRunId")) if running else None,
            "reason": why,
        }

    def _stop_old_browsers(self, now: float, failed: list[str]) -> list[dict[str, Any]]:
        """Bare browsers (``/browsers``) past ``max_age``: the provider starts none, and their
        idleness cannot be seen, so only ``include_all`` with ``max_age`` touches them. An agent
        session's own browser is left to that session's rules."""
        assert self.max_age is not None
        found = []
        for view in self.hook.list_browsers(status=_wire.SessionStatus.ACTIVE):
            age = _wire.age_seconds(view, now)
            if view.get("agentSessionId") or age is None or age <= self.max_age:
                continue
            browser_id, cost = str(view["id"]), _wire.browser_cost(view)
            why = f"{age:.0f} s old (max_age {self.max_age:.0f} s)"
            try:
                self._stop_unless_reporting(self.hook.stop_browser, browser_id)
            except BrowserUseAPIError as error:
                self.log.error("Could not stop browser %s: %s", browser_id, error)
                failed.append(f"browser {browser_id}: {error}")
                continue
            verb = "Would stop" if self.report_only else "Stopped"
            self.log.warning("%s browser %s: %s; it had cost $%s.", verb, browser_id, why, cost)
            found.append(
                {
                    "kind": "browser",
                    "browser_id": browser_id,
                    "age_seconds": round(age, 1),
                    "cost_usd": float(cost),
                    "reason": why,
                }
            )
        return found

    def _stop_unless_reporting(self, stop: Callable[[str], Any], remote_id: str) -> None:
        if self.report_only:
            return
        try:
            stop(remote_id)
        except BrowserUseAPIError as error:
            if not error.is_not_found:  # gone since it was listed: nothing left to stop
                raise

    def _reason_to_stop(self, view: Mapping[str, Any], now: float) -> str | None:
        if not self.include_all and not _wire.started_by_the_provider(view):
            return None
        if _wire.running_task_id(view) is not None and not self.include_running:
            return None
        idle, age = _wire.idle_seconds(view, now), _wire.age_seconds(view, now)
        if idle is not None and idle > self.max_idle:
            return f"idle for {idle:.0f} s (max_idle {self.max_idle:.0f} s)"
        if self.max_age is not None and age is not None and age > self.max_age:
            return f"{age:.0f} s old (max_age {self.max_age:.0f} s)"
        return None

    def _stop(self, view: Mapping[str, Any], now: float, why: str) -> dict[str, Any]:
        session_id = str(view["id"])
        entry = {
            "kind": "session",
            "session_id": session_id,
            "age_seconds": round(_wire.age_seconds(view, now) or 0.0, 1),
            "idle_seconds": None if (idle := _wire.idle_seconds(view, now)) is None else round(idle, 1),
            "cost_usd": float(_wire.session_cost(view)),
            "running_task_id": _wire.running_task_id(view),
            "reason": why,
        }
        self._stop_unless_reporting(self.hook.stop_session, session_id)
        self.log.warning(
            "%s session %s: %s; it had cost $%s.",
            "Would stop" if self.report_only else "Stopped",
            session_id,
            why,
            _wire.session_cost(view),
        )
        return entry
