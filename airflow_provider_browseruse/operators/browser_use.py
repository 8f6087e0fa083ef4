"""Operators for the Browser Use Cloud API: thin; the rules live in ``_wire`` and the hook."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_browseruse import _wire
from airflow_provider_browseruse._compat import AirflowException, AirflowFailException
from airflow_provider_browseruse.links.browser_use import SESSION_URL_KEY, BrowserUseSessionLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

TASK_OUTPUTS_KEY = "task_outputs"
SESSION_ID_KEY = "session_id"
TASK_ID_KEY = "task_id"
TASK_KEY = "task"
OUTPUT_FILES_KEY = "output_files"


def check_id_if_known(value: Any, parameter: str) -> None:
    """Check an id at DAG-parse time when it is already a value, not a template or an XComArg."""
    if isinstance(value, str) and "{{" not in value:
        _wire.require_uuid(value, parameter)


def check_positive(value: float, parameter: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{parameter} must be a positive number of seconds, got {value!r}")


def require_id(value: Any, parameter: str) -> str:
    """A rendered id as a UUID string; a bad one fails the task without retries."""
    try:
        return _wire.require_uuid(value, parameter)
    except ValueError as error:
        raise AirflowFailException(str(error)) from error


def default_deferrable() -> bool:
    """Airflow's ``[operators] default_deferrable``, the default of every ``deferrable=``."""
    from airflow.configuration import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


def wall_clock_deadline(operator: BaseOperator, context: Context, timeout: float) -> float:
    """When a deferred wait must end (``time.time()``): the operator's own timeout, or its
    ``execution_timeout`` from the start of this try if that comes first. Airflow does not
    apply ``execution_timeout`` to a deferral, and its defer timeout skips ``execute_complete``,
    so the trigger itself must fire a timeout event in time for the remote work to be stopped."""
    deadline = time.time() + timeout
    if operator.execution_timeout is not None:
        started = getattr(context["ti"], "start_date", None)
        begin = started.timestamp() if started is not None else time.time()
        deadline = min(deadline, begin + operator.execution_timeout.total_seconds())
    return deadline


def publish_session(context: Context, view: dict[str, Any], log: Any) -> dict[str, Any]:
    """Push ``task_outputs`` to XCom, log the cost, and return the view fit for XCom."""
    outputs = _wire.task_outputs(view)
    context["ti"].xcom_push(key=TASK_OUTPUTS_KEY, value=outputs)
    log.info(
        "Session %s is %s: %d task(s), total cost $%s",
        view.get("id"),
        view.get("status"),
        len(outputs),
        _wire.session_cost(view),
    )
    return _wire.without_access_urls(view)


