"""Operators for the Browser Use Cloud API v4: agent runs in conversations (v4 sessions).

Thin, as the v2 operators: the wire rules live in ``_wire_v4``, the Airflow-side ones in
``_common``, the HTTP in the hook.
"""

from __future__ import annotations

import functools
import mimetypes
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_browseruse import _common, _wire, _wire_v4
from airflow_provider_browseruse._compat import AirflowException, AirflowFailException
from airflow_provider_browseruse._retry import LISTING_CLOCK_SKEW, look_again, may_have_taken_effect
from airflow_provider_browseruse.exceptions import BrowserUseAPIError, BrowserUseTaskError
from airflow_provider_browseruse.operators.browser_use import BrowserUseBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

# The triggers module is imported only when an operator defers (see operators/browser_use.py).

#: Task state store keys (Airflow 3.3+): what this task instance started, across its tries.
STATE_RUN_ID = "browser_use_run_id"
STATE_WORKSPACE_ID = "browser_use_workspace_id"
#: How far a try had come: repairs asked for, what its runs cost, when its first run started.
STATE_PROGRESS = "browser_use_progress"
#: The most repairs of a structured output a task may ask for.
MAX_REPAIRS = 5


class RunAgentOperator(BrowserUseBaseOperator):
    """Run a Browser Use agent (API v4, the vendor's current agent), wait for it, return its answer.

    A *run* is one agent turn; it works in a *session* (a conversation: the agent's memory, a
    workspace of files and a live browser). Without ``session_id`` the run starts a new session;
    with it, the run is a follow-up turn in that conversation. Ids go to XCom as soon as the run
    exists (``run_id``, ``session_id``, ``workspace_id``); the light ``/runs/{id}/status`` is
    polled (the whole run when ``max_cost_usd`` is set: only it carries the cost), and the whole
    run is fetched once at the end and pushed as ``run``, with ``cost_usd`` and the session's
    cost breakdown as ``session_cost``.

    Success: ``completed`` is required; ``failed`` and ``cancelled`` fail the task with a
    :class:`~airflow_provider_browseruse.exceptions.BrowserUseTaskError`. With
    ``success_policy="judge"`` (and ``judge``) the judge's verdict must be true (it lands after the
    run ends; the operator waits for it up to two minutes, within ``timeout``).

    Structured output: ``structured_output`` (a JSON Schema dict or a pydantic model class) is
    sent as ``outputSchema`` and the answer is parsed and checked here too. An answer that does
    not match is repaired: a follow-up run in the same session asks the agent to answer again in
    the schema, up to ``structured_output_repairs`` times, before the task fails with the
    validation error.

    The browser: a session's browser stays up (and bills) ``keepAlive`` seconds after a run. When
    this operator started the session and ``keep_alive`` is None, it asks the API for the least
    (120 s) and stops the browser itself when the task ends, however it ends. Give ``keep_alive``
    (seconds) to keep it for a follow-up run, and end the conversation with
    :class:`EndAgentSessionOperator` as a teardown; when the task fails, the browser is stopped
    all the same (the follow-up will not come).

    Never leaks: when it gives up (``timeout``, ``execution_timeout``, an error while waiting, a
    kill, a user's kill of the deferred task) it cancels the run, and stops the browser of a
    session it started (whatever ``keep_alive`` says), unless ``stop_on_give_up=False``.
    Retries never start a second run: v4 runs carry no metadata, so the run works in a
    workspace named after the task instance, created first; on Airflow 3.3+ its ids also go to
    the task state store. A retry finds the earlier try's run and adopts it (running: waits;
    completed: uses it; failed or cancelled: starts anew); a create whose answer was lost is
    found the same way, never resent.

    :param task: the prompt (templated).
    :param model: the model name, passed as given (the API decides; None for the project's default).
    :param session_id: a session to continue (templated): this run is a follow-up turn in it.
    :param workspace_id: a workspace to work in (templated); not with ``session_id`` (a session
        has its own).
    :param profile_id: a browser profile (cookies, logins) for a new session's browser (templated).
    :param proxy_country_code: the proxy's country for a new session's browser.
    :param custom_proxy: your own proxy (``{"host", "port", "username"?, "password"?}``).
    :param screen_width: the browser's screen width in pixels.
    :param screen_height: the browser's screen height in pixels.
    :param record: record the browser.
    :param keep_alive: seconds (120 to 14,400) the session's browser stays up after the run, for
        a follow-up; None: the least, and stopped when the task ends (see above).
    :param judge: ask the API's judge for a verdict: True, or a string of context for the judge.
    :param success_policy: ``agent`` or ``lenient`` (``completed`` is enough: v4 has no agent's
        own success claim) or ``judge``.
    :param structured_output: a JSON Schema dict or a pydantic model class for the answer.
    :param structured_output_repairs: follow-up runs asking for a valid answer (0 to 5; default 1).
    :param max_cost_usd: a budget for this run in USD, checked on each poll (the whole run is
        read then): past it, the run is cancelled and the task fails without retries. A run that
        starts a session also sends it as ``maxCostUsd`` (on v4 the session's budget).
    :param session_max_cost_usd: a budget for the whole session, for a conversation the DAG keeps
        open (``maxCostUsd`` of its first run, or ``PATCH /sessions/{id}/cost-cap``); reached,
        the task fails without retries.
    :param input_files: files to give the agent (an ObjectStoragePath or URL, or a list of them:
        local, s3://, gs://...; templated), uploaded to the workspace and attached to the run.
    :param output_files_path: where to copy the files the run wrote to its workspace (templated);
        their paths go to XCom under ``output_files``.
    :param extra_fields: further RunCreateRequest fields, with the API's names, sent as given.
    :param wait_for_completion: False returns the run id right after creation (its browser is
        then left to the downstream tasks and the API's ``keepAlive``).
    :param poll_interval: seconds between status checks.
    :param timeout: seconds a try may take in all (repairs and the judge's verdict included),
        before it cancels the run and fails.
    :param stop_on_give_up: cancel the run (and stop a browser it started) when giving up on it.
    :param deferrable: wait in the triggerer (default: Airflow's ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = (
        "task",
        "session_id",
        "workspace_id",
        "profile_id",
        "input_files",
        "output_files_path",
    )
    ui_color = "#e0f2f1"

    def __init__(
        self,
        *,
        task: str,
        model: str | None = None,
        session_id: str | None = None,
        workspace_id: str | None = None,
        profile_id: str | None = None,
        proxy_country_code: str | None = None,
        custom_proxy: Mapping[str, Any] | None = None,
        screen_width: int | None = None,
        screen_height: int | None = None,
        record: bool | None = None,
        keep_alive: int | None = None,
        judge: bool | str = False,
        success_policy: str | _wire.SuccessPolicy = _wire.SuccessPolicy.AGENT,
        structured_output: Mapping[str, Any] | type | None = None,
        structured_output_repairs: int = 1,
        max_cost_usd: float | None = None,
        session_max_cost_usd: float | None = None,
        input_files: Any = None,
        output_files_path: Any = None,
        extra_fields: Mapping[str, Any] | None = None,
        wait_for_completion: bool = True,
        poll_interval: float = 5.0,
        timeout: float = 3600.0,
        stop_on_give_up: bool = True,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.model = model
        self.session_id = session_id
        self.workspace_id = workspace_id
        self.profile_id = profile_id
        self.proxy_country_code = proxy_country_code
        self.custom_proxy = dict(custom_proxy) if custom_proxy is not None else None
        self.screen_width = screen_width
        self.screen_height = screen_height
        self.record = record
        self.keep_alive = keep_alive
        self.judge = judge
        self.success_policy = _wire.success_policy(success_policy)
        self.structured_output = structured_output
        self.structured_output_repairs = structured_output_repairs
        self.max_cost_usd = max_cost_usd
        self.session_max_cost_usd = session_max_cost_usd
        self.input_files = input_files
        self.output_files_path = output_files_path
        self.extra_fields = dict(extra_fields or {})
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.stop_on_give_up = stop_on_give_up
        self.deferrable = _common.default_deferrable() if deferrable is None else deferrable
        #: A follow-up turn: ``session_id`` was given (if a template, it must render to an id).
        self._follows_up = session_id is not None
        self._check_parameters()
        #: The run being waited for, to cancel on giving up; None when there is none.
        self._waited_run_id: str | None = None
        #: The session this task started, whose browser it stops when it ends or gives up.
        self._owned_session_id: str | None = None
        #: When ``timeout`` runs out (``time.time()``), counted from the start of the try.
        self._deadline = 0.0

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """As ``BaseOperator.partial``; each mapped instance is labelled by its prompt."""
        kwargs.setdefault("map_index_template", _common.MAP_INDEX_TEMPLATE)
        return super().partial(**kwargs)

    @property
    def map_index_label(self) -> str:
        return _common.map_index_label(None, self.task)

    def _check_parameters(self) -> None:
        """Refuse at DAG parsing what can be known wrong then, naming the parameter."""
        if not isinstance(self.task, str) or not self.task.strip():
            raise ValueError(f"task must be a non-empty prompt for the agent, got {self.task!r}")
        for name in ("session_id", "workspace_id", "profile_id"):
            _common.check_id_if_known(getattr(self, name), name)
        _wire.check_seconds(self.poll_interval, "poll_interval")
        _wire.check_seconds(self.timeout, "timeout")
        if self.keep_alive is not None:
            _wire.check_count(
                self.keep_alive, "keep_alive", minimum=_wire_v4.KEEP_ALIVE_MIN, maximum=_wire_v4.KEEP_ALIVE_MAX
            )
        if not isinstance(self.judge, (bool, str)) or (isinstance(self.judge, str) and len(self.judge) > 10_000):
            raise ValueError(
                f"judge must be True, False or a context string of at most 10,000 characters, got {self.judge!r}"
            )
        if self.success_policy is _wire.SuccessPolicy.JUDGE and self.judge is False:
            raise ValueError("success_policy='judge' needs judge: without the judge there is no verdict")
        _wire.check_count(self.structured_output_repairs, "structured_output_repairs", minimum=0, maximum=MAX_REPAIRS)
        for name in ("max_cost_usd", "session_max_cost_usd"):
            if getattr(self, name) is not None:
                _wire.check_cost_cap(getattr(self, name), name)
        for name, low, high in (("screen_width", 320, 6144), ("screen_height", 320, 3456)):
            if getattr(self, name) is not None:
                _wire.check_count(getattr(self, name), name, minimum=low, maximum=high)
        browser_settings = [name for name in _BROWSER_SETTINGS if getattr(self, name) is not None]
        if self.session_id is not None and browser_settings:
            raise ValueError(
                f"{', '.join(browser_settings)} apply to a new session's browser; a follow-up run (session_id) "
                "keeps its session's browser: give them to the run that starts the session"
            )
        if self.session_id is not None and self.workspace_id is not None:
            raise ValueError("give session_id or workspace_id, not both: a session works in its own workspace")
        if self.custom_proxy is not None and not isinstance(self.custom_proxy.get("host"), str):
            raise ValueError(f"custom_proxy needs a 'host' (and a 'port'), got keys {sorted(self.custom_proxy)}")
        schema = _common.schema_of(self.structured_output)
        if schema is not None and not isinstance(self.structured_output, type):
            _wire.check_json_schema(schema, "structured_output")
        _input_paths(self.input_files)
        owned = sorted(set(self.extra_fields) & _FIELDS_OF_PARAMETERS)
        if owned:
            raise ValueError(
                f"extra_fields may not set {', '.join(owned)}: this operator sets them from its own parameters "
                "(and relies on them to stop what it starts)"
            )

    @property
    def _owns_session(self) -> bool:
        """Whether this task starts the conversation (and so may stop its browser)."""
        return not self._follows_up

    # --- the request ---------------------------------------------------------------------------

    def _first_budget(self) -> float | None:
        """``maxCostUsd`` for the run that starts a conversation. On v4 it is the *session's*
        budget (what its runs spend counts; a follow-up's value replaces it): when the task ends
        the conversation (no ``keep_alive``), the lower of the two caps, which then holds the run
        and its repairs; when it keeps it for follow-ups, only ``session_max_cost_usd``
        (``max_cost_usd`` is then held by the client). A follow-up sends none."""
        if not self._owns_session:
            return None
        if self.keep_alive is not None:
            return self.session_max_cost_usd
        caps = [cap for cap in (self.max_cost_usd, self.session_max_cost_usd) if cap is not None]
        return min(caps) if caps else None

    def _body(self, workspace_id: str | None, attached: list[str]) -> dict[str, Any]:
        settings = _wire.request_body(
            {
                "profile_id": _common.require_id(self.profile_id, "profile_id") if self.profile_id else None,
                "proxy_country_code": self.proxy_country_code,
                "custom_proxy": self.custom_proxy,
                "screen_width": self.screen_width,
                "screen_height": self.screen_height,
                "record": self.record,
            }
        )
        keep_alive = self.keep_alive
        if keep_alive is None and self._owns_session:
            keep_alive = _wire_v4.KEEP_ALIVE_MIN  # the least the API allows; the browser is stopped at the end
        budget = self._first_budget()
        return _wire.request_body(
            {
                **self._turn_fields(),
                "task": self.task,
                "session_id": _common.require_id(self.session_id, "session_id") if not self._owns_session else None,
                "workspace_id": workspace_id,
                "browser_settings": settings or None,
                "keep_alive": keep_alive,
                "max_cost_usd": str(_wire.check_cost_cap(budget, "max_cost_usd")) if budget is not None else None,
                "attached_file_ids": attached or None,
            },
            self.extra_fields,
        )

    def _turn_fields(self) -> dict[str, Any]:
        """What every run of this task asks for, the repairs included: model, judge, schema."""
        return {
            "model": self.model,
            "judge": None if self.judge is False else ({} if self.judge is True else {"context": self.judge}),
            "output_schema": _common.schema_of(self.structured_output),
        }

    # --- running -------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        self._check_rendered()
        self._deadline = time.time() + self.timeout
        store = context.get("task_state_store")
        try:
            run, progress = self._earlier_run(context, store)
            if run is None:
                asked_at = time.time()
                run = self._start(context, store)
                run.setdefault("createdAt", _wire.format_timestamp(asked_at))  # a create's answer has none
            run_id, session_id = str(run["id"]), str(run["sessionId"])
            if self.wait_for_completion:  # from here on, every way out stops what this task started
                self._waited_run_id = run_id
                self._owned_session_id = session_id if self._owns_session else None
            ti = context["ti"]
            ti.xcom_push(key=_common.RUN_ID_KEY, value=run_id)
            ti.xcom_push(key=_common.WORKSPACE_ID_KEY, value=run.get("workspaceId"))
            _common.push_agent_session(ti, self.hook, session_id)
            self.log.info("Follow run %s in its session's page: %s", run_id, self.hook.agent_session_ui_url(session_id))
            if not self.wait_for_completion:
                return run_id
            progress.setdefault("since", _wire.parse_timestamp(run.get("createdAt")))
            if self.deferrable:
                self._defer_unless_ended(context, run_id, progress)
            else:
                self._wait(context, run_id, progress)
        except BaseException as error:
            if not _is_deferral(error):
                self._stop_remote_work(f"the task failed ({type(error).__name__})")
            raise
        return self._finish(context, run_id, progress)

    def _check_rendered(self) -> None:
        """Refuse rendered values that cannot be right, before any request, naming the parameter."""
        if not isinstance(self.task, str) or not self.task.strip():
            raise AirflowFailException(f"task rendered to an empty prompt: {self.task!r}")
        if self._follows_up and not self.session_id:
            raise AirflowFailException(
                f"session_id rendered to {self.session_id!r}: a follow-up needs the id of the session it continues"
            )
        for name in ("session_id", "workspace_id", "profile_id"):
            if getattr(self, name):
                _common.require_id(getattr(self, name), name)

    def _earlier_run(self, context: Context, store: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The run an earlier try of this task instance started, if it can still be used, and
        how far that try had come (repairs asked for, cost so far).

        On Airflow 3.3+ the task state store names it (or, when a try died between creating it
        and storing its id, its workspace); otherwise a retry looks for it by its workspace's
        name, and takes its conversation's latest run when that is a repair.
        """
        ti = context["ti"]
        run_id = store.get(STATE_RUN_ID) if store is not None else None
        workspace_id = store.get(STATE_WORKSPACE_ID) if store is not None else None
        stored = store.get(STATE_PROGRESS) if store is not None else None
        progress: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
        run: dict[str, Any] | None = None
        if run_id:
            try:
                run = self.hook.get_run(str(run_id))
            except BrowserUseAPIError as error:
                if not error.is_not_found:
                    raise
        elif workspace_id:
            run = self._find_run(context, workspace_id=str(workspace_id), adopting=True)
        elif int(getattr(ti, "try_number", 1)) > 1:
            run = self._find_run(context, by_name=self._owns_session and not self.workspace_id, adopting=True)
            if run is not None and self._owns_session and store is None:
                run = self._latest_repair(run) or run
        if run is None or not self._adoptable(run):
            return None, {}
        self.log.info(
            "An earlier try of this task started run %s, which is %s: using it, not starting another.",
            run["id"],
            run.get("status"),
        )
        return run, progress

    def _adoptable(self, run: Mapping[str, Any]) -> bool:
        """Whether an earlier try's run is worth waiting for or using: not one that failed, was
        cancelled, or completed with a verdict this task's policy rejects."""
        verdict_rejected = (
            _wire_v4.run_status(run) is _wire_v4.RunStatus.COMPLETED
            and not _wire_v4.awaits_judgement(run, self.success_policy)
            and _wire_v4.run_failure(run, self.success_policy) is not None
        )
        if _wire_v4.run_status(run) in _wire_v4.RUN_FAILED_STATUSES or verdict_rejected:
            self.log.info("An earlier try's run %s is %s: starting a new one.", run["id"], run.get("status"))
            return False
        return True

    def _latest_repair(self, run: Mapping[str, Any]) -> dict[str, Any] | None:
        """The conversation's latest run, when it is a repair this task asked for after ``run``."""
        latest_id = self.hook.get_agent_session(str(run["sessionId"])).get("latestRunId")
        if not latest_id or latest_id == run["id"]:
            return None
        latest = self.hook.get_run(str(latest_id))
        return latest if str(latest.get("task") or "").startswith(_wire_v4.REPAIR_PROMPT_START) else None

    def _find_run(
        self,
        context: Context,
        *,
        workspace_id: str | None = None,
        session_id: str | None = None,
        prompt: str | None = None,
        since: float | None = None,
        known: frozenset[str] = frozenset(),
        by_name: bool = False,
        adopting: bool = False,
    ) -> dict[str, Any] | None:
        """The newest run with ``prompt`` (this task's, by default) that this task instance started.

        Recognised by the workspace it created (``workspace_id``, or with ``by_name`` by the
        name derived from the task instance); else, for a follow-up or a given workspace, by
        that session or workspace and the prompt, leaving out the ``known`` runs (those there
        before the create). Another task's run could fit then: when several do, none is taken
        (an ambiguous create fails; a retry starts anew). When adopting, runs that failed do
        not count. Only runs since ``since`` (else since the DAG run started) count.
        """
        prompt = self.task if prompt is None else prompt
        if since is None:
            started = getattr(context.get("dag_run"), "start_date", None)
            since = started.timestamp() if started is not None else None
        if session_id is None and not self._owns_session:
            session_id = _common.require_id(self.session_id, "session_id")
        after = since - LISTING_CLOCK_SKEW if since is not None else None
        runs = self.hook.list_runs(session_id=session_id, created_after=after)
        fits = [run for run in runs if run.get("task") == prompt and str(run.get("id")) not in known]
        if adopting:
            fits = [run for run in fits if _wire_v4.run_status(run) not in _wire_v4.RUN_FAILED_STATUSES]
        if workspace_id is not None:
            return next((run for run in fits if run.get("workspaceId") == workspace_id), None)
        if by_name:
            name = self._workspace_name(context)
            for run in fits:
                if run.get("workspaceId") and self.hook.get_workspace(str(run["workspaceId"])).get("name") == name:
                    return run
            return None
        if self.workspace_id:
            fits = [run for run in fits if run.get("workspaceId") == str(self.workspace_id)]
        if len(fits) > 1:
            ids = ", ".join(str(run.get("id")) for run in fits)
            if adopting:
                self.log.warning("Several runs could be an earlier try's (%s): adopting none.", ids)
                return None
            raise AirflowException(f"Creating the run may have worked, but several runs fit: {ids}.")
        return fits[0] if fits else None

    def _known_runs(self, session_id: str | None) -> frozenset[str]:
        """The ids of the runs there before a create in a shared session or workspace: the run
        an ambiguous create made is a new one."""
        if session_id is None and not self.workspace_id:
            return frozenset()  # this task's own workspace: nothing else runs there
        return frozenset(str(run.get("id")) for run in self.hook.list_runs(session_id=session_id, max_items=500))

    def _workspace_name(self, context: Context) -> str:
        ti = context["ti"]
        return _wire_v4.instance_workspace_name(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))

    def _start(self, context: Context, store: Any) -> dict[str, Any]:
        """Create the run (after its workspace and inputs); an ambiguous create is found, not resent."""
        inputs = self._input_files()  # checked before anything is created
        if store is not None:
            store.set(STATE_RUN_ID, "")  # an earlier try's failed run is no longer this task's
            store.set(STATE_PROGRESS, {})
        if not self._owns_session and self.session_max_cost_usd is not None:
            self.hook.set_agent_session_cost_cap(
                _common.require_id(self.session_id, "session_id"), self.session_max_cost_usd
            )
        workspace_id = self._workspace(context, store)
        attached = self._upload_inputs(workspace_id, inputs) if inputs else []
        body = self._body(workspace_id if self._owns_session else None, attached)
        own_workspace = workspace_id if self._owns_session and not self.workspace_id else None
        known = self._known_runs(body.get("sessionId"))
        run = self._create_when_free(
            body,
            lambda since: self._find_run(context, workspace_id=own_workspace, since=since, known=known),
        )
        if self.wait_for_completion:  # before anything else can fail: what to stop
            self._waited_run_id = str(run["id"])
            self._owned_session_id = str(run["sessionId"]) if self._owns_session else None
        if store is not None:
            store.set(STATE_RUN_ID, str(run["id"]))
        self.log.info("Started Browser Use run %s in session %s.", run["id"], run["sessionId"])
        return run

    def _workspace(self, context: Context, store: Any) -> str | None:
        """The workspace the run works in: the session's, the one given, or a new one named
        after this task instance (so that a retry can find the run)."""
        if not self._owns_session:
            if not self.input_files:
                return None
            session = self.hook.get_agent_session(_common.require_id(self.session_id, "session_id"))
            return str(session["workspaceId"]) if session.get("workspaceId") else None
        if self.workspace_id:
            return _common.require_id(self.workspace_id, "workspace_id")
        workspace = self.hook.create_workspace(self._workspace_name(context))
        if store is not None:
            store.set(STATE_WORKSPACE_ID, str(workspace["id"]))
        return str(workspace["id"])

    def _input_files(self) -> list[tuple[Any, dict[str, Any]]]:
        """Each rendered input file with what its upload declares (name, content type, size).

        :raises AirflowFailException: naming ``input_files``: not paths, a file not there, or one
            the API would refuse (empty, or larger than it takes).
        """
        try:
            inputs = []
            for path in _input_paths(self.input_files):
                size = int(path.stat().st_size)
                if not 0 < size <= _wire_v4.MAX_UPLOAD_BYTES:
                    raise ValueError(f"{path} has {size:,} bytes; the API takes 1 to {_wire_v4.MAX_UPLOAD_BYTES:,}")
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                inputs.append((path, {"name": path.name, "contentType": content_type, "size": size}))
            return inputs
        except (ValueError, OSError) as error:
            raise AirflowFailException(f"input_files: {error}") from error

    def _upload_inputs(self, workspace_id: str | None, inputs: list[tuple[Any, dict[str, Any]]]) -> list[str]:
        """Upload the input files to the workspace, each presigned just before its PUT (the URLs
        expire); return their upload ids. URLs are never logged."""
        if workspace_id is None:
            raise AirflowFailException("input_files need a workspace, and the session has none")
        ids = []
        for path, file in inputs:
            [upload] = self.hook.request_uploads(workspace_id, [file])
            self.hook.upload(
                upload["uploadUrl"],
                functools.partial(path.open, "rb"),
                file["size"],
                file["contentType"],
                call=f"upload({file['name']})",
            )
            self.log.info(
                "Uploaded %s (%d bytes) to workspace %s as %s.", path, file["size"], workspace_id, upload.get("path")
            )
            ids.append(str(upload["id"]))
        return ids

    def _create_when_free(self, body: dict[str, Any], find: Callable[[float], dict[str, Any] | None]) -> dict[str, Any]:
        """Create the run; while its session runs another (409) or the account's cap is full
        (429), wait (nothing was created), within the try's deadline. After an ambiguous
        failure, ``find`` looks for the run (given when it was asked for), which is never resent."""
        started = time.monotonic()
        refusals = 0
        while True:
            asked_at = time.time()
            try:
                return self.hook.create_run(body)
            except BrowserUseAPIError as error:
                remaining = self._remaining()
                if error.http_status == 429:
                    refusals += 1
                    time.sleep(
                        _common.session_cap_pause(error, refusals, time.monotonic() - started, remaining, self.log)
                    )
                    continue
                if may_have_taken_effect(error):
                    self.log.warning("Creating the run may or may not have worked (%s); looking for it.", error)
                    found = look_again(functools.partial(find, asked_at))
                    if found is None:
                        raise AirflowException(f"{error}. No run it may have created was found.") from error
                    self.log.warning("Found the run the failed call created: %s.", found["id"])
                    return found
                if error.http_status != 409:
                    if error.http_status in (400, 402, 403, 404, 422):  # final: asking again changes nothing
                        raise AirflowFailException(str(error)) from error
                    raise
                session_id = body.get("sessionId")
                if remaining <= 0:
                    raise AirflowException(
                        f"Session {session_id} still had an active run at the timeout ({self.timeout} s); "
                        "this run was not started."
                    ) from error
                self.log.info("Session %s has an active run; asking again in %s s.", session_id, self.poll_interval)
            time.sleep(min(self.poll_interval, max(0.0, self._remaining())))

    # --- waiting -------------------------------------------------------------------------------

    def _remaining(self) -> float:
        """Seconds left of ``timeout``, counted from the start of the try (repairs included)."""
        return self._deadline - time.time()

    def _wait(self, context: Context, run_id: str, progress: dict[str, Any]) -> None:
        """Poll until the run ends; log each status once."""
        last_status = None
        while True:
            time.sleep(min(self.poll_interval, max(0.0, self._remaining())))
            # Only the whole run carries the cost: read it when there is a budget to check.
            view = self.hook.get_run(run_id) if self.max_cost_usd is not None else self.hook.get_run_status(run_id)
            if _wire_v4.is_terminal(view):
                return
            cost = _wire_v4.over_budget(view, self.max_cost_usd)
            if cost is not None:
                self._stop_over_budget(context, run_id, cost, progress)
            if view.get("status") != last_status:
                last_status = view.get("status")
                self.log.info("Run %s is %s.", run_id, last_status)
            if self._remaining() <= 0:
                self._stop_remote_work(f"it did not end within timeout={self.timeout} s")
                raise AirflowException(
                    f"Browser Use run {run_id} did not end within {self.timeout} s; {self._given_up}"
                )

    @property
    def _given_up(self) -> str:
        return "it was cancelled." if self.stop_on_give_up else "it was left running (stop_on_give_up=False)."

    def _defer_unless_ended(self, context: Context, run_id: str, progress: dict[str, Any]) -> None:
        from airflow_provider_browseruse.triggers.browser_use import AgentRunTrigger

        if _wire_v4.is_terminal(self.hook.get_run_status(run_id)):
            return
        end_time = _common.wall_clock_deadline(max(self._remaining(), 0.001), self.execution_timeout, context["ti"])
        self.defer(
            trigger=AgentRunTrigger(
                run_id,
                browser_use_conn_id=self.browser_use_conn_id,
                poll_interval=self.poll_interval,
                end_time=end_time,
                max_cost_usd=self.max_cost_usd,
                cancel_on_kill=self.stop_on_give_up,
                browser_session_id=self._owned_session_id,
            ),
            method_name="execute_complete",
            kwargs={"progress": progress, "deadline": self._deadline},
        )

    def execute_complete(
        self, context: Context, event: Any, progress: dict[str, Any] | None = None, deadline: float | None = None
    ) -> Any:
        """Resume after the deferred wait: finish, or cancel the run and fail."""
        ti = context["ti"]
        self._deadline = deadline if deadline is not None else time.time() + self.timeout
        progress = dict(progress or {})
        expected = ti.xcom_pull(task_ids=ti.task_id, key=_common.RUN_ID_KEY, map_indexes=ti.map_index)
        event = _common.run_event(event, expected)
        run_id = event[_common.RUN_ID_KEY]
        self._waited_run_id = run_id
        if self._owns_session:
            self._owned_session_id = ti.xcom_pull(
                task_ids=ti.task_id, key=_common.SESSION_ID_KEY, map_indexes=ti.map_index
            )
        try:
            if event["event"] == "timeout":
                self._stop_remote_work("its deadline passed while deferred")
                raise AirflowException(
                    f"Browser Use run {run_id} did not end within the timeout ({self.timeout} s or the "
                    f"execution_timeout); {self._given_up}"
                )
            if event["event"] == "error":
                self._stop_remote_work("waiting for it failed")
                raise AirflowException(f"Waiting for Browser Use run {run_id} failed: {event.get('message')}")
            if event["event"] == "over_budget":
                cost = _wire.to_decimal(event.get("cost"))
                self._stop_over_budget(context, run_id, cost, progress, cancelled=event.get("stopped") is True)
        except BaseException:
            self._stop_remote_work("the task failed")
            raise
        return self._finish(context, run_id, progress)

    # --- ending --------------------------------------------------------------------------------

    def _stop_over_budget(
        self, context: Context, run_id: str, cost: Any, progress: Mapping[str, Any], *, cancelled: bool = False
    ) -> None:
        """Cancel the run that passed ``max_cost_usd`` (and a browser this task started); fail for good."""
        assert self.max_cost_usd is not None
        session_id, self._owned_session_id = self._owned_session_id, None
        self._waited_run_id = None
        if not cancelled:
            cancelled = _common.stop_run_quietly(self.hook, self.log, run_id, session_id)
        elif session_id is not None:
            _common.stop_browsers_quietly(self.hook, self.log, session_id)
        context["ti"].xcom_push(key=_common.COST_KEY, value=float(progress.get("spent", 0.0)) + float(cost))
        raise _common.over_budget_run_failure(run_id, cost, self.max_cost_usd, cancelled=cancelled)

    def _final_run(self, run_id: str) -> dict[str, Any]:
        """The ended run, once its judge's verdict has landed when the policy needs it (the
        judge works after the run ends), within the try's deadline."""
        run = self.hook.get_run(run_id)
        waited_until = time.monotonic() + min(_wire_v4.JUDGEMENT_WAIT, max(0.0, self._remaining()))
        while _wire_v4.awaits_judgement(run, self.success_policy) and time.monotonic() < waited_until:
            time.sleep(min(self.poll_interval, 5.0))
            run = self.hook.get_run(run_id)
        return run

    def _finish(self, context: Context, run_id: str, progress: dict[str, Any]) -> Any:
        """Judge the ended run and return its answer.

        Whatever the way out, the browser of a conversation this task started is stopped (after
        a success, unless ``keep_alive`` keeps it): quietly after an error (the error is the
        news); after a success a browser that cannot be stopped fails the task, so that a retry
        (which adopts the finished run, at no cost) tries again.
        """
        self._waited_run_id = None  # it has ended: nothing left to cancel
        try:
            return self._result(context, run_id, progress)
        except BaseException as error:
            if not _is_deferral(error):  # deferred again for a repair: the run and browser are in use
                self._stop_remote_work("the task failed")
            raise

    def _result(self, context: Context, run_id: str, progress: dict[str, Any]) -> Any:
        ti = context["ti"]
        run = self._final_run(run_id)
        progress["spent"] = float(progress.get("spent", 0.0)) + float(_wire_v4.run_cost(run))
        ti.xcom_push(key=_common.RUN_KEY, value=_wire_v4.run_for_xcom(run))
        ti.xcom_push(key=_common.COST_KEY, value=progress["spent"])  # all of this task's runs: repairs too
        self.log.info("%s.", _wire_v4.outcome(run))
        self._check_budgets(run)
        failure = _wire_v4.run_failure(run, self.success_policy)
        if failure is not None:
            raise BrowserUseTaskError(failure, run)
        try:
            output = _common.parsed_run_output(run, self.structured_output)
        except ValueError as error:
            repairs = int(progress.get("repairs", 0))
            if repairs >= self.structured_output_repairs or self._remaining() <= 0:
                why = "" if repairs >= self.structured_output_repairs else " (no time left to ask for a repair)"
                raise BrowserUseTaskError(f"Browser Use run {run_id}: {error}{why}", run) from error
            progress["repairs"] = repairs + 1
            return self._repair(context, run, str(error), progress)
        if self.keep_alive is None:
            self._end_browser()  # before the copy, which needs no browser
        if self.output_files_path is not None and run.get("workspaceId"):
            paths = _common.copy_workspace_files(
                self.hook,
                self.log,
                run_id,
                str(run["workspaceId"]),
                self.output_files_path,
                since=progress.get("since"),
            )
            ti.xcom_push(key=_common.OUTPUT_FILES_KEY, value=paths)
        self._push_session_cost(ti, str(run["sessionId"]))
        self._end_browser()  # with keep_alive: kept only now that nothing can fail any more
        return output

    def _session_budget(self) -> float | None:
        """The session budget in force for this task's runs, as far as this task set it."""
        return self._first_budget() if self._owns_session else self.session_max_cost_usd

    def _check_budgets(self, run: Mapping[str, Any]) -> None:
        """A run the server ended at a budget fails for good: a retry would pay again."""
        if _wire_v4.run_status(run) is not _wire_v4.RunStatus.FAILED:
            return
        cost = _wire_v4.run_cost(run)
        if self.max_cost_usd is not None and cost >= Decimal(str(self.max_cost_usd)):
            raise _common.over_budget_run_failure(str(run["id"]), cost, self.max_cost_usd, cancelled=True)
        budget = self._session_budget()
        if budget is None:
            return
        total = _wire.to_decimal(self.hook.get_agent_session_cost(str(run["sessionId"])).get("totalCostUsd"))
        if total >= Decimal(str(budget)):
            parameter = "session_max_cost_usd" if budget == self.session_max_cost_usd else "max_cost_usd"
            raise _common.over_budget_run_failure(str(run["id"]), total, budget, cancelled=True, parameter=parameter)

    def _repair(self, context: Context, run: Mapping[str, Any], error: str, progress: dict[str, Any]) -> Any:
        """Ask for the answer again, in the schema, as a follow-up run in the same session."""
        self.log.warning(
            "Run %s answered out of its schema (%s); asking for a repair (%d of %d) in the same session.",
            run.get("id"),
            error,
            progress["repairs"],
            self.structured_output_repairs,
        )
        session_id = str(run["sessionId"])
        prompt = _wire_v4.repair_prompt(error, _common.schema_of(self.structured_output) or {})
        extra = {key: value for key, value in self.extra_fields.items() if key not in _CONVERSATION_FIELDS}
        body = _wire.request_body({**self._turn_fields(), "task": prompt, "session_id": session_id}, extra)
        known = self._known_runs(session_id)
        created = self._create_when_free(
            body,
            lambda since: self._find_run(context, session_id=session_id, prompt=prompt, since=since, known=known),
        )
        repair_id = str(created["id"])
        self._waited_run_id = repair_id  # before anything else can fail: what to stop
        try:
            store = context.get("task_state_store")
            if store is not None:
                store.set(STATE_RUN_ID, repair_id)  # a retry resumes from the latest run
                store.set(STATE_PROGRESS, progress)
            context["ti"].xcom_push(key=_common.RUN_ID_KEY, value=repair_id)
            if self.deferrable:
                self._defer_unless_ended(context, repair_id, progress)
            else:
                self._wait(context, repair_id, progress)
        except BaseException as failure:
            if not _is_deferral(failure):
                self._stop_remote_work("waiting for the repair failed")
            raise
        return self._finish(context, repair_id, progress)

    def _push_session_cost(self, ti: Any, session_id: str) -> None:
        try:
            cost = self.hook.get_agent_session_cost(session_id)
        except BrowserUseAPIError as error:  # a figure for the record: not worth failing the task
            self.log.warning("Could not read the cost of session %s: %s", session_id, error)
            return
        ti.xcom_push(key=_common.SESSION_COST_KEY, value=cost)
        self.log.info("Session %s has cost $%s so far.", session_id, _wire.to_decimal(cost.get("totalCostUsd")))

    def _end_browser(self) -> None:
        """After a success: stop the browser of the session this task started, unless
        ``keep_alive`` keeps it for a follow-up.

        :raises AirflowException: it could not be stopped.
        """
        session_id, self._owned_session_id = self._owned_session_id, None
        if session_id is None:
            return
        if self.keep_alive is not None:
            self.log.info(
                "The session's browser stays up, billed, for up to keep_alive=%s s after the run, for a "
                "follow-up; end it with EndAgentSessionOperator.",
                self.keep_alive,
            )
            return
        try:
            if self.hook.stop_agent_session_browsers(session_id):
                self.log.info("Stopped the browser of Browser Use session %s (it bills while it is up).", session_id)
        except BrowserUseAPIError as error:
            raise AirflowException(
                f"The run succeeded, but the browser of Browser Use session {session_id} could not be stopped "
                f"({error}); it bills until it stops. A retry uses the finished run and tries again."
            ) from error

    def _stop_remote_work(self, why: str) -> None:
        """Cancel the run being waited for, and stop the browser of a session this task started
        (whatever ``keep_alive`` says: the follow-up it was kept for will not come); never raises."""
        run_id, self._waited_run_id = self._waited_run_id, None
        session_id, self._owned_session_id = self._owned_session_id, None
        if not self.stop_on_give_up or (run_id is None and session_id is None):
            return
        if _common.stop_run_quietly(self.hook, self.log, run_id, session_id):
            what = " and stopped its session's browser" if session_id else ""
            self.log.warning("Cancelled Browser Use run %s%s because %s.", run_id, what, why)

    def on_kill(self) -> None:
        self._stop_remote_work("the Airflow task was killed")


