"""The emulator's world: sessions and tasks whose lives follow the clock, kept behind one lock.

States are worked out when read, from the time a task was created and its script, so no
background thread is needed and a test never waits for a tick.
"""

from __future__ import annotations

import json
import secrets as token_source
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import jsonschema

from airflow_provider_browseruse.testing.scenario import Scenario, TaskScript, default_output

if TYPE_CHECKING:
    from airflow_provider_browseruse.testing._state_v4 import V4World

TOO_MANY_SESSIONS = (
    "Too many concurrent active sessions. Please wait for one to finish, kill one, or upgrade your plan."
)
SESSION_STOPPED = "Browser session is stopped. Please start a new session and try again."
#: ``concurrentSessionLimit`` when no cap is set (an integer all the same: the vendor's SDK needs one).
UNCAPPED_SESSION_LIMIT = 250
SESSION_BUSY = "Agent session already has a running task. Please wait for it to finish or stop it manually."
RUNNING = ("created", "started")


class ApiError(Exception):
    """An error answer: status, ``detail`` and extra headers."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.0001")))


@dataclass
class Task:
    id: str
    session_id: str
    prompt: str
    llm: str
    script: TaskScript
    output_text: str | None
    created: float  # wall clock
    metadata: dict[str, str]
    judge: bool
    start_url: str | None
    stopped_at: float | None = None
    file_ids: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # kept for tests, never sent back

    @property
    def started(self) -> float:
        return self.created + self.script.start_delay

    @property
    def ends(self) -> float:
        return self.started + self.script.duration

    def status(self, now: float) -> str:
        if self.stopped_at is not None and self.stopped_at < self.ends:
            return "stopped"
        if now >= self.ends:
            return self.script.status
        return "started" if now >= self.started else "created"

    def finished_at(self, now: float) -> float | None:
        if self.status(now) in RUNNING:
            return None
        return min(self.stopped_at or self.ends, self.ends)

    def cost(self, now: float) -> Decimal:
        if self.script.cost_per_second is not None:
            ran = min(now, self.stopped_at or now, self.ends) - self.started
            return Decimal(self.script.cost_per_second) * Decimal(str(max(0.0, ran)))
        full = Decimal(self.script.cost)
        if self.status(now) not in RUNNING and self.stopped_at is None:
            return full
        end = min(now, self.stopped_at or now)
        fraction = (end - self.started) / self.script.duration if self.script.duration else 1
        return full * Decimal(str(max(0.0, min(1.0, fraction))))


@dataclass
class Session:
    id: str
    keep_alive: bool
    persist_memory: bool
    created: float
    start_url: str | None = None
    recording: bool = False
    stopped_at: float | None = None
    share_token: str | None = None
    share_views: int = 0
    task_ids: list[str] = field(default_factory=list)


@dataclass
class Browser:
    """A browser session of ``/browsers``: a bare cloud browser reached over CDP, or (with
    ``agent_session_id``) the browser of a v4 agent session, shared by v2's and v4's ``/browsers``."""

    id: str
    created: float
    timeout_minutes: int
    stopped_at: float | None = None
    agent_session_id: str | None = None
    #: For an agent browser: when it stops on its own as seen at a given time (its session's
    #: keepAlive after its last run), or None while it is kept.
    idle_stop: Callable[[float], float | None] | None = field(default=None, repr=False, compare=False)
    #: The credential in its ``liveUrl`` and ``cdpUrl``.
    token: str = field(default_factory=lambda: token_source.token_urlsafe(12), repr=False)

    def stopped(self, now: float) -> float | None:
        """When it stopped: by request, when idle past its keepAlive, or at its timeout."""
        ends = self.created + 60 * self.timeout_minutes
        if self.idle_stop is not None:
            idle = self.idle_stop(now)
            if idle is not None:
                ends = min(ends, idle)
        if self.stopped_at is not None:
            return min(self.stopped_at, ends)
        return ends if now >= ends else None


#: What a bare browser costs, USD an hour (the API's own figure).
BROWSER_COST_PER_HOUR = Decimal("0.02")


class EmulatorState:
    """Sessions, tasks and the rules they follow.

    :param api_key: the only key accepted.
    :param scenario: scripts for tasks; by default every task finishes after 0.2 s.
    :param max_concurrent_sessions: the account's cap; a create beyond it gets 429.
    :param retry_after: seconds sent in ``Retry-After`` with that 429.
    :param zero_data_retention: the project has Zero Data Retention: every v4 route but
        ``POST /sessions/{id}/purge`` answers 403 (see :mod:`._state_v4`).
    :param clock: the wall clock (seconds); tests may swap it for a fake one.

    The cap counts v2's active sessions and v4's active agent browsers together (one account).
    """

    def __init__(
        self,
        api_key: str,
        *,
        scenario: Scenario | None = None,
        max_concurrent_sessions: int | None = None,
        retry_after: int = 5,
        clock: Any = time.time,
        zero_data_retention: bool = False,
    ) -> None:
        self.api_key = api_key
        self.scenario = scenario or Scenario()
        self.max_concurrent_sessions = max_concurrent_sessions
        self.retry_after = retry_after
        self.clock = clock
        self.lock = threading.RLock()
        self.sessions: dict[str, Session] = {}
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, tuple[str, str, str]] = {}  # file id -> (task id, name, content)
        self.download_tokens: dict[str, tuple[str, str]] = {}  # token -> (kind, id)
        self.project_id = str(uuid.uuid4())
        self.browsers: dict[str, Browser] = {}
        #: The most sessions active at once, and how many creates the cap refused (429).
        self.peak_active_sessions = 0
        self.refused_at_cap = 0
        self.zero_data_retention = zero_data_retention
        from airflow_provider_browseruse.testing._state_v4 import V4World  # it imports this module

        #: The v4 world: runs, agent sessions, workspaces (its browsers live in ``browsers``).
        self.v4: V4World = V4World(self)

    # --- sessions ------------------------------------------------------------------------------

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(str(session_id))
        if session is None:
            raise ApiError(404, "Session not found")
        return session

    def session_stopped_at(self, session: Session, now: float) -> float | None:
        """When the session stopped: by request, or (keepAlive false) when its task ended."""
        if session.stopped_at is not None:
            return session.stopped_at
        if not session.keep_alive and session.task_ids:
            task = self.tasks[session.task_ids[-1]]
            return task.finished_at(now)
        return None

    def session_active(self, session: Session, now: float) -> bool:
        return self.session_stopped_at(session, now) is None

    def active_session_count(self) -> int:
        with self.lock:
            now = self.clock()
            return sum(self.session_active(s, now) for s in self.sessions.values())

    def active_agent_browser_count(self) -> int:
        """Active browsers of v4 agent sessions (they count against the cap with v2's sessions)."""
        with self.lock:
            now = self.clock()
            return sum(b.agent_session_id is not None and b.stopped(now) is None for b in self.browsers.values())

    def _check_cap(self) -> None:
        """Refuse a new session (v2) or agent browser (v4) at the cap (429); count it toward
        ``peak_active_sessions`` otherwise."""
        active = self.active_session_count() + self.active_agent_browser_count()
        cap = self.max_concurrent_sessions
        if cap is not None and active >= cap:
            self.refused_at_cap += 1
            raise ApiError(429, TOO_MANY_SESSIONS, {"Retry-After": str(self.retry_after)})
        # Sessions only become active when created, so the peak is the most seen at a create.
        self.peak_active_sessions = max(self.peak_active_sessions, active + 1)

    def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._check_cap()
            session = Session(
                id=str(uuid.uuid4()),
                keep_alive=body.get("keepAlive", True),
                persist_memory=body.get("persistMemory", True),
                created=self.clock(),
                start_url=body.get("startUrl"),
                recording=bool(body.get("enableRecording")),
            )
            self.sessions[session.id] = session
            return self.session_item_view(session)

    def stop_session(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            session = self._session(session_id)
            now = self.clock()
            if self.session_active(session, now):
                session.stopped_at = now
                for task_id in session.task_ids:
                    task = self.tasks[task_id]
                    if task.status(now) in RUNNING:
                        task.stopped_at = now
            return self.session_view(session)

    def delete_session(self, session_id: str) -> None:
        with self.lock:
            session = self._session(session_id)
            self.stop_session(session.id)
            del self.sessions[session.id]

    def list_sessions(self, status: str | None) -> list[dict[str, Any]]:
        with self.lock:
            views = [
                self.session_item_view(s) for s in sorted(self.sessions.values(), key=lambda s: s.created, reverse=True)
            ]
            return [v for v in views if status is None or v["status"] == status]

    def share(self, session_id: str, *, create: bool) -> dict[str, Any]:
        with self.lock:
            session = self._session(session_id)
            if session.share_token is None:
                if not create:
                    raise ApiError(404, "Public share not found")
                session.share_token = token_source.token_urlsafe(12)
            return {
                "shareToken": session.share_token,
                "shareUrl": f"https://share.emulator.invalid/{session.share_token}",
                "viewCount": session.share_views,
                "lastViewedAt": None,
            }

    def unshare(self, session_id: str) -> None:
        with self.lock:
            self._session(session_id).share_token = None

    def session_item_view(self, session: Session) -> dict[str, Any]:
        now = self.clock()
        stopped_at = self.session_stopped_at(session, now)
        active = stopped_at is None
        return {
            "id": session.id,
            "status": "active" if active else "stopped",
            "liveUrl": f"https://live.emulator.invalid/{session.id}?token=emulated" if active else None,
            "recordingUrl": None
            if active or not session.recording
            else f"https://files.emulator.invalid/recording/{session.id}",
            "startedAt": _iso(session.created),
            "finishedAt": _iso(stopped_at),
            "persistMemory": session.persist_memory,
            "keepAlive": session.keep_alive,
            "proxyUsedMb": "0",
            "proxyCost": _money(Decimal("0.001") * len(session.task_ids)),
        }

    # --- browsers (``/browsers``) ---------------------------------------------------------------

    def create_browser(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            browser = Browser(id=str(uuid.uuid4()), created=self.clock(), timeout_minutes=body.get("timeout", 60))
            self.browsers[browser.id] = browser
            return self.browser_view(browser)

    def _browser(self, browser_id: str) -> Browser:
        browser = self.browsers.get(str(browser_id))
        if browser is None:
            raise ApiError(404, "Browser session not found")
        return browser

    def get_browser(self, browser_id: str) -> dict[str, Any]:
        with self.lock:
            return self.browser_view(self._browser(browser_id))

    def stop_browser(self, browser_id: str) -> dict[str, Any]:
        with self.lock:
            browser = self._browser(browser_id)
            now = self.clock()
            if browser.stopped(now) is None:
                browser.stopped_at = now
            return self.browser_view(browser)

    def list_browsers(self, status: str | None) -> list[dict[str, Any]]:
        with self.lock:
            views = [
                self.browser_view(b) for b in sorted(self.browsers.values(), key=lambda b: b.created, reverse=True)
            ]
            return [v for v in views if status is None or v["status"] == status]

    def browser_view(self, browser: Browser) -> dict[str, Any]:
        now = self.clock()
        stopped_at = browser.stopped(now)
        hours = Decimal(str(((stopped_at or now) - browser.created) / 3600))
        active = stopped_at is None
        return {
            "id": browser.id,
            "status": "active" if active else "stopped",
            "liveUrl": f"https://live.emulator.invalid/{browser.id}?token={browser.token}" if active else None,
            "cdpUrl": f"wss://cdp.emulator.invalid/{browser.id}?token={browser.token}" if active else None,
            "timeoutAt": _iso(browser.created + 60 * browser.timeout_minutes),
            "startedAt": _iso(browser.created),
            "finishedAt": _iso(stopped_at),
            "proxyUsedMb": "0",
            "proxyCost": "0",
            "browserCost": _money(BROWSER_COST_PER_HOUR * hours),
            "agentSessionId": browser.agent_session_id,
            "recordingUrl": None,
        }

    def session_view(self, session: Session) -> dict[str, Any]:
        view = self.session_item_view(session)
        view["tasks"] = [self.task_item_view(self.tasks[t]) for t in session.task_ids]
        view["publicShareUrl"] = (
            f"https://share.emulator.invalid/{session.share_token}" if session.share_token else None
        )
        return view

    def get_session(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            return self.session_view(self._session(session_id))

    # --- tasks ---------------------------------------------------------------------------------

    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(str(task_id))
        if task is None:
            raise ApiError(404, "Task not found")
        return task

    def create_task(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["task"]
        script = self.scenario.script_for(prompt)
        schema = self._schema(body.get("structuredOutput"))
        output_text = self._scripted_output(script, schema, prompt)
        with self.lock:
            now = self.clock()
            session = self._session_for_task(body, now)
            task = Task(
                id=str(uuid.uuid4()),
                session_id=session.id,
                prompt=prompt,
                llm=body.get("llm") or "browser-use-2.0",
                script=script,
                output_text=output_text,
                created=now,
                metadata=dict(body.get("metadata") or {}),
                judge=bool(body.get("judge")),
                start_url=body.get("startUrl"),
                secrets=dict(body.get("secrets") or {}),
            )
            for output_file in script.output_files:
                file_id = str(uuid.uuid4())
                self.files[file_id] = (task.id, output_file.file_name, output_file.content)
                task.file_ids.append(file_id)
            self.tasks[task.id] = task
            session.task_ids.append(task.id)
            return {"id": task.id, "sessionId": session.id}

    def _session_for_task(self, body: dict[str, Any], now: float) -> Session:
        """The given session if it is active and idle, else a new one-off session (under the lock)."""
        if body.get("sessionId"):
            session = self._session(body["sessionId"])
            if not self.session_active(session, now):
                raise ApiError(400, SESSION_STOPPED)
            if any(self.tasks[t].status(now) in RUNNING for t in session.task_ids):
                raise ApiError(400, SESSION_BUSY)
            return session
        self._check_cap()
        settings = body.get("sessionSettings") or {}
        session = Session(
            id=str(uuid.uuid4()),
            keep_alive=False,
            persist_memory=True,
            created=now,
            recording=bool(settings.get("enableRecording")),
        )
        self.sessions[session.id] = session
        return session

    @staticmethod
    def _schema(structured_output: str | None) -> dict[str, Any] | None:
        if structured_output is None:
            return None
        try:
            schema = json.loads(structured_output)
            jsonschema.Draft202012Validator.check_schema(schema)
        except (ValueError, jsonschema.SchemaError) as error:
            raise ApiError(
                422,
                [
                    {
                        "loc": ["body", "structuredOutput"],
                        "msg": f"Invalid JSON schema: {error}",
                        "type": "value_error",
                    }
                ],
            ) from error
        return schema if isinstance(schema, dict) else None

    @staticmethod
    def _scripted_output(script: TaskScript, schema: dict[str, Any] | None, prompt: str) -> str | None:
        if script.output is not None:
            return script.output
        if script.output_json is not None:
            if schema is not None:
                try:
                    jsonschema.validate(script.output_json, schema)
                except jsonschema.ValidationError as error:
                    raise ApiError(
                        422,
                        [
                            {
                                "loc": ["body", "structuredOutput"],
                                "msg": "emulator scenario: the scripted output_json does not match "
                                f"the task's structuredOutput schema: {error.message}",
                                "type": "value_error",
                            }
                        ],
                    ) from error
            return json.dumps(script.output_json)
        if script.status != "finished":
            return f"The agent could not complete the task: {prompt[:100]}"
        return default_output(prompt, schema)

    def stop_task(self, task_id: str, *, and_session: bool) -> dict[str, Any]:
        with self.lock:
            task = self._task(task_id)
            now = self.clock()
            if task.status(now) in RUNNING:
                task.stopped_at = now
            if and_session:
                self.stop_session(task.session_id)
            return self.task_view(task)

    def _common_task_fields(self, task: Task) -> dict[str, Any]:
        now = self.clock()
        status = task.status(now)
        ended = status not in RUNNING
        script = task.script
        return {
            "id": task.id,
            "status": status,
            "output": task.output_text if ended and status != "stopped" else None,
            "finishedAt": _iso(task.finished_at(now)),
            "isSuccess": script.success_claim() if ended and status != "stopped" else None,
            "cost": _money(task.cost(now)),
        }

    def task_status_view(self, task_id: str) -> dict[str, Any]:
        with self.lock:
            return self._common_task_fields(self._task(task_id))

    def task_item_view(self, task: Task) -> dict[str, Any]:
        now = self.clock()
        view = self._common_task_fields(task)
        ended = view["status"] in ("finished", "failed")
        verdict = None
        judgement = None
        if task.judge and ended:
            verdict = task.script.judge_verdict
            if verdict is None:
                verdict = bool(task.script.success_claim())
            judgement = task.script.judgement or json.dumps(
                {"verdict": verdict, "reasoning": "Emulated judge: the scripted verdict."}
            )
        view.update(
            {
                "sessionId": task.session_id,
                "llm": task.llm,
                "task": task.prompt,
                "createdAt": _iso(task.created),
                "startedAt": _iso(task.started) if now >= task.started else None,
                "metadata": task.metadata,
                "browserUseVersion": "emulator",
                "judgement": judgement,
                "judgeVerdict": verdict,
                "suggestions": None,
            }
        )
        return view

    def task_view(self, task: Task) -> dict[str, Any]:
        now = self.clock()
        view = self.task_item_view(task)
        script = task.script
        elapsed = max(0.0, min(now, task.finished_at(now) or now) - task.started)
        done_steps = script.steps if view["status"] not in RUNNING else 0
        if view["status"] in RUNNING and script.duration:
            done_steps = int(script.steps * min(1.0, elapsed / script.duration))
        view["steps"] = [
            {
                "number": n,
                "memory": f"Step {n} of the emulated agent.",
                "evaluationPreviousGoal": "Success" if n > 1 else "Starting",
                "nextGoal": f"Work on: {task.prompt[:60]}",
                "url": task.start_url or "https://example.com/",
                "screenshotUrl": None,
                "actions": [json.dumps({"emulated_step": n})],
                "duration": round(script.duration / max(script.steps, 1), 3),
            }
            for n in range(1, done_steps + 1)
        ]
        files_ready = view["status"] == "finished"
        view["outputFiles"] = [{"id": f, "fileName": self.files[f][1]} for f in task.file_ids] if files_ready else []
        return view

    def get_task(self, task_id: str) -> dict[str, Any]:
        with self.lock:
            return self.task_view(self._task(task_id))

    def list_tasks(
        self, *, session_id: str | None, status: str | None, after: str | None, before: str | None
    ) -> list[dict[str, Any]]:
        with self.lock:
            tasks = sorted(self.tasks.values(), key=lambda t: t.created, reverse=True)
            views = [self.task_item_view(t) for t in tasks if session_id is None or t.session_id == session_id]
        return [
            v
            for v in views
            if (status is None or v["status"] == status)
            and (after is None or v["createdAt"] >= after)
            and (before is None or v["createdAt"] <= before)
        ]

    def download_url(self, kind: str, object_id: str, base_url: str) -> str:
        token = token_source.token_urlsafe(16)
        with self.lock:
            self.download_tokens[token] = (kind, object_id)
        return f"{base_url}/_emulator/download/{token}"

    def output_file(self, task_id: str, file_id: str) -> tuple[str, str]:
        with self.lock:
            task = self._task(task_id)
            if file_id not in task.file_ids or task.status(self.clock()) != "finished":
                raise ApiError(404, "Output file not found")
            _, name, content = self.files[file_id]
            return name, content

    def account(self) -> dict[str, Any]:
        return {
            "name": "Emulated account",
            "totalCreditsBalanceUsd": 100.0,
            "monthlyCreditsBalanceUsd": 50.0,
            "additionalCreditsBalanceUsd": 50.0,
            "rateLimit": 100,
            "planInfo": {
                "planName": "Emulator",
                "subscriptionStatus": "active",
                "subscriptionId": None,
                "subscriptionCurrentPeriodEnd": None,
                "subscriptionCanceledAt": None,
            },
            "isFreeTier": False,
            "projectId": self.project_id,
            # An integer, as the vendor's newest SDK requires: the cap, or the default plan's.
            "concurrentSessionLimit": self.max_concurrent_sessions or UNCAPPED_SESSION_LIMIT,
            "activeSessionCount": self.active_session_count(),
        }