class BrowserUseBaseOperator(BaseOperator):
    """Holds the connection id and builds the hook when a task runs, never at DAG parsing."""

    operator_extra_links = (BrowserUseSessionLink(),)

    def __init__(self, *, browser_use_conn_id: str = "browser_use_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.browser_use_conn_id = browser_use_conn_id

    @cached_property
    def hook(self) -> BrowserUseHook:
        from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

        return BrowserUseHook(self.browser_use_conn_id)

    def push_session(self, context: Context, session_id: str) -> None:
        """Push the session id and its page's URL (for the extra link) as soon as they are known."""
        context["ti"].xcom_push(key=SESSION_ID_KEY, value=session_id)
        context["ti"].xcom_push(key=SESSION_URL_KEY, value=self.hook.session_ui_url(session_id))


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
        check_id_if_known(session_id, "session_id")
        check_positive(poll_interval, "poll_interval")
        check_positive(timeout, "timeout")
        self.session_id = session_id
        self.missing_ok = missing_ok
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.deferrable = default_deferrable() if deferrable is None else deferrable

    def execute(self, context: Context) -> dict[str, Any] | None:
        from airflow_provider_browseruse.exceptions import BrowserUseAPIError

        session_id = require_id(self.session_id, "session_id")
        context["ti"].xcom_push(key=SESSION_URL_KEY, value=self.hook.session_ui_url(session_id))
        try:
            view = self.hook.stop_session(session_id)
        except BrowserUseAPIError as error:
            if not error.is_not_found:
                raise
            if self.missing_ok:
                self.log.info("Session %s does not exist (any more): nothing to stop.", session_id)
                context["ti"].xcom_push(key=TASK_OUTPUTS_KEY, value=[])
                return None
            raise AirflowFailException(f"{error}. Is session_id right? Set missing_ok=True to allow this.") from error
        if _wire.session_status(view) is _wire.SessionStatus.STOPPED:
            self.log.info("Session %s is stopped (finished at %s).", session_id, view.get("finishedAt"))
        elif self.deferrable:
            from airflow_provider_browseruse.triggers.browser_use import SessionStatusTrigger

            self.defer(
                trigger=SessionStatusTrigger(
                    session_id,
                    browser_use_conn_id=self.browser_use_conn_id,
                    poll_interval=self.poll_interval,
                    end_time=wall_clock_deadline(self, context, self.timeout),
                ),
                method_name="execute_complete",
            )
        else:
            view = self._wait_until_stopped(session_id)
        return publish_session(context, view, self.log)

    def execute_complete(self, context: Context, event: Any) -> dict[str, Any]:
        """Resume after the deferred wait for ``stopped``."""
        from airflow_provider_browseruse.triggers.browser_use import session_event

        session_id = require_id(self.session_id, "session_id")
        event = session_event(event, session_id)
        if event["event"] != "stopped":
            raise AirflowException(f"Session {session_id} was asked to stop but did not: {event.get('message')}")
        return publish_session(context, self.hook.get_session(session_id), self.log)

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_id_if_known(profile_id, "profile_id")
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
                "profile_id": require_id(self.profile_id, "profile_id") if self.profile_id else None,
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
        from airflow_provider_browseruse._retry import may_have_taken_effect
        from airflow_provider_browseruse.exceptions import BrowserUseAPIError

        asked_at = time.time()
        try:
            session = self.hook.create_session(body)
        except BrowserUseAPIError as error:
            if not may_have_taken_effect(error):
                raise
            self.log.warning("Creating the session may or may not have worked (%s); looking for it.", error)
            session = self._created_session(asked_at, body, error)
        session_id = str(session["id"])
        self.push_session(context, session_id)
        self.log.info("Started Browser Use session %s (keepAlive %s).", session_id, session.get("keepAlive"))
        return session_id

    def _created_session(self, asked_at: float, body: Mapping[str, Any], error: Exception) -> dict[str, Any]:
        """The session an ambiguous create made, if exactly one new active session fits it.

        Sessions carry no tags, so this adopts a session only when it is the one active session
        that started around the call with the asked keepAlive; with none or several, it fails
        (stopping a session another DAG started would be worse than failing).
        """
        from airflow_provider_browseruse._retry import RECONCILE_WAITS

        skew = 5.0  # the API's clock and the worker's may differ a little
        candidates: list[dict[str, Any]] = []
        for wait in RECONCILE_WAITS:
            time.sleep(wait)
            candidates = [
                s
                for s in self.hook.list_sessions(status=_wire.SessionStatus.ACTIVE)
                if (_wire.parse_timestamp(s.get("startedAt")) or 0) >= asked_at - skew
                and s.get("keepAlive") == body.get("keepAlive", True)
            ]
            if len(candidates) == 1:
                self.log.warning("Found the session the failed call created: %s.", candidates[0]["id"])
                return candidates[0]
            if len(candidates) > 1:
                break
        ids = ", ".join(str(s["id"]) for s in candidates) or "none"
        raise AirflowException(f"{error}. It may have started a session; candidates: {ids}.") from error


def finish_task(
    operator: BrowserUseBaseOperator,
    context: Context,
    task_id: str,
    *,
    success_policy: _wire.SuccessPolicy,
    structured_output: Any,
    output_files_path: Any,
) -> tuple[Any, dict[str, Any]]:
    """Fetch an ended task once, publish it, apply the success policy; returns output and task.

    Shared by RunTaskOperator and TaskCompletedSensor so that both push the same values.
    """
    task = operator.hook.get_task(task_id)
    context["ti"].xcom_push(key=TASK_KEY, value=_wire.task_without_steps(task))
    context["ti"].xcom_push(key=SESSION_ID_KEY, value=task["sessionId"])
    context["ti"].xcom_push(key=SESSION_URL_KEY, value=operator.hook.session_ui_url(task["sessionId"]))
    operator.log.info(
        "Browser Use task %s %s (isSuccess %s, judgeVerdict %s); cost $%s.",
        task_id,
        task.get("status"),
        task.get("isSuccess"),
        task.get("judgeVerdict"),
        _wire.to_decimal(task.get("cost")),
    )
    failure = _wire.task_failure(task, success_policy)
    if failure is not None:
        raise AirflowException(failure)
    try:
        output = _wire.parse_output(task.get("output"), schema_of(structured_output))
        if isinstance(structured_output, type):
            model: Any = structured_output
            output = model.model_validate(output).model_dump(mode="json")
    except ValueError as error:  # pydantic's ValidationError is a ValueError too
        raise AirflowException(f"Browser Use task {task_id}: {error}") from error
    if output_files_path is not None:
        context["ti"].xcom_push(key=OUTPUT_FILES_KEY, value=download_output_files(operator, task, output_files_path))
    return output, task


def schema_of(structured_output: Any) -> dict[str, Any] | None:
    """The JSON Schema of a ``structured_output`` parameter: a dict, or a pydantic model class."""
    if structured_output is None:
        return None
    if isinstance(structured_output, type) and hasattr(structured_output, "model_json_schema"):
        return structured_output.model_json_schema()
    if isinstance(structured_output, Mapping):
        return dict(structured_output)
    raise ValueError(
        f"structured_output must be a JSON Schema dict or a pydantic model class, got {structured_output!r}"
    )


def download_output_files(operator: BrowserUseBaseOperator, task: Mapping[str, Any], target: Any) -> list[str]:
    """Download the task's output files under ``target``/<task id>/; returns their paths."""
    from airflow.sdk import ObjectStoragePath

    folder = ObjectStoragePath(str(target)) / str(task["id"])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file in task.get("outputFiles") or []:
        name = str(file["fileName"]).replace("/", "_")
        answer = operator.hook.get_output_file(task["id"], file["id"])
        path = folder / name
        with path.open("wb") as destination:
            size = operator.hook.download(answer["downloadUrl"], destination, call=f"download({name})")
        operator.log.info("Saved output file %s (%d bytes) to %s", name, size, path)
        paths.append(str(path))
    return paths


class RunTaskOperator(BrowserUseBaseOperator):
    """Run a Browser Use agent task, wait for it to end, and return its output.

    The task runs in ``session_id`` or, without it, in a one-off session that closes when the
    task ends. Ids go to XCom (``task_id``, ``session_id``) as soon as the task exists.
    While waiting, the light status endpoint is polled every ``poll_interval`` seconds; the
    full task is fetched once at the end and pushed (without its steps) under the key ``task``.

    Success: ``finished`` is required; ``failed`` and ``stopped`` fail the Airflow task with the
    output and judgement in the message; ``success_policy`` decides what a ``finished`` needs
    (``agent``: isSuccess not false, the default; ``judge``: judgeVerdict true; ``lenient``).

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
    :param session_settings: settings for the one-off session (with the API's names).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty prompt for the agent, got {task!r}")
        check_id_if_known(session_id, "session_id")
        check_positive(poll_interval, "poll_interval")
        check_positive(timeout, "timeout")
        self.success_policy = _wire.success_policy(success_policy)
        if self.success_policy is _wire.SuccessPolicy.JUDGE and not judge:
            raise ValueError("success_policy='judge' needs judge=True: without the judge there is no verdict")
        if metadata is not None and len(metadata) > _wire.MAX_METADATA_PAIRS - 5:
            raise ValueError(
                f"metadata can hold at most {_wire.MAX_METADATA_PAIRS - 5} pairs of your own (the API allows "
                f"{_wire.MAX_METADATA_PAIRS}; the provider uses 5 to find its tasks again), got {len(metadata)}"
            )
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive whole number, got {max_steps!r}")
        schema = schema_of(structured_output)
        if schema is not None and not isinstance(structured_output, type):
            _wire.check_json_schema(schema, "structured_output")
        self.task = task
        self.session_id = session_id
        self.llm = llm
        self.start_url = start_url
        self.max_steps = max_steps
        self.structured_output = structured_output
        self.metadata = dict(metadata) if metadata is not None else None
        self.secrets = dict(secrets) if secrets is not None else None
        self.allowed_domains = list(allowed_domains) if allowed_domains is not None else None
        self.judge = judge
        self.judge_ground_truth = judge_ground_truth
        self.judge_llm = judge_llm
        self.session_settings = dict(session_settings) if session_settings is not None else None
        self.extra_fields = dict(extra_fields or {})
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.stop_on_give_up = stop_on_give_up
        self.output_files_path = output_files_path
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self._remote: tuple[str, bool] | None = None  # (task id, whether its session is ours to stop)

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
        from airflow.sdk.log import mask_secret

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
        schema = schema_of(self.structured_output)
        return _wire.request_body(
            {
                "task": self.task,
                "session_id": require_id(self.session_id, "session_id") if self.session_id else None,
                "llm": self.llm,
                "start_url": self.start_url,
                "max_steps": self.max_steps,
                "structured_output": json.dumps(schema) if schema is not None else None,
                "metadata": {**metadata, **tags},
                "secrets": self._rendered_secrets(context),
                "allowed_domains": self.allowed_domains,
                "judge": self.judge or None,
                "judge_ground_truth": self.judge_ground_truth,
                "judge_llm": self.judge_llm,
                "session_settings": self.session_settings if not self.session_id else None,
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
        task_id, session_id = self._start(body, tags, run_started.timestamp() if run_started else None)
        self._remote = (task_id, not self.session_id)
        context["ti"].xcom_push(key=TASK_ID_KEY, value=task_id)
        self.push_session(context, session_id)
        if not self.wait_for_completion:
            return task_id
        if self.deferrable:
            self._defer_unless_ended(context, task_id)
        else:
            try:
                self._wait(task_id)
            except BaseException:
                self.give_up("the wait ended in an error")
                raise
        return self._finish(context, task_id)

    def _defer_unless_ended(self, context: Context, task_id: str) -> None:
        from airflow_provider_browseruse.triggers.browser_use import TaskStatusTrigger

        try:
            ended = _wire.task_status(self.hook.get_task_status(task_id)) in _wire.TASK_TERMINAL_STATUSES
        except BaseException:
            self.give_up("the status check before deferring failed")
            raise
        if ended:
            return
        self.defer(
            trigger=TaskStatusTrigger(
                task_id,
                browser_use_conn_id=self.browser_use_conn_id,
                poll_interval=self.poll_interval,
                end_time=wall_clock_deadline(self, context, self.timeout),
                stop_on_kill=self.stop_on_give_up,
                stop_session_on_kill=not self.session_id,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: Any) -> Any:
        """Resume after the deferred wait: finish, or stop the remote task and fail."""
        from airflow_provider_browseruse.triggers.browser_use import task_event

        expected = context["ti"].xcom_pull(task_ids=context["ti"].task_id, key=TASK_ID_KEY)
        event = task_event(event, expected)
        task_id = event["browser_use_task_id"]
        self._remote = (task_id, not self.session_id)
        if event["event"] == "timeout":
            self.give_up("its deadline passed while deferred")
            raise AirflowException(
                f"Browser Use task {task_id} did not end within the timeout ({self.timeout} s or the "
                "execution_timeout); it was stopped."
            )
        if event["event"] == "error":
            self.give_up("waiting for it failed")
            raise AirflowException(f"Waiting for Browser Use task {task_id} failed: {event.get('message')}")
        return self._finish(context, task_id)

    def _finish(self, context: Context, task_id: str) -> Any:
        self._remote = None
        output, _ = finish_task(
            self,
            context,
            task_id,
            success_policy=self.success_policy,
            structured_output=self.structured_output,
            output_files_path=self.output_files_path,
        )
        return output

    def _start(self, body: dict[str, Any], tags: Mapping[str, str], since: float | None = None) -> tuple[str, str]:
        """Find this task instance's remote task from an earlier try, or create one.

        :param since: when the DAG run started (epoch seconds): no earlier task can be older.
        """
        from airflow_provider_browseruse.exceptions import BrowserUseAPIError

        if int(tags[_wire.TAG_TRY]) > 1:
            earlier = self._earlier_task(tags, since)
            if earlier is not None:
                return earlier
        from airflow_provider_browseruse._retry import RECONCILE_WAITS, may_have_taken_effect

        asked_at = time.time()
        try:
            created = self.hook.create_task(body)
        except BrowserUseAPIError as error:
            if not may_have_taken_effect(error):
                if error.status_code in (400, 404, 422):
                    raise AirflowFailException(str(error)) from error
                raise
            self.log.warning("Creating the task may or may not have worked (%s); looking for it.", error)
            for wait in RECONCILE_WAITS:
                time.sleep(wait)
                recent = self.hook.list_tasks(after=asked_at - 300)  # clocks differ; a few minutes is plenty
                found = [t for t in recent if t.get("metadata") == body["metadata"]]
                if found:
                    created = found[0]
                    break
            else:
                raise
        self.log.info("Started Browser Use task %s in session %s.", created["id"], created["sessionId"])
        return str(created["id"]), str(created["sessionId"])

    def _earlier_task(self, tags: Mapping[str, str], since: float | None) -> tuple[str, str] | None:
        recent = self.hook.list_tasks(after=since - 300 if since is not None else None)
        for task in recent:  # newest first
            if not _wire.is_tagged_for(task, tags):
                continue
            status = _wire.task_status(task)
            if status in _wire.TASK_FAILED_STATUSES:
                return None  # the last try's task failed: this retry starts a new one
            self.log.info(
                "Try %s of this task started Browser Use task %s, which is %s: using it, not starting another.",
                (task.get("metadata") or {}).get(_wire.TAG_TRY),
                task["id"],
                task.get("status"),
            )
            return str(task["id"]), str(task["sessionId"])
        return None

    def _wait(self, task_id: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
            view = self.hook.get_task_status(task_id)
            status = _wire.task_status(view)
            if status in _wire.TASK_TERMINAL_STATUSES:
                return
            if status is None:
                self.log.warning("Task %s has a status this provider does not know: %r", task_id, view.get("status"))
            if time.monotonic() >= deadline:
                self.give_up(f"it did not end within timeout={self.timeout} s")
                raise AirflowException(
                    f"Browser Use task {task_id} did not end within {self.timeout} s; it was stopped."
                )
            self.log.info("Task %s is %s.", task_id, view.get("status"))

    def give_up(self, why: str) -> None:
        """Stop the remote task (and a one-off session) this operator started; never raises."""
        if self._remote is None or not self.stop_on_give_up:
            return
        task_id, own_session = self._remote
        self._remote = None
        try:
            self.hook.stop_task(task_id, stop_session=own_session)
            self.log.warning(
                "Stopped Browser Use task %s%s because %s.",
                task_id,
                " and its session" if own_session else "",
                why,
            )
        except Exception as error:
            self.log.error("Could not stop Browser Use task %s (%s): stop it by hand.", task_id, error)

    def on_kill(self) -> None:
        self.give_up("the Airflow task was killed")


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
        check_id_if_known(browser_use_task_id, "browser_use_task_id")
        self.browser_use_task_id = browser_use_task_id
        self.stop_session = stop_session
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any] | None:
        from airflow_provider_browseruse.exceptions import BrowserUseAPIError

        task_id = require_id(self.browser_use_task_id, "browser_use_task_id")
        try:
            task = self.hook.stop_task(task_id, stop_session=self.stop_session)
        except BrowserUseAPIError as error:
            if not error.is_not_found:
                raise
            if self.missing_ok:
                self.log.info("Task %s does not exist: nothing to stop.", task_id)
                return None
            raise AirflowFailException(f"{error}. Is browser_use_task_id right?") from error
        self.push_session(context, str(task["sessionId"]))
        self.log.info("Browser Use task %s is %s.", task_id, task.get("status"))
        return _wire.task_without_steps(task)