def _is_deferral(error: BaseException) -> bool:
    """Whether ``error`` is Airflow's TaskDeferred (the task goes on in the triggerer)."""
    return type(error).__name__ == "TaskDeferred"


#: RunCreateRequest fields that belong to the conversation's first run, not to a repair turn.
_CONVERSATION_FIELDS = frozenset({"browserSettings", "keepAlive", "workspaceId", "attachedFileIds"})
#: RunCreateRequest fields the operator sets from its parameters: not for ``extra_fields``.
_FIELDS_OF_PARAMETERS = frozenset(
    {"task", "model", "sessionId", "workspaceId", "browserSettings", "keepAlive", "judge", "maxCostUsd"}
    | {"outputSchema", "attachedFileIds"}
)
_BROWSER_SETTINGS = ("profile_id", "proxy_country_code", "custom_proxy", "screen_width", "screen_height", "record")


def _known_schemes() -> set[str]:
    """The URL schemes fsspec (under ObjectStoragePath) knows, installed or not."""
    from fsspec.registry import known_implementations, registry

    return set(known_implementations) | set(registry)


def _input_paths(input_files: Any) -> list[Any]:
    """``input_files`` as ObjectStoragePaths (a lone path or URL, or a list of them).

    :raises ValueError: anything else, or more than the API attaches to one run.
    """
    from airflow.sdk import ObjectStoragePath

    if input_files is None:
        return []
    items = (
        [input_files]
        if isinstance(input_files, (str, ObjectStoragePath)) or hasattr(input_files, "open")
        else input_files
    )
    if not isinstance(items, Sequence) or isinstance(items, (bytes, bytearray)):
        raise ValueError(f"input_files must be a path or URL, or a list of them, got {input_files!r}")
    if len(items) > _wire_v4.MAX_ATTACHED_FILES:
        raise ValueError(f"input_files may name at most {_wire_v4.MAX_ATTACHED_FILES} files, got {len(items)}")
    paths = []
    for item in items:
        if isinstance(item, str) and "{{" in item:
            continue  # rendered at run time
        if not isinstance(item, (str, ObjectStoragePath)) or not str(item).strip():
            raise ValueError(f"input_files must hold paths or URLs, got {item!r}")
        scheme = str(item).split("://", 1)[0] if "://" in str(item) else ""
        try:
            if scheme and scheme not in _known_schemes():
                raise ValueError(f"no file system knows the scheme {scheme!r}")
            paths.append(item if isinstance(item, ObjectStoragePath) else ObjectStoragePath(item))
        except ValueError as error:  # an unknown URL scheme, say
            raise ValueError(f"input_files holds {item!r}, which is not a path or URL it can read: {error}") from None
    return paths


