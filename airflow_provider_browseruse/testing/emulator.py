"""A local emulator of the Browser Use Cloud API (v2, and v4 beside it), served over loopback HTTP.

In tests::

    with BrowserUseEmulator(api_key="test-key") as emulator:
        hook_conn = emulator.airflow_connection()  # JSON for AIRFLOW_CONN_BROWSER_USE_DEFAULT
        ...
        assert emulator.active_session_count() == 0

From a shell::

    python -m airflow_provider_browseruse.testing.emulator --port 8790 --api-key test-key

The API v2 is served under ``/api/v2`` (``emulator.base_url``) and the API v4 (runs, agent
sessions, workspaces; see :mod:`airflow_provider_browseruse.testing._state_v4`) under ``/api/v4``
(``emulator.v4_base_url``), with the same key. Beside them it serves an admin API under
``/_emulator`` (no key needed): ``GET state``, ``GET requests``, ``POST faults`` / ``DELETE
faults``, ``POST scenario``, ``POST reset``, the download links it hands out for logs, output and
workspace files, and the presigned upload URLs of v4 workspaces (``PUT upload/<token>``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_provider_browseruse.testing._state import ApiError, EmulatorState
from airflow_provider_browseruse.testing._state_v4 import ZDR_DETAIL, parse_money
from airflow_provider_browseruse.testing.scenario import Scenario

API_PREFIX = "/api/v2"
V4_PREFIX = "/api/v4"
#: How a v4 request's path is logged and matched by faults: this, then the path below /api/v4.
V4_LOG_PREFIX = "/v4"
ADMIN_PREFIX = "/_emulator"
API_KEY_HEADER = b"x-browser-use-api-key"

SUPPORTED_LLMS = Literal[
    "browser-use-llm", "browser-use-2.0", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "o3",
    "gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview", "gemini-3.1-pro-preview",
    "gemini-3-flash-preview", "gemini-flash-latest", "gemini-flash-lite-latest",
    "claude-sonnet-4-20250514", "claude-sonnet-4-5-20250929", "claude-sonnet-4-6",
    "claude-opus-4-5-20251101", "claude-opus-4-7", "llama-4-maverick-17b-128e-instruct",
    "claude-3-7-sonnet-20250219",
]  # fmt: skip
CountryCode = Annotated[str, Field(pattern=r"^[a-z]{2}$")]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --- request bodies (as the real service validates them) ---------------------------------------


class SessionSettings(BaseModel):
    profileId: uuid.UUID | None = None
    proxyCountryCode: CountryCode | None = "us"
    browserScreenWidth: int | None = Field(default=None, ge=320, le=6144)
    browserScreenHeight: int | None = Field(default=None, ge=320, le=3456)
    enableRecording: bool = False


class CreateSessionRequest(SessionSettings):
    startUrl: str | None = None
    persistMemory: bool = True
    keepAlive: bool = True
    customProxy: dict[str, Any] | None = None


class CreateTaskRequest(BaseModel):
    task: str = Field(min_length=1, max_length=50000)
    llm: SUPPORTED_LLMS = "browser-use-2.0"
    startUrl: str | None = None
    maxSteps: int = Field(default=100, ge=1, le=10000)
    structuredOutput: str | None = None
    sessionId: uuid.UUID | None = None
    metadata: dict[str, str] | None = None
    secrets: dict[str, str] | None = None
    allowedDomains: list[str] | None = None
    opVaultId: str | None = None
    sessionSettings: SessionSettings | None = None
    highlightElements: bool = False
    flashMode: bool = False
    thinking: bool = False
    vision: bool | Literal["auto"] = True
    systemPromptExtension: str = Field(default="", max_length=10000)
    judge: bool = False
    judgeGroundTruth: str | None = Field(default=None, max_length=10000)
    judgeLlm: SUPPORTED_LLMS | None = None
    skillIds: list[str] | None = None

    @field_validator("metadata")
    @classmethod
    def _at_most_ten(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > 10:
            raise ValueError("metadata can have at most 10 key-value pairs")
        return value


class UpdateSessionRequest(BaseModel):
    action: Literal["stop"]


class CreateBrowserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profileId: uuid.UUID | None = None
    proxyCountryCode: str | None = None
    timeout: int = Field(default=60, ge=1, le=240)
    browserScreenWidth: int | None = Field(default=None, ge=320, le=6144)
    browserScreenHeight: int | None = Field(default=None, ge=320, le=3456)
    allowResizing: bool = False
    customProxy: dict[str, Any] | None = None
    enableRecording: bool = False


class UpdateBrowserRequest(BaseModel):
    action: Literal["stop"]


class UpdateTaskRequest(BaseModel):
    action: Literal["stop", "stop_task_and_session"]


# --- v4 request bodies (as the vendor SDK's newest models validate them) -----------------------


def _money_field(value: Any) -> Any:
    """A USD amount: a number or a decimal string, > 0 (kept as sent)."""
    if value is None:
        return value
    parse_money(value)
    return value


class RunBrowserSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profileId: uuid.UUID | None = None
    proxyCountryCode: CountryCode | None = "us"
    customProxy: dict[str, Any] | None = None
    screenWidth: int | None = Field(default=None, ge=320, le=6144)
    screenHeight: int | None = Field(default=None, ge=320, le=3456)
    allowResizing: bool | None = None
    record: bool | None = None
    extensionIds: list[uuid.UUID] | None = Field(default=None, max_length=3)


class RunJudgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context: str | None = Field(default=None, max_length=10000)


class SecretBinding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str
    source: dict[str, Any]
    allowedDomains: list[str] = Field(min_length=1, max_length=20)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") not in ("inline", "onepassword"):
            raise ValueError("source.type must be 'inline' or 'onepassword'")
        return value


class CreateRunRequest(BaseModel):
    """``POST /api/v4/runs``: the SDK's RunCreateRequest (unknown fields refused, any model name)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1)
    outputSchema: dict[str, Any] | None = None
    model: str | None = None
    modelParams: dict[str, Any] | None = None
    sessionId: uuid.UUID | None = None
    workspaceId: uuid.UUID | None = None
    browserSettings: RunBrowserSettings | None = None
    keepAlive: int | None = Field(default=None, ge=120, le=14400)
    agentmail: bool | None = False
    agentcardWalletId: uuid.UUID | None = None
    stripeLinkConnectionId: uuid.UUID | None = None
    attachedFileIds: list[uuid.UUID] | None = Field(default=None, max_length=20)
    secretBindings: list[SecretBinding] | None = Field(default=None, max_length=20)
    opVaultId: str | None = Field(default=None, max_length=64)
    opVaultAllowedDomains: list[str] | None = None
    judge: RunJudgeSettings | None = None
    maxCostUsd: float | str | None = None

    check_money = field_validator("maxCostUsd", mode="before")(_money_field)


class QueueMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    interrupt: bool = False
    attachedFileIds: list[uuid.UUID] | None = Field(default=None, max_length=20)


class SessionUpdateRequest(BaseModel):
    title: str | None = Field(default=None, max_length=255)


class SessionCostCapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    maxCostUsd: float | str

    check_money = field_validator("maxCostUsd", mode="before")(_money_field)


class WorkspaceRequest(BaseModel):
    name: str | None = Field(default=None, max_length=100)


class WorkspaceFileUploadItem(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    contentType: str = Field(default="application/octet-stream", max_length=255)
    size: int = Field(ge=1, le=52428800)


class WorkspaceFileUploadRequest(BaseModel):
    files: list[WorkspaceFileUploadItem] = Field(min_length=1, max_length=10)
    allowOverrides: bool = True


class CreateBrowserRequestV4(CreateBrowserRequest):
    metadata: dict[str, str] | None = None
    pdfRendererEnabled: bool = True
    solveCaptchas: bool = True
    extensionIds: list[uuid.UUID] = Field(default_factory=list, max_length=3)


# --- faults and the request log ----------------------------------------------------------------


class Fault(BaseModel):
    """A fault injected into the answers to matching requests.

    :param method: HTTP method to match (any when None).
    :param path: regular expression that must match the whole logged path: below ``/api/v2`` for
        v2 (``/tasks``, ``/tasks/<id>/status``), ``/v4`` and the path below ``/api/v4`` for v4
        (``/v4/runs``, ``/v4/runs/<id>/status``). Every kind of fault works on both.
    :param times: how many matching requests get the fault.
    :param status: answer with this status and ``{"detail": ...}``.
    :param retry_after: with ``status``, a ``Retry-After`` header in seconds.
    :param latency: seconds to wait before handling the request (with ``after_handling``: after
        handling it, before answering: it took effect but the answer comes late).
    :param drop: close the connection in the middle of the answer.
    :param malformed: answer 200 with a body that is not JSON.
    :param after_handling: let the emulator handle the request first (a create creates), then
        replace its answer with the fault: the ambiguous failure a client must not resend.
    :param redirect_to: answer ``307`` with this ``Location`` (the real API never redirects).
    :param corrupt_gzip: answer 200 with ``Content-Encoding: gzip`` and a body that is not gzip.
    :param deep_json: answer 200 with JSON nested 100,000 levels deep.
    :param drip: answer 200 with a JSON body sent one byte every ``drip`` seconds.
    :param oversized: answer 200 with a JSON string body of this many bytes.
    :param endless_pages: answer a list page that claims a billion items, however far one pages.
    """

    model_config = ConfigDict(extra="forbid")

    method: str | None = None
    path: str = ".*"
    times: int = Field(default=1, ge=1)
    status: int | None = Field(default=None, ge=100, le=599)
    retry_after: int | None = Field(default=None, ge=0)
    latency: float = Field(default=0, ge=0)
    drop: bool = False
    malformed: bool = False
    after_handling: bool = False
    redirect_to: str | None = None
    corrupt_gzip: bool = False
    deep_json: bool = False
    drip: float = Field(default=0, ge=0)
    oversized: int = Field(default=0, ge=0)
    endless_pages: bool = False

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and re.fullmatch(self.path, path) is not None

    @property
    def replaces_answer(self) -> bool:
        hostile = self.redirect_to or self.corrupt_gzip or self.deep_json or self.drip or self.oversized
        return bool(self.status is not None or self.drop or self.malformed or hostile or self.endless_pages)


@dataclass(frozen=True)
class RequestRecord:
    """One request the emulator answered."""

    method: str
    path: str  # below /api/v2 for v2 calls, "/v4" + below /api/v4 for v4 calls, else the whole path
    status: int
    time: float  # wall clock when it arrived
    duration: float  # seconds to answer
    client_port: int = 0  # the client's TCP port: distinct ports are distinct connections
    response_bytes: int = 0  # the body's Content-Length


class EmulatedDrop(Exception):
    """Raised on purpose to cut a connection mid-answer; the server logs nothing for it."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], EmulatedDrop))


# --- the app -----------------------------------------------------------------------------------


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if status == 204:
        return Response(status_code=204, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def build_app(emulator: BrowserUseEmulator) -> FastAPI:
    """The FastAPI app: the API routes under /api/v2 and the admin routes under /_emulator."""
    state = emulator.state
    app = FastAPI(title="Browser Use API v2 emulator", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> Response:
        return _json(error.status, {"detail": error.detail}, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> Response:
        # The real service's shape, minus the echoed input (it may hold task secrets).
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        return _json(422, {"detail": detail})

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    api = API_PREFIX

    @app.get(f"{api}/billing/account")
    async def account() -> Response:
        return _json(200, state.account())

    @app.post(f"{api}/sessions")
    async def create_session(body: Annotated[CreateSessionRequest | None, Body()] = None) -> Response:
        fields = (body or CreateSessionRequest()).model_dump(exclude_unset=True)
        return _json(201, state.create_session(fields))

    @app.get(f"{api}/sessions")
    async def list_sessions(
        pageSize: Annotated[int, Query(ge=1, le=100)] = 10,
        pageNumber: Annotated[int, Query(ge=1)] = 1,
        filterBy: Literal["active", "stopped"] | None = None,
    ) -> Response:
        return _json(200, _page(state.list_sessions(filterBy), pageSize, pageNumber))

    @app.get(f"{api}/sessions/{{session_id}}")
    async def get_session(session_id: uuid.UUID) -> Response:
        return _json(200, state.get_session(str(session_id)))

    @app.patch(f"{api}/sessions/{{session_id}}")
    async def update_session(session_id: uuid.UUID, body: UpdateSessionRequest) -> Response:
        return _json(200, state.stop_session(str(session_id)))

    @app.delete(f"{api}/sessions/{{session_id}}")
    async def delete_session(session_id: uuid.UUID) -> Response:
        state.delete_session(str(session_id))
        return _json(204, None)

    @app.get(f"{api}/sessions/{{session_id}}/public-share")
    async def get_share(session_id: uuid.UUID) -> Response:
        return _json(200, state.share(str(session_id), create=False))

    @app.post(f"{api}/sessions/{{session_id}}/public-share")
    async def create_share(session_id: uuid.UUID) -> Response:
        return _json(201, state.share(str(session_id), create=True))

    @app.delete(f"{api}/sessions/{{session_id}}/public-share")
    async def delete_share(session_id: uuid.UUID) -> Response:
        state.unshare(str(session_id))
        return _json(204, None)

    @app.post(f"{api}/browsers")
    async def create_browser(body: Annotated[CreateBrowserRequest | None, Body()] = None) -> Response:
        return _json(201, state.create_browser((body or CreateBrowserRequest()).model_dump(exclude_unset=True)))

    @app.get(f"{api}/browsers")
    async def list_browsers(
        pageSize: Annotated[int, Query(ge=1, le=100)] = 10,
        pageNumber: Annotated[int, Query(ge=1)] = 1,
        filterBy: Literal["active", "stopped"] | None = None,
    ) -> Response:
        return _json(200, _page(state.list_browsers(filterBy), pageSize, pageNumber))

    @app.get(f"{api}/browsers/{{browser_id}}")
    async def get_browser(browser_id: uuid.UUID) -> Response:
        return _json(200, state.get_browser(str(browser_id)))

    @app.patch(f"{api}/browsers/{{browser_id}}")
    async def update_browser(browser_id: uuid.UUID, body: UpdateBrowserRequest) -> Response:
        return _json(200, state.stop_browser(str(browser_id)))

    @app.post(f"{api}/tasks")
    async def create_task(body: CreateTaskRequest) -> Response:
        fields = body.model_dump(exclude_unset=True, mode="json")
        return _json(202, state.create_task(fields))

    @app.get(f"{api}/tasks")
    async def list_tasks(
        pageSize: Annotated[int, Query(ge=1, le=100)] = 10,
        pageNumber: Annotated[int, Query(ge=1)] = 1,
        sessionId: uuid.UUID | None = None,
        filterBy: Literal["created", "started", "finished", "failed", "stopped"] | None = None,
        after: str | None = None,
        before: str | None = None,
    ) -> Response:
        items = state.list_tasks(
            session_id=str(sessionId) if sessionId else None, status=filterBy, after=after, before=before
        )
        return _json(200, _page(items, pageSize, pageNumber))

    @app.get(f"{api}/tasks/{{task_id}}")
    async def get_task(task_id: uuid.UUID) -> Response:
        return _json(200, state.get_task(str(task_id)))

    @app.get(f"{api}/tasks/{{task_id}}/status")
    async def get_task_status(task_id: uuid.UUID) -> Response:
        return _json(200, state.task_status_view(str(task_id)))

    @app.patch(f"{api}/tasks/{{task_id}}")
    async def update_task(task_id: uuid.UUID, body: UpdateTaskRequest) -> Response:
        view = state.stop_task(str(task_id), and_session=body.action == "stop_task_and_session")
        return _json(200, view)

    @app.get(f"{api}/tasks/{{task_id}}/logs")
    async def task_logs(task_id: uuid.UUID, request: Request) -> Response:
        state.get_task(str(task_id))
        return _json(200, {"downloadUrl": state.download_url("logs", str(task_id), base(request))})

    @app.get(f"{api}/files/tasks/{{task_id}}/output-files/{{file_id}}")
    async def output_file(task_id: uuid.UUID, file_id: uuid.UUID, request: Request) -> Response:
        name, _ = state.output_file(str(task_id), str(file_id))
        url = state.download_url("file", f"{task_id}/{file_id}", base(request))
        return _json(200, {"id": str(file_id), "fileName": name, "downloadUrl": url})

    # --- admin ---------------------------------------------------------------------------------

    @app.get(f"{ADMIN_PREFIX}/download/{{token}}")
    async def download(token: str) -> Response:
        kind, object_id = state.download_tokens.get(token, ("", ""))
        if kind == "logs":
            task = state.get_task(object_id)
            lines = [f"step {s['number']}: {s['nextGoal']}" for s in task["steps"]]
            return PlainTextResponse("\n".join([f"task {object_id}: {task['status']}", *lines]) + "\n")
        if kind == "file":
            task_id, file_id = object_id.split("/")
            _, content = state.output_file(task_id, file_id)
            return PlainTextResponse(content)
        if kind == "v4file":
            data, media_type = state.v4.read_file(object_id)
            return Response(data, media_type=media_type)
        return _json(404, {"detail": "Download link not found or expired"})

    @app.put(f"{ADMIN_PREFIX}/upload/{{token}}")
    async def upload(token: str, request: Request) -> Response:
        """A v4 workspace's presigned PUT: the declared Content-Type and exact Content-Length."""
        refused = state.v4.put_upload(
            token,
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            await request.body(),
        )
        if refused is None:
            return Response(status_code=200)
        code, message = refused.split(": ", 1)
        xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'

        return Response(xml, status_code=403, media_type="application/xml")

    @app.get(f"{ADMIN_PREFIX}/state")
    async def admin_state() -> Response:
        return _json(
            200,
            {
                "activeSessionCount": state.active_session_count(),
                "sessionCount": len(state.sessions),
                "taskCount": len(state.tasks),
                "peakActiveSessions": state.peak_active_sessions,
                "refusedAtCap": state.refused_at_cap,
                **emulator._v4_counts(),
            },
        )

    @app.get(f"{ADMIN_PREFIX}/requests")
    async def admin_requests() -> Response:
        return _json(200, [asdict(r) for r in emulator.requests()])

    @app.post(f"{ADMIN_PREFIX}/faults")
    async def admin_add_fault(fault: Fault) -> Response:
        emulator.add_fault(fault)
        return _json(201, fault.model_dump())

    @app.delete(f"{ADMIN_PREFIX}/faults")
    async def admin_clear_faults() -> Response:
        emulator.clear_faults()
        return _json(204, None)

    @app.post(f"{ADMIN_PREFIX}/scenario")
    async def admin_scenario(body: Annotated[dict[str, Any], Body()]) -> Response:
        try:
            state.scenario = Scenario.from_dict(body)
        except ValueError as error:  # pydantic's ValidationError is a ValueError
            return _json(422, {"detail": str(error)})
        return _json(204, None)

    @app.post(f"{ADMIN_PREFIX}/reset")
    async def admin_reset() -> Response:
        emulator.reset()
        return _json(204, None)

    _add_v4_routes(app, emulator)
    return app


def _add_v4_routes(app: FastAPI, emulator: BrowserUseEmulator) -> None:
    """The API v4 under /api/v4 (the v4 world is ``emulator.state.v4``)."""
    state = emulator.state
    v4 = state.v4
    api = V4_PREFIX

    def root(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    # --- runs ----------------------------------------------------------------------------------

    @app.post(f"{api}/runs")
    async def create_run(body: CreateRunRequest, request: Request) -> Response:
        return _json(200, v4.create_run(body.model_dump(exclude_unset=True, mode="json"), root(request)))

    @app.get(f"{api}/runs")
    async def list_runs(
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        cursor: str | None = None,
        sessionId: uuid.UUID | None = None,
    ) -> Response:
        return _json(200, v4.list_runs(str(sessionId) if sessionId else None, cursor, limit))

    @app.get(f"{api}/runs/{{run_id}}")
    async def get_run(run_id: uuid.UUID) -> Response:
        return _json(200, v4.get_run(str(run_id)))

    @app.get(f"{api}/runs/{{run_id}}/status")
    async def run_status(run_id: uuid.UUID) -> Response:
        return _json(200, v4.run_status(str(run_id)))

    @app.post(f"{api}/runs/{{run_id}}/cancel")
    async def cancel_run(run_id: uuid.UUID) -> Response:
        return _json(200, v4.cancel_run(str(run_id)))

    @app.get(f"{api}/runs/{{run_id}}/events")
    async def run_events(
        run_id: uuid.UUID,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> Response:
        return _json(200, v4.run_events(str(run_id), after, limit))

    @app.get(f"{api}/runs/{{run_id}}/attachments")
    async def run_attachments(run_id: uuid.UUID) -> Response:
        return _json(200, v4.run_attachments(str(run_id)))

    # --- sessions ------------------------------------------------------------------------------

    @app.get(f"{api}/sessions")
    async def list_sessions(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: str | None = None,
    ) -> Response:
        return _json(200, v4.list_sessions(cursor, limit))

    @app.get(f"{api}/sessions/{{session_id}}")
    async def get_session(session_id: uuid.UUID) -> Response:
        return _json(200, v4.get_session(str(session_id)))

    @app.patch(f"{api}/sessions/{{session_id}}")
    async def update_session(session_id: uuid.UUID, body: SessionUpdateRequest) -> Response:
        return _json(200, v4.update_session(str(session_id), body.model_dump(exclude_unset=True)))

    @app.delete(f"{api}/sessions/{{session_id}}")
    async def delete_session(session_id: uuid.UUID) -> Response:
        v4.delete_session(str(session_id))
        return _json(204, None)

    @app.post(f"{api}/sessions/{{session_id}}/purge")
    async def purge_session(session_id: uuid.UUID) -> Response:
        v4.purge_session(str(session_id))
        return _json(204, None)

    @app.get(f"{api}/sessions/{{session_id}}/cost")
    async def session_cost(session_id: uuid.UUID) -> Response:
        return _json(200, v4.session_cost(str(session_id)))

    @app.patch(f"{api}/sessions/{{session_id}}/cost-cap")
    async def session_cost_cap(session_id: uuid.UUID, body: SessionCostCapRequest) -> Response:
        return _json(200, v4.set_cost_cap(str(session_id), body.maxCostUsd))

    @app.post(f"{api}/sessions/{{session_id}}/queue")
    async def send_message(session_id: uuid.UUID, body: QueueMessageRequest) -> Response:
        return _json(200, v4.send_message(str(session_id), body.model_dump(exclude_unset=True, mode="json")))

    @app.get(f"{api}/sessions/{{session_id}}/queue")
    async def list_queue(session_id: uuid.UUID) -> Response:
        return _json(200, v4.list_queue(str(session_id)))

    @app.get(f"{api}/sessions/{{session_id}}/queue/{{message_id}}")
    async def get_message(session_id: uuid.UUID, message_id: int) -> Response:
        return _json(200, v4.get_message(str(session_id), message_id))

    @app.delete(f"{api}/sessions/{{session_id}}/queue/{{message_id}}")
    async def remove_message(session_id: uuid.UUID, message_id: int) -> Response:
        return _json(200, v4.remove_message(str(session_id), message_id))

    # --- browsers (one store with v2's /browsers) ----------------------------------------------

    @app.post(f"{api}/browsers")
    async def create_browser(body: Annotated[CreateBrowserRequestV4 | None, Body()] = None) -> Response:
        fields = (body or CreateBrowserRequestV4()).model_dump(exclude_unset=True)
        return _json(201, state.create_browser(fields))

    @app.get(f"{api}/browsers")
    async def list_browsers(
        pageSize: Annotated[int, Query(ge=1, le=100)] = 10,
        pageNumber: Annotated[int, Query(ge=1)] = 1,
        filterBy: Literal["active", "stopped"] | None = None,
        agentSessionId: uuid.UUID | None = None,
    ) -> Response:
        views = v4.browsers_of(str(agentSessionId) if agentSessionId else None)
        views = [v for v in views if filterBy is None or v["status"] == filterBy]
        return _json(200, _page(views, pageSize, pageNumber))

    @app.get(f"{api}/browsers/{{browser_id}}")
    async def get_browser(browser_id: uuid.UUID) -> Response:
        return _json(200, state.get_browser(str(browser_id)))

    @app.patch(f"{api}/browsers/{{browser_id}}")
    async def update_browser(browser_id: uuid.UUID, body: UpdateBrowserRequest) -> Response:
        return _json(200, state.stop_browser(str(browser_id)))

    @app.get(f"{api}/browsers/{{browser_id}}/downloads")
    async def browser_downloads(browser_id: uuid.UUID) -> Response:
        state.get_browser(str(browser_id))
        return _json(200, {"files": [], "nextCursor": None, "hasMore": False})

    # --- workspaces ----------------------------------------------------------------------------

    @app.post(f"{api}/workspaces")
    async def create_workspace(body: Annotated[WorkspaceRequest | None, Body()] = None) -> Response:
        return _json(200, v4.create_workspace((body or WorkspaceRequest()).name))

    @app.get(f"{api}/workspaces/{{workspace_id}}")
    async def get_workspace(workspace_id: uuid.UUID) -> Response:
        return _json(200, v4.get_workspace(str(workspace_id)))

    @app.patch(f"{api}/workspaces/{{workspace_id}}")
    async def update_workspace(workspace_id: uuid.UUID, body: WorkspaceRequest) -> Response:
        return _json(200, v4.update_workspace(str(workspace_id), body.model_dump(exclude_unset=True)))

    @app.delete(f"{api}/workspaces/{{workspace_id}}")
    async def delete_workspace(workspace_id: uuid.UUID) -> Response:
        v4.delete_workspace(str(workspace_id))
        return _json(204, None)

    @app.get(f"{api}/workspaces/{{workspace_id}}/size")
    async def workspace_size(workspace_id: uuid.UUID) -> Response:
        return _json(200, v4.workspace_size(str(workspace_id)))

    @app.post(f"{api}/workspaces/{{workspace_id}}/files/upload")
    async def presign_uploads(workspace_id: uuid.UUID, body: WorkspaceFileUploadRequest, request: Request) -> Response:
        fields = body.model_dump(mode="json")
        return _json(200, v4.presign_uploads(str(workspace_id), fields, root(request)))

    @app.get(f"{api}/workspaces/{{workspace_id}}/files")
    async def list_files(
        workspace_id: uuid.UUID,
        request: Request,
        prefix: str = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        cursor: str | None = None,
        includeUrls: bool = False,
        contentDisposition: Literal["attachment"] | None = None,
    ) -> Response:
        answer = v4.list_files(
            str(workspace_id),
            prefix=prefix,
            limit=limit,
            cursor=cursor,
            include_urls=includeUrls,
            root_url=root(request),
        )
        return _json(200, answer)

    @app.delete(f"{api}/workspaces/{{workspace_id}}/files")
    async def delete_file(workspace_id: uuid.UUID, path: str) -> Response:
        v4.delete_file(str(workspace_id), path)
        return _json(204, None)


def _page(items: list[dict[str, Any]], size: int, number: int) -> dict[str, Any]:
    start = (number - 1) * size
    return {
        "items": items[start : start + size],
        "totalItems": len(items),
        "pageNumber": number,
        "pageSize": size,
    }


class _Front:
    """ASGI wrapper: request log, API key check and fault injection, before the FastAPI app."""

    def __init__(self, app: FastAPI, emulator: BrowserUseEmulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not _is_loopback_host(dict(scope["headers"]).get(b"host", b"")):
            # A web page can reach a loopback server by a name it controls (DNS rebinding): only
            # callers that name this server by a loopback name or address are answered.
            await _send_raw(send, 421, b'{"detail":"This emulator answers only requests to a loopback host"}')
            return
        arrived, started = time.time(), time.perf_counter()
        method, path = scope["method"], scope["path"]
        is_api = path.startswith(API_PREFIX)
        logged_path = path[len(API_PREFIX) :] if is_api else path
        if path == V4_PREFIX or path.startswith(V4_PREFIX + "/"):
            is_api, logged_path = True, V4_LOG_PREFIX + path[len(V4_PREFIX) :]
        client_port = int((scope.get("client") or ("", 0))[1] or 0)
        logged = False

        def log(status: int, size: int = 0) -> None:
            nonlocal logged
            if not logged:
                logged = True
                duration = time.perf_counter() - started
                self.emulator._log(RequestRecord(method, logged_path, status, arrived, duration, client_port, size))

        async def logged_send(message: Message) -> None:
            # Logged before the answer leaves: whatever a client sees next, the log already holds.
            if message["type"] == "http.response.start":
                size = dict(message.get("headers") or []).get(b"content-length", b"0")
                log(message["status"], int(size))
            await send(message)

        try:
            if is_api:
                await self._api(scope, receive, logged_send, method, logged_path)
            else:
                await self.app(scope, receive, logged_send)
        finally:
            log(0)  # no answer started: a dropped connection or a crash

    async def _api(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> None:
        fault = self.emulator._take_fault(method, path)
        if fault is not None and not fault.after_handling:
            if fault.latency:
                await asyncio.sleep(fault.latency)
            if fault.replaces_answer:
                await _answer_with_fault(fault, send)
                return
        key = dict(scope["headers"]).get(API_KEY_HEADER, b"").decode("latin-1")
        if key != self.emulator.state.api_key:
            await _send_raw(send, 401, b'{"detail":"Invalid or missing API key"}')
            return
        handle: Callable[[Scope, Receive, Send], Awaitable[None]] = self.app
        if (
            path.startswith(V4_LOG_PREFIX + "/")
            and self.emulator.state.zero_data_retention
            and not re.fullmatch(r"/v4/sessions/[^/]+/purge", path)
        ):
            handle = _refuse_zero_data_retention
        if fault is None or not fault.after_handling:
            await handle(scope, receive, send)
            return
        held: list[Message] = []  # the request takes effect now; its answer comes late, or broken

        async def hold(message: Message) -> None:
            held.append(message)

        await handle(scope, receive, hold)
        if fault.latency:
            await asyncio.sleep(fault.latency)
        if fault.replaces_answer:
            await _answer_with_fault(fault, send)
            return
        for message in held:
            await send(message)


async def _refuse_zero_data_retention(scope: Scope, receive: Receive, send: Send) -> None:
    await _send_raw(send, 403, json.dumps({"detail": ZDR_DETAIL}).encode())


async def _send_raw(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    length: int | None = None,
) -> None:
    all_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body) if length is None else length).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _answer_with_fault(fault: Fault, send: Send) -> None:
    if fault.drop:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})
        raise EmulatedDrop("emulated dropped connection")
    if fault.malformed:
        await _send_raw(send, 200, b'{"id": "not json')
        return
    if fault.redirect_to or fault.corrupt_gzip or fault.deep_json or fault.endless_pages:
        await _send_hostile(fault, send)
        return
    if fault.drip:
        body = json.dumps({"detail": "dripping", "pad": "x" * 80}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        for byte in body:
            await asyncio.sleep(fault.drip)
            await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if fault.oversized:
        chunk, left = b"a" * (1 << 20), fault.oversized - 2
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % fault.oversized)]}
        )
        await send({"type": "http.response.body", "body": b'"', "more_body": True})
        while left > 0:
            await send({"type": "http.response.body", "body": chunk[:left], "more_body": True})
            left -= len(chunk)
        await send({"type": "http.response.body", "body": b'"', "more_body": False})
        return
    headers = [(b"retry-after", str(fault.retry_after).encode())] if fault.retry_after is not None else []
    body = json.dumps({"detail": f"Emulated fault: HTTP {fault.status}"}).encode()
    await _send_raw(send, fault.status or 500, body, headers)


