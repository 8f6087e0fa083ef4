"""The emulator's v4 world: agent sessions, runs, queued messages and workspaces.

It lives beside the v2 world of :mod:`._state` and shares with it the lock, the clock, the
scenario, the account's concurrency cap and the ``/browsers`` store: the browser of a v4 agent
session is a :class:`~._state.Browser` whose ``agent_session_id`` is set, listed by v2's and v4's
``/browsers`` alike, and counted against ``max_concurrent_sessions`` together with v2's sessions.

As in v2, nothing runs in the background: a run's state is worked out from the clock when read.
Queued follow-up messages are started lazily too (:meth:`V4World.advance`): on any read, a pending
message whose session's active run has ended by now becomes a run created at the moment that
run ended.

Rules the emulator follows (the vendor's documentation leaves some open; these are our choices):

* A run is ``queued`` for the first half of its script's ``start_delay``, ``dispatching`` for
  the second half, ``running`` for ``duration``, then ends as the script says (finished ->
  ``completed``, failed -> ``failed``, stopped -> ``cancelled``).
* ``maxCostUsd`` on ``POST /runs`` is the session's budget, as the vendor's SDK 3.12.1
  describes it: it replaces the session's budget (a follow-up without it keeps the current one),
  and what the session's runs have cost so far counts against it; ``PATCH
  /sessions/{id}/cost-cap`` sets the same budget. When the session's total would pass it, the
  active run ends at that moment with status ``failed`` and ``error`` "The session reached its
  cost cap ($X)": failed, because the run did not complete and nobody cancelled it
  (``cancelled`` is what a cancel call, a session delete or an interrupting message gives).
  (The older spec snapshot calls it a run's budget; for the first run of a session the two
  are the same.)
* The judge's verdict lands :data:`JUDGE_DELAY` seconds after its run ended (null until then),
  as the vendor says it lands after the run.
* A session's browser stays active until stopped (``PATCH /browsers/{id}``, session delete),
  until the session's ``keepAlive`` seconds (default 120; a run's ``keepAlive`` replaces it,
  follow-ups inherit it) after the last run on it ended, or at its 4 h lifetime. A run that
  finds it active reuses it (event ``browser.reattached``); else a new browser starts, which
  counts against the account's cap (429 at the cap). A follow-up started from the queue never
  gets a 429: if it needs a new browser, it gets one past the cap.
* Stopping a browser does not end the run on it (the emulator keeps the run's script).
* The judge (``judge`` given) reaches a verdict on completed and failed runs, not cancelled ones.
* A deleted session answers 404; its runs stay readable (cancelled if they were active).
* A workspace delete archives it (``archived: true``); runs and uploads into it get 404.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
import secrets as token_source
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import jsonschema

from airflow_provider_browseruse.testing._state import (
    BROWSER_COST_PER_HOUR,
    ApiError,
    Browser,
    _iso,
    _money,
)
from airflow_provider_browseruse.testing.scenario import TaskScript, default_output, example_instance

if TYPE_CHECKING:
    from airflow_provider_browseruse.testing._state import EmulatorState

#: The model a run gets when none is named (the vendor SDK's default).
DEFAULT_MODEL = "gpt-6-luna"
DEFAULT_KEEP_ALIVE = 120
#: An agent browser's lifetime, minutes (4 h).
AGENT_BROWSER_MINUTES = 240
CONTEXT_LIMIT = 200_000
#: Pending messages a session's queue holds; one more gets 429.
QUEUE_LIMIT = 10
#: Seconds a presigned upload URL is valid.
UPLOAD_URL_SECONDS = 300
WORKSPACE_MAX_BYTES = 1 << 30
TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: Seconds after its run ended that a judge's verdict lands (null until then).
JUDGE_DELAY = 0.3
_SCRIPTED_STATUS = {"finished": "completed", "failed": "failed", "stopped": "cancelled"}

ZDR_DETAIL = (
    "v4 is not supported for projects with Zero Data Retention enabled. "
    "Use API v2 for this project, or disable Zero Data Retention."
)
PURGE_NEEDS_ZDR = "Session purge is only available for projects with Zero Data Retention enabled."
SESSION_HAS_ACTIVE_RUN = "Session already has an active run"
QUEUE_FULL = "The session's message queue is full. Wait for a run to finish or remove a message."


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value))


def _cursor(key: tuple[float, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _after_cursor(cursor: str | None) -> tuple[float, int] | None:
    """The sort key a cursor points at (400 when it is not one of ours)."""
    if cursor is None:
        return None
    try:
        created, seq = json.loads(base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True))
        return float(created), int(seq)
    except (ValueError, TypeError, binascii.Error) as error:
        raise ApiError(400, "Invalid cursor") from error


def _page(items: list[Any], key: Callable[[Any], tuple[float, int]], cursor: str | None, limit: int) -> Any:
    """Most recent first, from after ``cursor``: (page, next cursor, has more)."""
    after = _after_cursor(cursor)
    ordered = sorted(items, key=key, reverse=True)
    if after is not None:
        ordered = [item for item in ordered if key(item) < after]
    page = ordered[:limit]
    more = len(ordered) > limit
    return page, (_cursor(key(page[-1])) if more and page else None), more


@dataclass
class WorkspaceFile:
    path: str
    content: bytes = field(repr=False)
    content_type: str
    modified: float


@dataclass
class Workspace:
    id: str
    name: str | None
    created: float
    updated: float
    archived: bool = False
    files: dict[str, WorkspaceFile] = field(default_factory=dict)


@dataclass
class Upload:
    """A presigned upload: ``uploaded_at`` is set once its PUT arrived."""

    id: str
    workspace_id: str
    name: str
    stored_name: str
    path: str
    content_type: str
    size: int
    token: str = field(repr=False)
    created: float
    uploaded_at: float | None = None


@dataclass
class AgentSession:
    id: str
    workspace_id: str
    created: float
    updated: float
    seq: int
    keep_alive: int = DEFAULT_KEEP_ALIVE
    model: str = DEFAULT_MODEL
    title: str | None = None
    cost_cap: Decimal | None = None
    browser_id: str | None = None
    run_ids: list[str] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    deleted: bool = False


@dataclass
class QueuedMessage:
    id: int
    session_id: str
    text: str
    created: float
    mode: str  # "queue" or "interrupt"
    status: str = "pending"
    run_id: str | None = None
    attached_file_ids: list[str] | None = None


@dataclass
class Run:
    """One agent turn. Its life is worked out from ``created``, its script, its budgets and
    ``cancelled_at`` (see :meth:`outcome`)."""

    id: str
    seq: int
    session_id: str
    workspace_id: str
    prompt: str
    model: str
    script: TaskScript
    created: float
    browser_id: str
    browser_token: str = field(repr=False)
    reattached: bool
    keep_alive: int
    result_text: str | None
    output_value: Any
    output_schema: dict[str, Any] | None = None
    model_params: dict[str, Any] | None = None
    judge: bool = False
    max_cost: Decimal | None = None
    attached_file_ids: list[str] = field(default_factory=list)
    missing_file_ids: list[str] = field(default_factory=list)
    #: The session cap when the run was started or the cap last changed, what it left this run,
    #: and when that was (the run cannot have ended for it earlier).
    session_cap: Decimal | None = None
    session_budget: Decimal | None = None
    budget_floor: float = 0.0
    cancelled_at: float | None = None
    outputs_written: bool = False

    @property
    def started(self) -> float:
        return self.created + self.script.start_delay

    @property
    def natural_end(self) -> float:
        return self.started + self.script.duration

    def cost_at(self, t: float) -> Decimal:
        """What the script has spent by ``t`` if nothing stops it."""
        script = self.script
        ran = max(0.0, min(t, self.natural_end) - self.started)
        if script.cost_per_second is not None:
            return _decimal(script.cost_per_second) * _decimal(ran)
        full = _decimal(script.cost)
        if script.duration:
            return full * _decimal(min(1.0, ran / script.duration))
        return full if t >= self.started else Decimal(0)

    def _spends(self, budget: Decimal) -> float | None:
        """When the cost reaches ``budget``, or None when it never passes it."""
        if self.cost_at(self.natural_end) <= budget:
            return None
        if budget <= 0:
            return self.started
        script = self.script
        if script.cost_per_second is not None and _decimal(script.cost_per_second) > 0:
            return self.started + float(budget / _decimal(script.cost_per_second))
        if script.duration:
            return self.started + script.duration * float(budget / _decimal(script.cost))
        return self.started

    def outcome(self) -> tuple[float, str, str | None, str]:
        """When and how the run ends: (time, status, error, cause); cause is one of ``script``,
        ``run_budget``, ``session_budget``, ``cancel``."""
        script = self.script
        status = _SCRIPTED_STATUS[script.status]
        error = None
        if status == "failed":
            error = script.output or f"The agent could not complete the task: {self.prompt[:100]}"
        ends = [(self.natural_end, status, error, "script")]
        if self.max_cost is not None:
            at = self._spends(self.max_cost)
            if at is not None:
                message = f"The run reached its maxCostUsd budget (${self.max_cost})"
                ends.append((max(at, self.created), "failed", message, "run_budget"))
        if self.session_budget is not None:
            at = self._spends(self.session_budget)
            if at is not None:
                message = f"The session reached its cost cap (${self.session_cap})"
                ends.append((max(at, self.budget_floor), "failed", message, "session_budget"))
        if self.cancelled_at is not None:
            ends.append((self.cancelled_at, "cancelled", None, "cancel"))
        return min(ends, key=lambda end: end[0])

    def ends(self) -> float:
        return self.outcome()[0]

    def status(self, now: float) -> str:
        end, status, _, _ = self.outcome()
        if now >= end:
            return status
        if now >= self.started:
            return "running"
        return "dispatching" if now >= self.created + self.script.start_delay / 2 else "queued"

    def cost(self, now: float) -> Decimal:
        end, _, _, cause = self.outcome()
        spent = self.cost_at(min(now, end))
        if now >= end and cause == "run_budget" and self.max_cost is not None:
            spent = min(spent, self.max_cost)
        elif now >= end and cause == "session_budget" and self.session_budget is not None:
            spent = min(spent, max(self.session_budget, self.cost_at(self.budget_floor)))
        return max(spent, Decimal(0))

    def events(self, now: float, live_view_url: str) -> list[dict[str, Any]]:
        """The events that have happened by ``now``, ids from 1."""
        end, status, error, cause = self.outcome()
        timeline: list[tuple[float, str, dict[str, Any]]] = []
        if self.started <= end and not (cause == "cancel" and end <= self.started):
            timeline.append((self.started, "run.started", {"status": "running", "model": self.model}))
            kind = "browser.reattached" if self.reattached else "browser.ready"
            timeline.append((self.started, kind, {"browser_id": self.browser_id, "live_view_url": live_view_url}))
            steps = self.script.steps
            for n in range(1, steps + 1):
                at = self.started + n * self.script.duration / (steps + 1)
                if at < end:
                    goal = f"Work on: {self.prompt[:60]}"
                    timeline.append((at, "agent.step", {"step": n, "next_goal": goal, "url": "https://example.com/"}))
        terminal: dict[str, Any] = {"status": status}
        if error is not None:
            terminal["error"] = error
        timeline.append((end, f"run.{status}", terminal))
        return [
            {"runId": self.id, "id": n, "ts": _iso(ts), "type": kind, "data": data}
            for n, (ts, kind, data) in enumerate(timeline, start=1)
            if ts <= now
        ]


class V4World:
    """Runs, agent sessions, queued messages and workspaces, kept under the state's lock."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.sessions: dict[str, AgentSession] = {}
        self.runs: dict[str, Run] = {}
        self.messages: dict[int, QueuedMessage] = {}
        self.workspaces: dict[str, Workspace] = {}
        self.uploads: dict[str, Upload] = {}
        self.upload_tokens: dict[str, str] = {}  # token -> upload id
        self.browser_runs: dict[str, list[str]] = {}  # browser id -> ids of the runs on it
        self._seq = 0
        self._advancing = False

    def clear(self) -> None:
        with self.state.lock:
            for store in (
                self.sessions,
                self.runs,
                self.messages,
                self.workspaces,
                self.uploads,
                self.upload_tokens,
                self.browser_runs,
            ):
                store.clear()
            self._seq = 0

    @property
    def used(self) -> bool:
        """Whether anything of v4 exists (a run, a workspace, an agent browser)."""
        return bool(self.runs or self.workspaces or self.sessions)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- the clock ----------------------------------------------------------------------------

    def _now(self) -> float:
        now: float = self.state.clock()
        self.advance(now)
        return now

    def advance(self, now: float) -> None:
        """Start the queued messages whose session's active run has ended by ``now``."""
        with self.state.lock:
            if self._advancing or not any(m.status == "pending" for m in self.messages.values()):
                return
            self._advancing = True
            try:
                for session in list(self.sessions.values()):
                    while not session.deleted:
                        pending = [m for m in self._messages_of(session) if m.status == "pending"]
                        if not pending or not session.run_ids:
                            break
                        ended = self.runs[session.run_ids[-1]].ends()
                        if now < ended:
                            break
                        message = pending[0]
                        body = {"attachedFileIds": message.attached_file_ids}
                        run = self._start_run(session, message.text, body, at=ended, check_cap=False)
                        message.status, message.run_id = "consumed", run.id
            finally:
                self._advancing = False

    def _idle_stop(self, browser_id: str) -> Callable[[float], float | None]:
        def idle_stop(now: float) -> float | None:
            self.advance(now)
            runs = [self.runs[r] for r in self.browser_runs.get(browser_id, ()) if r in self.runs]
            if not runs:
                return None
            last = max(runs, key=lambda r: r.ends())
            ended = last.ends()
            return None if now < ended else ended + last.keep_alive

        return idle_stop

    # --- look-ups -----------------------------------------------------------------------------

    def _session(self, session_id: str) -> AgentSession:
        session = self.sessions.get(str(session_id))
        if session is None or session.deleted:
            raise ApiError(404, "Session not found")
        return session

    def _run(self, run_id: str) -> Run:
        run = self.runs.get(str(run_id))
        if run is None:
            raise ApiError(404, "Run not found")
        return run

    def _workspace(self, workspace_id: str, *, writable: bool = False) -> Workspace:
        workspace = self.workspaces.get(str(workspace_id))
        if workspace is None or (writable and workspace.archived):
            raise ApiError(404, "Workspace not found")
        return workspace

    def _messages_of(self, session: AgentSession) -> list[QueuedMessage]:
        return [self.messages[m] for m in session.message_ids]

    def _active_run(self, session: AgentSession, now: float) -> Run | None:
        if not session.run_ids:
            return None
        run = self.runs[session.run_ids[-1]]
        return None if run.status(now) in TERMINAL else run

    def _spent(self, session: AgentSession, now: float, *, but: Run | None = None) -> Decimal:
        return sum((self.runs[r].cost(now) for r in session.run_ids if self.runs[r] is not but), Decimal(0))

    # --- runs ---------------------------------------------------------------------------------

    @staticmethod
    def check_schema(schema: dict[str, Any] | None) -> None:
        if schema is None:
            return
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            detail = [
                {"loc": ["body", "outputSchema"], "msg": f"Invalid JSON schema: {error.message}", "type": "value_error"}
            ]
            raise ApiError(422, detail) from error

    @staticmethod
    def planned_output(script: TaskScript, schema: dict[str, Any] | None, prompt: str) -> tuple[str, Any]:
        """The run's ``result`` text and ``output`` value if it completes (see the module doc)."""
        if script.output is not None:
            return script.output, None
        if script.output_json is not None:
            if schema is not None:
                try:
                    jsonschema.validate(script.output_json, schema)
                except jsonschema.ValidationError as error:
                    msg = (
                        "emulator scenario: the scripted output_json does not match the run's outputSchema: "
                        f"{error.message}"
                    )
                    raise ApiError(
                        422, [{"loc": ["body", "outputSchema"], "msg": msg, "type": "value_error"}]
                    ) from error
            return json.dumps(script.output_json), script.output_json
        if schema is not None:
            value = example_instance(schema, seed=prompt)
            return json.dumps(value), value
        return default_output(prompt, None), None

    def _new_browser(self, session: AgentSession, at: float) -> Browser:
        browser = Browser(
            id=str(uuid.uuid4()), created=at, timeout_minutes=AGENT_BROWSER_MINUTES, agent_session_id=session.id
        )
        browser.idle_stop = self._idle_stop(browser.id)
        self.state.browsers[browser.id] = browser
        self.browser_runs[browser.id] = []
        session.browser_id = browser.id
        return browser

    def _browser_for(self, session: AgentSession, at: float, *, check_cap: bool) -> tuple[Browser, bool]:
        """The session's browser if still active at ``at`` (reattached if a run used it), else a new one."""
        current = self.state.browsers.get(session.browser_id or "")
        if current is not None and current.stopped(at) is None:
            return current, bool(self.browser_runs.get(current.id))
        if check_cap:
            self.state._check_cap()
        return self._new_browser(session, at), False

    def _attachments(self, session: AgentSession, file_ids: list[str] | None, at: float) -> tuple[list[str], list[str]]:
        ids = [str(f) for f in file_ids or []]
        missing = [
            f
            for f in ids
            if (upload := self.uploads.get(f)) is None
            or upload.workspace_id != session.workspace_id
            or upload.uploaded_at is None
            or upload.uploaded_at > at
        ]
        return ids, missing

    def _start_run(
        self,
        session: AgentSession,
        prompt: str,
        body: dict[str, Any],
        *,
        at: float,
        check_cap: bool,
        planned: tuple[str, Any] | None = None,
    ) -> Run:
        """A run of ``session`` created at ``at`` (under the lock; raises 429 before changing anything)."""
        script = self.state.scenario.script_for(prompt)
        result_text, output_value = planned or self.planned_output(script, None, prompt)
        browser, reattached = self._browser_for(session, at, check_cap=check_cap)
        if "keepAlive" in body:
            session.keep_alive = body["keepAlive"] or DEFAULT_KEEP_ALIVE
        if body.get("model"):
            session.model = body["model"]
        if body.get("maxCostUsd") is not None:  # the session's budget, replaced
            session.cost_cap = _decimal(body["maxCostUsd"])
        run = Run(
            id=str(uuid.uuid4()),
            seq=self._next_seq(),
            session_id=session.id,
            workspace_id=session.workspace_id,
            prompt=prompt,
            model=session.model,
            script=script,
            created=at,
            browser_id=browser.id,
            browser_token=browser.token,
            reattached=reattached,
            keep_alive=session.keep_alive,
            result_text=result_text,
            output_value=output_value,
            output_schema=body.get("outputSchema"),
            model_params=body.get("modelParams"),
            judge=body.get("judge") is not None,
            budget_floor=at,
        )
        run.attached_file_ids, run.missing_file_ids = self._attachments(session, body.get("attachedFileIds"), at)
        if session.cost_cap is not None:
            run.session_cap = session.cost_cap
            run.session_budget = session.cost_cap - self._spent(session, at)
        self.runs[run.id] = run
        session.run_ids.append(run.id)
        session.updated = at
        self.browser_runs.setdefault(browser.id, []).append(run.id)
        return run

    def create_run(self, body: dict[str, Any], root_url: str) -> dict[str, Any]:
        """``POST /runs``: a new session (and workspace, and browser) unless ``sessionId``."""
        prompt = body["task"]
        schema = body.get("outputSchema")
        self.check_schema(schema)
        planned = self.planned_output(self.state.scenario.script_for(prompt), schema, prompt)
        with self.state.lock:
            now = self._now()
            if body.get("sessionId"):
                session = self._session(body["sessionId"])
                if body.get("workspaceId") and body["workspaceId"] != session.workspace_id:
                    raise ApiError(400, "workspaceId does not match the session's workspace")
                if self._active_run(session, now) is not None:
                    raise ApiError(409, SESSION_HAS_ACTIVE_RUN)
                self._workspace(session.workspace_id, writable=True)
            else:
                workspace = self._workspace(body["workspaceId"], writable=True) if body.get("workspaceId") else None
                self.state._check_cap()  # the new session's browser (before anything is made)
                if workspace is None:
                    workspace = self._new_workspace(None, now)
                session = AgentSession(
                    id=str(uuid.uuid4()),
                    workspace_id=workspace.id,
                    created=now,
                    updated=now,
                    seq=self._next_seq(),
                    keep_alive=body.get("keepAlive") or DEFAULT_KEEP_ALIVE,
                )
                self.sessions[session.id] = session
                self._new_browser(session, now)
            run = self._start_run(session, prompt, body, at=now, check_cap=True, planned=planned)
            return {
                "id": run.id,
                "status": run.status(now),
                "model": run.model,
                "sessionId": session.id,
                "workspaceId": run.workspace_id,
                "eventsUrl": f"{root_url}/api/v4/runs/{run.id}/events",
                "missingFileIds": run.missing_file_ids,
            }

    def run_view(self, run: Run, now: float) -> dict[str, Any]:
        end, status, error, cause = run.outcome()
        ended = now >= end
        completed = ended and status == "completed"
        judgement = None
        if run.judge and now >= end + JUDGE_DELAY and status in ("completed", "failed"):
            verdict = run.script.judge_verdict if cause == "script" else None
            if verdict is None:
                verdict = completed and bool(run.script.success_claim())
            reasoning = run.script.judgement or "Emulated judge: the scripted verdict."
            judgement = {"verdict": verdict, "reasoning": reasoning}
        cost = run.cost(now)
        session = self.sessions.get(run.session_id)
        return {
            "id": run.id,
            "task": run.prompt,
            "title": session.title if session is not None else None,
            "model": run.model,
            "modelParams": run.model_params,
            "contextLimit": CONTEXT_LIMIT,
            "status": run.status(now),
            "result": run.result_text if completed else None,
            "output": run.output_value if completed else None,
            "outputSchema": run.output_schema,
            "error": error if ended else None,
            "sessionId": run.session_id,
            "workspaceId": run.workspace_id,
            "attachedFileIds": run.attached_file_ids,
            "judgement": judgement,
            "totalInputTokens": int(cost * 2_000_000),
            "totalOutputTokens": int(cost * 100_000),
            "totalCostUsd": _money(cost),
            "createdAt": _iso(run.created),
            "updatedAt": _iso(max(run.created, min(now, end))),
        }

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            return self.run_view(self._run(run_id), now)

    def run_status(self, run_id: str) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            return {"status": self._run(run_id).status(now)}

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            run = self._run(run_id)
            if run.status(now) not in TERMINAL:
                run.cancelled_at = now
            return self.run_view(run, now)

    def list_runs(self, session_id: str | None, cursor: str | None, limit: int) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            runs = [r for r in self.runs.values() if session_id is None or r.session_id == session_id]
            page, next_cursor, more = _page(runs, lambda r: (r.created, r.seq), cursor, limit)
            return {"runs": [self.run_view(r, now) for r in page], "nextCursor": next_cursor, "hasMore": more}

    def run_events(self, run_id: str, after: int, limit: int) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            run = self._run(run_id)
            live_view_url = f"https://live.emulator.invalid/{run.browser_id}?token={run.browser_token}"
            events = [e for e in run.events(now, live_view_url) if e["id"] > after]
            page = events[:limit]
            return {"events": page, "nextAfter": page[-1]["id"] if page else after, "hasMore": len(events) > limit}

    def run_attachments(self, run_id: str) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            run = self._run(run_id)
            attachments = []
            for file_id in run.attached_file_ids:
                upload = self.uploads.get(file_id)
                if upload is None or upload.workspace_id != run.workspace_id:
                    continue
                uploaded = upload.uploaded_at is not None and upload.uploaded_at <= now
                attachments.append(
                    {
                        "id": upload.id,
                        "name": upload.name,
                        "contentType": upload.content_type,
                        "sizeBytes": upload.size,
                        "status": "uploaded" if uploaded else "pending",
                    }
                )
            return {"attachments": attachments}

    def active_run_count(self) -> int:
        with self.state.lock:
            now = self._now()
            return sum(r.status(now) not in TERMINAL for r in self.runs.values())

    # --- sessions -----------------------------------------------------------------------------

    def session_view(self, session: AgentSession, now: float) -> dict[str, Any]:
        latest = self.runs[session.run_ids[-1]]
        return {
            "sessionId": session.id,
            "workspaceId": session.workspace_id,
            "latestRunId": latest.id,
            "task": latest.prompt,
            "title": session.title,
            "status": latest.status(now),
            "createdAt": _iso(session.created),
            "updatedAt": _iso(max(session.updated, min(now, latest.ends()))),
        }

    def get_session(self, session_id: str) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            return self.session_view(self._session(session_id), now)

    def list_sessions(self, cursor: str | None, limit: int) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            sessions = [s for s in self.sessions.values() if not s.deleted and s.run_ids]
            page, next_cursor, more = _page(sessions, lambda s: (s.created, s.seq), cursor, limit)
            return {"sessions": [self.session_view(s, now) for s in page], "nextCursor": next_cursor, "hasMore": more}

    def update_session(self, session_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            session = self._session(session_id)
            if "title" in fields:
                session.title = fields["title"]
                session.updated = now
            return self.session_view(session, now)

    def _close_session(self, session: AgentSession, now: float) -> None:
        active = self._active_run(session, now)
        if active is not None:
            active.cancelled_at = now
        for message in self._messages_of(session):
            if message.status == "pending":
                message.status = "cancelled"
        for browser in self.state.browsers.values():
            if browser.agent_session_id == session.id and browser.stopped(now) is None:
                browser.stopped_at = now
        session.deleted = True

    def delete_session(self, session_id: str) -> None:
        with self.state.lock:
            now = self._now()
            self._close_session(self._session(session_id), now)

    def purge_session(self, session_id: str) -> None:
        """``POST /sessions/{id}/purge``: Zero Data Retention projects only (403 otherwise)."""
        with self.state.lock:
            if not self.state.zero_data_retention:
                raise ApiError(403, PURGE_NEEDS_ZDR)
            now = self._now()
            session = self._session(session_id)
            self._close_session(session, now)
            for run_id in session.run_ids:
                run = self.runs[run_id]
                run.prompt, run.result_text, run.output_value = "", None, None

    def session_cost(self, session_id: str) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            session = self._session(session_id)
            llm = self._spent(session, now)
            browser = Decimal(0)
            for b in self.state.browsers.values():
                if b.agent_session_id == session.id:
                    hours = _decimal(((b.stopped(now) or now) - b.created) / 3600)
                    browser += BROWSER_COST_PER_HOUR * hours
            return {
                "sessionId": session.id,
                "numRuns": len(session.run_ids),
                "llmCostUsd": _money(llm),
                "searchCostUsd": "0",
                "browserCostUsd": _money(browser),
                "proxyCostUsd": "0",
                "proxyUsedMb": "0",
                "totalCostUsd": _money(llm + browser),
            }

    def set_cost_cap(self, session_id: str, value: Any) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            session = self._session(session_id)
            cap = _decimal(value)
            session.cost_cap = cap
            active = self._active_run(session, now)
            if active is not None:
                active.session_cap = cap
                active.session_budget = cap - self._spent(session, now, but=active)
                active.budget_floor = now
            return {"sessionId": session.id, "maxCostUsd": str(cap)}

    # --- the queue ----------------------------------------------------------------------------

    @staticmethod
    def message_view(message: QueuedMessage) -> dict[str, Any]:
        return {
            "id": message.id,
            "sessionId": message.session_id,
            "runId": message.run_id,
            "mode": message.mode,
            "status": message.status,
            "text": message.text,
            "attachedFileIds": message.attached_file_ids,
            "createdAt": _iso(message.created),
        }

    def send_message(self, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /sessions/{id}/queue``: run now when idle, else queue (or interrupt)."""
        with self.state.lock:
            now = self._now()
            session = self._session(session_id)
            self._workspace(session.workspace_id, writable=True)
            active = self._active_run(session, now)
            interrupt = bool(body.get("interrupt"))
            message = QueuedMessage(
                id=len(self.messages) + 1,
                session_id=session.id,
                text=body["text"],
                created=now,
                mode="interrupt" if interrupt else "queue",
                attached_file_ids=body.get("attachedFileIds"),
            )
            if active is None or interrupt:
                if active is not None:
                    active.cancelled_at = now
                try:
                    body = {"attachedFileIds": message.attached_file_ids}
                    run = self._start_run(session, message.text, body, at=now, check_cap=True)
                except ApiError:
                    if active is not None:
                        active.cancelled_at = None  # refused: the interrupted run goes on
                    raise
                message.status, message.run_id = "consumed", run.id
            elif sum(m.status == "pending" for m in self._messages_of(session)) >= QUEUE_LIMIT:
                raise ApiError(429, QUEUE_FULL, {"Retry-After": str(self.state.retry_after)})
            self.messages[message.id] = message
            session.message_ids.append(message.id)
            return self.message_view(message)

    def _message(self, session_id: str, message_id: int) -> QueuedMessage:
        session = self._session(session_id)
        message = self.messages.get(message_id)
        if message is None or message.session_id != session.id:
            raise ApiError(404, "Message not found")
        return message

    def list_queue(self, session_id: str) -> dict[str, Any]:
        with self.state.lock:
            self._now()
            session = self._session(session_id)
            return {"queue": [self.message_view(m) for m in self._messages_of(session) if m.status == "pending"]}

    def get_message(self, session_id: str, message_id: int) -> dict[str, Any]:
        with self.state.lock:
            self._now()
            return self.message_view(self._message(session_id, message_id))

    def remove_message(self, session_id: str, message_id: int) -> dict[str, Any]:
        with self.state.lock:
            self._now()
            message = self._message(session_id, message_id)
            if message.status != "pending":
                raise ApiError(409, f"Message is {message.status}; only a pending message can be removed")
            message.status = "cancelled"
            return self.message_view(message)

    # --- browsers -----------------------------------------------------------------------------

    def active_browser_count(self) -> int:
        with self.state.lock:
            now = self._now()
            return sum(b.stopped(now) is None for b in self.state.browsers.values())

    def browsers_of(self, agent_session_id: str | None) -> list[dict[str, Any]]:
        """The ``/browsers`` views, most recent first, of one agent session (or all)."""
        with self.state.lock:
            self._now()
            views = self.state.list_browsers(None)
            return [v for v in views if agent_session_id is None or v["agentSessionId"] == agent_session_id]

    # --- workspaces ---------------------------------------------------------------------------

    def _new_workspace(self, name: str | None, now: float) -> Workspace:
        workspace = Workspace(id=str(uuid.uuid4()), name=name, created=now, updated=now)
        self.workspaces[workspace.id] = workspace
        return workspace

    @staticmethod
    def workspace_view(workspace: Workspace) -> dict[str, Any]:
        return {
            "id": workspace.id,
            "name": workspace.name,
            "archived": workspace.archived,
            "createdAt": _iso(workspace.created),
            "updatedAt": _iso(workspace.updated),
        }

    def create_workspace(self, name: str | None) -> dict[str, Any]:
        with self.state.lock:
            return self.workspace_view(self._new_workspace(name, self._now()))

    def get_workspace(self, workspace_id: str) -> dict[str, Any]:
        with self.state.lock:
            return self.workspace_view(self._workspace(workspace_id))

    def update_workspace(self, workspace_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            workspace = self._workspace(workspace_id)
            if "name" in fields:
                workspace.name = fields["name"]
                workspace.updated = self._now()
            return self.workspace_view(workspace)

    def delete_workspace(self, workspace_id: str) -> None:
        with self.state.lock:
            workspace = self._workspace(workspace_id)
            workspace.archived = True
            workspace.updated = self._now()

    def _write_outputs(self, workspace: Workspace, now: float) -> None:
        """The files the scenario has the agent write, once their run completed."""
        for run in self.runs.values():
            if run.workspace_id != workspace.id or run.outputs_written or run.status(now) != "completed":
                continue
            run.outputs_written = True
            for output in run.script.output_files:
                kind = mimetypes.guess_type(output.file_name)[0] or "application/octet-stream"
                workspace.files[output.file_name] = WorkspaceFile(
                    output.file_name, output.content.encode(), kind, run.ends()
                )

    def workspace_size(self, workspace_id: str) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            workspace = self._workspace(workspace_id)
            self._write_outputs(workspace, now)
            used = sum(len(f.content) for f in workspace.files.values())
            return {"usedBytes": used, "maxBytes": WORKSPACE_MAX_BYTES}

    def presign_uploads(self, workspace_id: str, body: dict[str, Any], root_url: str) -> dict[str, Any]:
        """``POST /workspaces/{id}/files/upload``: an upload URL per file, pinned to its type and size."""
        with self.state.lock:
            now = self._now()
            workspace = self._workspace(workspace_id, writable=True)
            self._write_outputs(workspace, now)
            planned = []
            for item in body["files"]:
                stored = re.sub(r"[^A-Za-z0-9._-]+", "_", item["name"].replace("\\", "/").rsplit("/", 1)[-1])
                if stored.strip(".") == "":
                    raise ApiError(400, f"Invalid file name: {item['name']!r}")
                planned.append((item, stored, f"uploads/{stored}"))
            if body.get("allowOverrides") is False:
                taken = [path for _, _, path in planned if path in workspace.files]
                if taken:
                    raise ApiError(409, f"Files already exist in the workspace: {', '.join(taken)}")
            answer = []
            for item, stored, path in planned:
                upload = Upload(
                    id=str(uuid.uuid4()),
                    workspace_id=workspace.id,
                    name=item["name"],
                    stored_name=stored,
                    path=path,
                    content_type=item.get("contentType") or "application/octet-stream",
                    size=item["size"],
                    token=token_source.token_urlsafe(24),
                    created=now,
                )
                self.uploads[upload.id] = upload
                self.upload_tokens[upload.token] = upload.id
                answer.append(
                    {
                        "id": upload.id,
                        "name": upload.name,
                        "storedName": stored,
                        "path": path,
                        "willOverride": path in workspace.files,
                        "uploadUrl": f"{root_url}/_emulator/upload/{upload.token}",
                    }
                )
            return {"files": answer}

    def put_upload(
        self, token: str, content_type: str | None, content_length: str | None, content: bytes
    ) -> str | None:
        """The presigned PUT: None when stored, else why it is refused (an S3 error code and message)."""
        with self.state.lock:
            now = self._now()
            upload = self.uploads.get(self.upload_tokens.get(token, ""))
            if upload is None:
                return "AccessDenied: Invalid or unknown upload URL"
            if now > upload.created + UPLOAD_URL_SECONDS:
                return "AccessDenied: Request has expired"
            if content_type != upload.content_type:
                return (
                    "SignatureDoesNotMatch: The request signature we calculated does not match the signature you "
                    f"provided (Content-Type must be {upload.content_type})"
                )
            if content_length != str(upload.size) or len(content) != upload.size:
                return (
                    "SignatureDoesNotMatch: The request signature we calculated does not match the signature you "
                    f"provided (Content-Length must be {upload.size})"
                )
            workspace = self._workspace(upload.workspace_id, writable=True)
            workspace.files[upload.path] = WorkspaceFile(upload.path, content, upload.content_type, now)
            workspace.updated = now
            upload.uploaded_at = now
            return None

    def list_files(
        self, workspace_id: str, *, prefix: str, limit: int, cursor: str | None, include_urls: bool, root_url: str
    ) -> dict[str, Any]:
        with self.state.lock:
            now = self._now()
            workspace = self._workspace(workspace_id)
            self._write_outputs(workspace, now)
            files = sorted((f for f in workspace.files.values() if f.path.startswith(prefix)), key=lambda f: f.path)
            if cursor is not None:
                try:
                    padded = cursor + "=" * (-len(cursor) % 4)
                    after = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
                except (ValueError, binascii.Error) as error:
                    raise ApiError(400, "Invalid cursor") from error
                files = [f for f in files if f.path > after]
            page = files[:limit]
            more = len(files) > limit
            views = []
            for f in page:
                view: dict[str, Any] = {"path": f.path, "size": len(f.content), "lastModified": _iso(f.modified)}
                if include_urls:
                    view["url"] = self.state.download_url("v4file", f"{workspace.id}:{f.path}", root_url)
                views.append(view)
            next_cursor = base64.urlsafe_b64encode(page[-1].path.encode()).decode().rstrip("=") if more else None
            return {"files": views, "nextCursor": next_cursor, "hasMore": more}

    def delete_file(self, workspace_id: str, path: str) -> None:
        with self.state.lock:
            now = self._now()
            workspace = self._workspace(workspace_id, writable=True)
            self._write_outputs(workspace, now)
            if workspace.files.pop(path, None) is None:
                raise ApiError(404, "File not found")

    def read_file(self, object_id: str) -> tuple[bytes, str]:
        """A workspace file's bytes and type, for its download link (``<workspace id>:<path>``)."""
        workspace_id, path = object_id.split(":", 1)
        with self.state.lock:
            workspace = self._workspace(workspace_id)
            stored = workspace.files.get(path)
            if stored is None:
                raise ApiError(404, "File not found")
            return stored.content, stored.content_type


def parse_money(value: Any) -> Decimal:
    """A USD amount sent as a number or a decimal string; > 0 (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, str) and not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", value.strip()):
        raise ValueError("must be a decimal number such as '2.50'")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as error:
        raise ValueError("must be a decimal number") from error
    if not amount.is_finite() or amount <= 0:
        raise ValueError("must be greater than 0")
    return amount