class EndAgentSessionOperator(BrowserUseBaseOperator):
    """End a v4 conversation the DAG kept open: nothing of it goes on running or billing.

    Cancels its active run and its queued follow-up messages, stops its browsers (a kept-alive
    browser bills until it is stopped), and with ``delete=True`` deletes the session (with
    ``purge=True`` its data is purged first: Zero Data Retention projects only). Safe to run when
    everything has ended already. Use it as a teardown:
    ``run >> follow_up >> end.as_teardown(setups=run)``.

    Returns ``{"session_id", "cancelled_run_id", "removed_messages", "stopped_browsers",
    "deleted"}``; pushes the session's cost breakdown as ``session_cost`` and its total as
    ``cost_usd``.

    :param session_id: the v4 session to end (templated).
    :param delete: delete the session afterwards.
    :param purge: purge the session's data (ZDR projects only).
    :param missing_ok: treat an unknown (or deleted) session as done instead of failing.
    """

    template_fields: Sequence[str] = ("session_id",)
    ui_color = "#f3e5f5"

    def __init__(
        self, *, session_id: str, delete: bool = False, purge: bool = False, missing_ok: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _common.check_id_if_known(session_id, "session_id")
        self.session_id = session_id
        self.delete = delete
        self.purge = purge
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any] | None:
        ti = context["ti"]
        session_id = _common.require_id(self.session_id, "session_id")
        _common.push_agent_session(ti, self.hook, session_id)
        failed: list[str] = []  # each step is tried: one error must not leave the browser billing
        try:
            self.hook.get_agent_session(session_id)
        except BrowserUseAPIError as error:
            if error.http_status == 403 and self.purge:  # Zero Data Retention: purging is all there is
                self.hook.purge_agent_session(session_id)
                self.log.info("Purged session %s (a Zero Data Retention project: no v4 runs to end).", session_id)
                return self._outcome(session_id, None, 0, [])
            if error.is_not_found:
                if not self.missing_ok:
                    raise AirflowFailException(
                        f"{error}. Is session_id right? Set missing_ok=True to allow this."
                    ) from error
                self.log.info("Session %s does not exist (any more): nothing to end.", session_id)
                return None
            self.log.error("Could not read session %s (%s); ending what can be ended.", session_id, error)
            failed.append(f"read it: {error}")
        removed = self._step(failed, "remove its queued messages", lambda: self._remove_queued(session_id)) or 0
        # Read after the queue is emptied: a message dispatched meanwhile is the run to cancel.
        session = self._step(failed, "read it", lambda: self.hook.get_agent_session(session_id)) or {}
        cancelled = None
        latest = session.get("latestRunId") if isinstance(session, dict) else None
        active = bool(latest) and not _wire_v4.is_terminal(session)
        if active and self._step(failed, f"cancel run {latest}", lambda: self.hook.cancel_run(str(latest))):
            cancelled = str(latest)
            self.log.warning("Cancelled run %s of session %s.", latest, session_id)
        stopped = self._step(failed, "stop its browsers", lambda: self.hook.stop_agent_session_browsers(session_id))
        cost = self._step(failed, "read its cost", lambda: self.hook.get_agent_session_cost(session_id))
        if isinstance(cost, dict):
            ti.xcom_push(key=_common.SESSION_COST_KEY, value=cost)
            _common.push_cost(ti, _wire.to_decimal(cost.get("totalCostUsd")))
        if self.purge:
            self._step(failed, "purge it", lambda: self.hook.purge_agent_session(session_id))
        if self.delete:  # deleting also cancels its run and messages: done whatever failed before
            self._step(failed, "delete it", lambda: self.hook.delete_agent_session(session_id))
        if failed:
            raise AirflowException(f"Could not end Browser Use session {session_id} in full: " + "; ".join(failed))
        browsers = [str(browser.get("id")) for browser in stopped or []]
        self.log.info(
            "Ended session %s: %d queued message(s) removed, run cancelled: %s, %d browser(s) stopped%s; "
            "it cost $%s in all.",
            session_id,
            removed,
            cancelled or "none was active",
            len(browsers),
            ", deleted" if self.delete else "",
            _wire.to_decimal(cost.get("totalCostUsd") if isinstance(cost, dict) else None),
        )
        return self._outcome(session_id, cancelled, removed, browsers)

    def _outcome(self, session_id: str, cancelled: str | None, removed: int, browsers: list[str]) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "cancelled_run_id": cancelled,
            "removed_messages": removed,
            "stopped_browsers": browsers,
            "deleted": self.delete,
        }

    def _step(self, failed: list[str], what: str, call: Callable[[], Any]) -> Any:
        """Do one step of ending a session; on an error, log and note it and go on."""
        try:
            done = call()
        except Exception as error:  # an API error, or an answer not as it should be
            self.log.error("Could not %s: %s", what, error)
            failed.append(f"{what}: {error}")
            return None
        return True if done is None else done

    def _remove_queued(self, session_id: str) -> int:
        removed = 0
        for message in self.hook.get_agent_session_queue(session_id):
            if message.get("status") == "pending":
                try:
                    self.hook.remove_queued_message(session_id, int(message["id"]))
                    removed += 1
                except BrowserUseAPIError as error:
                    if not error.is_not_found and error.http_status != 409:  # gone or taken since it was listed
                        raise
        return removed