async def _send_hostile(fault: Fault, send: Send) -> None:
    """The small hostile answers: a redirect, a corrupt gzip body, deep JSON, an endless page."""
    if fault.redirect_to:
        await _send_raw(send, 307, b"", [(b"location", fault.redirect_to.encode())])
    elif fault.corrupt_gzip:
        await _send_raw(send, 200, b"\x1f\x8b\x08\x00not gzip at all" * 4, [(b"content-encoding", b"gzip")])
    elif fault.deep_json:
        await _send_raw(send, 200, b"[" * 100_000 + b"]" * 100_000)
    else:
        page = {"items": [{"id": str(uuid.uuid4())}], "totalItems": 10**9, "pageNumber": 1, "pageSize": 100}
        await _send_raw(send, 200, json.dumps(page).encode())


# --- the server --------------------------------------------------------------------------------


def _is_loopback_host(header: bytes) -> bool:
    """Whether a ``Host`` header names a loopback host (``localhost``, ``127.x``, ``[::1]``), any port."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_loopback(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"host must be a loopback address such as 127.0.0.1, got {host!r}")


class BrowserUseEmulator:
    """The emulator as a server object: start it, point a connection at it, stop it.

    :param api_key: the only API key it accepts.
    :param host: a loopback address to listen on.
    :param port: the port; 0 picks a free one.
    :param scenario: scripted task outcomes (:class:`~airflow_provider_browseruse.testing.Scenario`).
    :param max_concurrent_sessions: the account's cap on active sessions (429 beyond it): v2's
        sessions and v4's agent browsers count together.
    :param retry_after: seconds sent in ``Retry-After`` with that 429.
    :param zero_data_retention: the project has Zero Data Retention: every v4 route answers 403
        but ``POST /sessions/{id}/purge``, which only then works.
    """

    def __init__(
        self,
        api_key: str = "emulator-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        scenario: Scenario | None = None,
        max_concurrent_sessions: int | None = None,
        retry_after: int = 5,
        zero_data_retention: bool = False,
    ) -> None:
        _require_loopback(host)
        self.host = host
        self.port = port
        self.state = EmulatorState(
            api_key,
            scenario=scenario,
            max_concurrent_sessions=max_concurrent_sessions,
            retry_after=retry_after,
            zero_data_retention=zero_data_retention,
        )
        self._faults: list[Fault] = []
        self._remaining: list[int] = []
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self.app = _Front(build_app(self), self)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def _config(self) -> Any:
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        return uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            backlog=4096,
        )

    def start(self, timeout: float = 10.0) -> BrowserUseEmulator:
        """Start serving in a background thread; returns once it accepts connections."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="browser-use-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Browser Use emulator did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the server thread to end."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> BrowserUseEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, for the connection's host."""
        return self.root_url + API_PREFIX

    @property
    def v4_base_url(self) -> str:
        """The API v4 base URL (``/api/v4``), e.g. for ``browser_use_sdk.v4.BrowserUse(base_url=...)``."""
        return self.root_url + V4_PREFIX

    def airflow_connection(self) -> str:
        """The connection as JSON, for ``AIRFLOW_CONN_<ID>`` (it holds the emulator's key)."""
        return json.dumps({"conn_type": "browser_use", "host": self.base_url, "password": self.state.api_key})

    # --- what tests read and set -------------------------------------------------------------

    def add_fault(self, fault: Fault | None = None, **fields: Any) -> Fault:
        """Inject a fault (a :class:`Fault`, or its fields as keywords); returns it."""
        fault = fault or Fault(**fields)
        with self._log_lock:
            self._faults.append(fault)
            self._remaining.append(fault.times)
        return fault

    def clear_faults(self) -> None:
        with self._log_lock:
            self._faults.clear()
            self._remaining.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        if not self._faults:
            return None
        with self._log_lock:
            for index, fault in enumerate(self._faults):
                if self._remaining[index] > 0 and fault.matches(method, path):
                    self._remaining[index] -= 1
                    return fault
        return None

    def _log(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._requests.append(record)

    def requests(self, method: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Requests answered so far, optionally of one method and a path (regex, whole match)."""
        with self._log_lock:
            records = list(self._requests)
        return [
            r
            for r in records
            if (method is None or r.method == method.upper()) and (path is None or re.fullmatch(path, r.path))
        ]

    def count(self, method: str, path: str) -> int:
        """How many requests of ``method`` to ``path`` (a regex) were answered."""
        return len(self.requests(method, path))

    def active_session_count(self) -> int:
        """Active v2 sessions (v4 agent sessions are counted by :meth:`active_browser_count`)."""
        return self.state.active_session_count()

    def active_run_count(self) -> int:
        """v4 runs not yet completed, failed or cancelled."""
        return self.state.v4.active_run_count()

    def active_browser_count(self) -> int:
        """Active browsers of ``/browsers``: v4 agent sessions' browsers and bare ones."""
        return self.state.v4.active_browser_count()

    def v4_browsers(self, agent_session_id: str | None = None) -> list[dict[str, Any]]:
        """The ``/browsers`` views of one v4 agent session (or all), most recent first."""
        return self.state.v4.browsers_of(agent_session_id)

    def _v4_counts(self) -> dict[str, int]:
        """The admin state's v4 counts."""
        return {
            "activeRunCount": self.active_run_count(),
            "activeBrowserCount": self.active_browser_count(),
            "runCount": len(self.state.v4.runs),
        }

    def reset(self) -> None:
        """Forget every session, task, run, workspace, fault and logged request (the key and
        scenario stay)."""
        with self.state.lock:
            self.state.sessions.clear()
            self.state.tasks.clear()
            self.state.files.clear()
            self.state.download_tokens.clear()
            self.state.browsers.clear()
            self.state.v4.clear()
            self.state.peak_active_sessions = self.state.refused_at_cap = 0
        self.clear_faults()
        with self._log_lock:
            self._requests.clear()


class EmulatorProcess:
    """The emulator's command line run in a child process, for demos and benchmarks whose own
    process must not share its CPU with the server (tests use :class:`BrowserUseEmulator`).

    ``with EmulatorProcess("bu_key") as emulator: ...`` starts it on a free loopback port and
    stops it at the end of the block, whatever happened.

    :param api_key: the only API key it accepts.
    :param scenario: a scenario JSON file.
    :param task_duration: seconds an unscripted task runs.
    :param max_concurrent_sessions: the account's cap on active sessions.
    :param zero_data_retention: emulate a Zero Data Retention project (v4 answers 403).
    :param env: the child's environment (default: this process's).
    """

    def __init__(
        self,
        api_key: str,
        *,
        scenario: str | os.PathLike[str] | None = None,
        task_duration: float | None = None,
        max_concurrent_sessions: int | None = None,
        zero_data_retention: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.port = 0
        self._options = {
            "--scenario": scenario,
            "--task-duration": task_duration,
            "--max-concurrent-sessions": max_concurrent_sessions,
        }
        self._flags = ["--zero-data-retention"] if zero_data_retention else []
        self._env = dict(env) if env is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EmulatorProcess:
        """Start the child; returns once it accepts connections.

        :raises RuntimeError: it exited or did not listen within ``timeout`` seconds.
        """
        with socket.socket() as probe:  # a free port; the child binds it a moment later
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "airflow_provider_browseruse.testing.emulator",
            "--port",
            str(self.port),
            "--api-key",
            self.api_key,
        ]
        command += [str(part) for name, value in self._options.items() if value is not None for part in (name, value)]
        command += self._flags
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=self._env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the emulator did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the child and wait for it to end."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The API base URL, for the connection's host."""
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def v4_base_url(self) -> str:
        """The API v4 base URL."""
        return f"http://127.0.0.1:{self.port}{V4_PREFIX}"

    def airflow_connection(self) -> str:
        """The connection as JSON, for ``AIRFLOW_CONN_<ID>`` (it holds the emulator's key)."""
        return json.dumps({"conn_type": "browser_use", "host": self.base_url, "password": self.api_key})

    def admin(self, path: str, body: Any = None) -> Any:
        """Call the admin API (``GET`` without ``body``, ``POST`` with it); returns its JSON or None."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{ADMIN_PREFIX}/{path}",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
        with no_proxy.open(request, timeout=60) as answer:
            content = answer.read()
        return json.loads(content) if content else None


def main(argv: list[str] | None = None) -> None:
    """Run the emulator in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description="Emulate the Browser Use Cloud API (v2 and v4) on loopback.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--api-key", required=True, help="the API key clients must send")
    parser.add_argument("--scenario", help="a scenario JSON file (see airflow_provider_browseruse.testing.scenario)")
    parser.add_argument("--task-duration", type=float, help="seconds an unscripted task runs")
    parser.add_argument("--max-concurrent-sessions", type=int, help="the account's concurrent-session cap")
    parser.add_argument(
        "--zero-data-retention",
        action="store_true",
        help="emulate a Zero Data Retention project: every /api/v4 route answers 403",
    )
    args = parser.parse_args(argv)
    scenario = Scenario.from_file(args.scenario) if args.scenario else Scenario()
    if args.task_duration is not None:
        scenario.default = scenario.default.model_copy(update={"duration": args.task_duration})
    emulator = BrowserUseEmulator(
        args.api_key,
        host=args.host,
        port=args.port,
        scenario=scenario,
        max_concurrent_sessions=args.max_concurrent_sessions,
        zero_data_retention=args.zero_data_retention,
    )
    config = emulator._config()
    config.host, config.port = args.host, args.port
    print(f"Browser Use emulator listening on {emulator.base_url}")
    print("Point Airflow at it (in the shell that runs Airflow):")
    print(f"export AIRFLOW_CONN_BROWSER_USE_DEFAULT='{emulator.airflow_connection()}'", flush=True)
    print(f"API v4 (same key): {emulator.v4_base_url}", flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
