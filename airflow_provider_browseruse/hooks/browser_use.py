"""BrowserUseHook: the authenticated connection to the Browser Use Cloud API v2."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import httpx
import tenacity
from airflow.sdk import BaseHook

from airflow_provider_browseruse import CONNECTION_UI_FIELD_BEHAVIOUR, __version__, _wire
from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.exceptions import BrowserUseAPIError, FailureKind

if TYPE_CHECKING:
    import requests

USER_AGENT = f"airflow-provider-browseruse/{__version__}"
#: Seconds to wait for each HTTP answer, unless a hook is given its own ``timeout``.
DEFAULT_TIMEOUT = 30.0
DEFAULT_API_PATH = "/api/v2"


@dataclass(frozen=True)
class ApiSettings:
    """What a client needs from an Airflow connection. The key never shows in ``repr``."""

    base_url: str
    api_key: str = field(repr=False)
    ui_base_url: str = _wire.DEFAULT_UI_BASE_URL


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def api_settings(conn: Any, conn_id: str) -> ApiSettings:
    """Read an Airflow connection of type ``browser_use``.

    The API key is the password. The base URL is the host: either a whole URL
    (``https://api.browser-use.com/api/v2``, the JSON form) or, from a URI such as
    ``browser-use://:KEY@api.browser-use.com/api/v2``, a host name with port and path (the path
    arrives as the connection's schema). A URL without a path gets ``/api/v2``; an empty host
    means the public API. Plain ``http`` is refused for hosts other than loopback unless the
    extra ``allow_insecure_http`` is true. Extras: ``scheme`` (for the URI form, default
    https), ``ui_base_url`` (the Browser Use web app, for links).

    :raises AirflowException: no API key, or a base URL that is not usable.
    """
    api_key = (conn.password or "").strip()
    if not api_key:
        raise AirflowException(
            f"Airflow connection {conn_id!r} has no Browser Use API key: "
            "put the key (bu_...) in the connection's password field."
        )
    extra = conn.extra_dejson or {}
    host = (conn.host or "").strip()
    if not host:
        base_url = _wire.DEFAULT_BASE_URL
    elif "://" in host:
        base_url = host
    else:
        port = f":{conn.port}" if conn.port else ""
        path = (conn.schema or "").strip("/")
        base_url = f"{extra.get('scheme', 'https')}://{host}{port}/{path}"
    parts = urlsplit(base_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AirflowException(
            f"Airflow connection {conn_id!r} has base URL {base_url!r}: expected an http(s) URL "
            f"such as {_wire.DEFAULT_BASE_URL!r}."
        )
    allow_http = str(extra.get("allow_insecure_http", "")).lower() in ("true", "1", "yes")
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_http:
        raise AirflowException(
            f"Airflow connection {conn_id!r} has a plain-http base URL to {parts.hostname!r}: the "
            "API key would travel unencrypted. Use https, or set the extra "
            '{"allow_insecure_http": true} if you really mean it.'
        )
    path = parts.path.rstrip("/") or DEFAULT_API_PATH
    ui_base_url = str(extra.get("ui_base_url") or _wire.DEFAULT_UI_BASE_URL).rstrip("/")
    return ApiSettings(f"{parts.scheme}://{parts.netloc}{path}", api_key, ui_base_url)


def api_error(
    call: str,
    conn_id: str,
    *,
    status_code: int | None = None,
    body: Any = None,
    kind: FailureKind = "http",
    retry_after: float | None = None,
    reason: str = "",
) -> BrowserUseAPIError:
    """Build the error for a failed call, in words a DAG author understands."""
    detail = _wire.error_detail(body) if body is not None else reason
    if kind == "unreachable":
        why = f"could not connect to the API ({reason})"
    elif kind == "interrupted":
        why = f"no complete answer from the API ({reason})"
    elif kind == "malformed":
        why = f"the API answered HTTP {status_code} with a body that is not the expected JSON"
    elif status_code in (401, 403):
        why = (
            f"HTTP {status_code}: the API key was rejected ({detail or 'unauthorized'}); check the "
            f"password of Airflow connection {conn_id!r}"
        )
    elif status_code == 402:
        why = f"HTTP 402: out of credits or over the key's spend limit ({detail})"
    elif status_code == 404:
        why = f"HTTP 404: {detail or 'not found'}"
    elif status_code == 422:
        why = f"HTTP 422: the API rejected the request: {detail}"
    elif status_code == 429:
        why = f"HTTP 429: the account's concurrent-session cap is reached ({detail})"
    else:
        why = f"HTTP {status_code}: {detail}" if detail else f"HTTP {status_code}"
    return BrowserUseAPIError(
        f"Browser Use {call} failed: {why}",
        call=call,
        status_code=status_code,
        detail=detail,
        kind=kind,
        retry_after=retry_after,
    )


def read_answer(
    call: str,
    conn_id: str,
    status: int,
    retry_after: str | None,
    read_json: Callable[[], Any],
    read_text: Callable[[], str],
) -> Any:
    """The JSON of an answer, or the error it stands for (shared by the sync and async hooks)."""
    if status >= 400:
        try:
            body: Any = read_json()
        except ValueError:
            body = read_text()[:500]
        raise api_error(call, conn_id, status_code=status, body=body, retry_after=retry_after_seconds(retry_after))
    if status == 204:
        return None
    try:
        return read_json()
    except ValueError as error:
        raise api_error(call, conn_id, status_code=status, kind="malformed") from error


def require_dict(call: str, conn_id: str, answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise api_error(call, conn_id, status_code=200, kind="malformed")
    return answer


def retry_after_seconds(value: str | None) -> float | None:
    """An integer ``Retry-After`` in seconds; dates and garbage are ignored."""
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class BrowserUseHook(BaseHook):
    """Calls the Browser Use Cloud API v2 with the key of an Airflow connection.

    Every method returns the API's JSON as a dict with the API's own (camelCase) field names and
    raises :class:`~airflow_provider_browseruse.exceptions.BrowserUseAPIError` when the call
    fails after the retries its kind allows (see :class:`~airflow_provider_browseruse._retry.RetryPolicy`).
    Ids are checked to be UUIDs before anything is sent (ValueError).

    :param browser_use_conn_id: the Airflow connection (type ``browser_use``).
    :param timeout: seconds to wait for each HTTP answer.
    :param retry_policy: retry limits; the default retries 5 times within 120 s.
    """

    conn_name_attr = "browser_use_conn_id"
    default_conn_name = "browser_use_default"
    conn_type = "browser_use"
    hook_name = "Browser Use"

    def __init__(
        self,
        browser_use_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.browser_use_conn_id = browser_use_conn_id
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.retry_policy = retry_policy or RetryPolicy()
        self._sleep: Callable[[float], Any] = time.sleep

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form, for Airflow before 3.2 (newer versions read the provider info)."""
        return CONNECTION_UI_FIELD_BEHAVIOUR

    @cached_property
    def settings(self) -> ApiSettings:
        """Base URLs and key, read once from the connection."""
        settings = api_settings(self.get_connection(self.browser_use_conn_id), self.browser_use_conn_id)
        self._mask(settings.api_key)
        return settings

    @staticmethod
    def _mask(secret: str) -> None:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)

    @cached_property
    def http(self) -> requests.Session:
        """One keep-alive session for every call of this hook."""
        import requests  # here, not at module level: DAG files that import the hook do not pay for it

        session = requests.Session()
        session.headers.update(
            {
                _wire.API_KEY_HEADER: self.settings.api_key,
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            }
        )
        return session

    def close(self) -> None:
        """Close the keep-alive connections (they also close when the hook is collected)."""
        if "http" in self.__dict__:
            self.http.close()
            del self.__dict__["http"]

    # --- transport --------------------------------------------------------------------------

    def _call(
        self,
        call: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        resend_safe: bool = True,
    ) -> Any:
        return self._retrying(resend_safe)(self._send_once, call, method, path, json, params)

    def _retrying(self, resend_safe: bool) -> tenacity.Retrying:
        # Built once per hook and kind, not per call: a hook is used from one thread at a time.
        key = "_retrying_resend_safe" if resend_safe else "_retrying_create"
        retrying = self.__dict__.get(key)
        if retrying is None:
            arguments = self.retry_policy.tenacity_arguments(resend_safe=resend_safe, sleep=self._sleep, log=self.log)
            retrying = self.__dict__[key] = tenacity.Retrying(**arguments)
        return retrying

    def _send_once(self, call: str, method: str, path: str, json: Any, params: Mapping[str, Any] | None) -> Any:
        import requests
        from urllib3.exceptions import NewConnectionError

        conn_id = self.browser_use_conn_id
        try:
            response = self.http.request(
                method, self.settings.base_url + path, json=json, params=params, timeout=self.timeout
            )
        except requests.ConnectionError as error:
            # A refused or timed-out connect never sent the request; anything else may have.
            reason = error.args[0] if error.args else None
            never_sent = isinstance(error, requests.ConnectTimeout) or isinstance(
                getattr(reason, "reason", None), NewConnectionError
            )
            kind: FailureKind = "unreachable" if never_sent else "interrupted"
            raise api_error(call, conn_id, kind=kind, reason=type(error).__name__) from error
        except requests.RequestException as error:  # read timeout, broken chunked body
            raise api_error(call, conn_id, kind="interrupted", reason=type(error).__name__) from error
        return read_answer(
            call,
            conn_id,
            response.status_code,
            response.headers.get("Retry-After"),
            response.json,
            lambda: response.text,
        )

    def _call_for_dict(self, call: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return require_dict(call, self.browser_use_conn_id, self._call(call, method, path, **kwargs))

    # --- account ----------------------------------------------------------------------------

    def get_account(self) -> dict[str, Any]:
        """The account (AccountView): balances, plan, and on newer servers the session cap."""
        return self._call_for_dict("get_account", "GET", _wire.ACCOUNT_PATH)

    def test_connection(self) -> tuple[bool, str]:
        """Check the key with the side-effect-free account call; never raises."""
        try:
            account = self.get_account()
        except Exception as error:
            return False, str(error)
        plan = (account.get("planInfo") or {}).get("planName", "unknown plan")
        return True, f"Connected to Browser Use: project {account.get('projectId')}, {plan}."

    # --- sessions ---------------------------------------------------------------------------

    def create_session(self, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start a session (``POST /sessions``) with the API's CreateSessionRequest fields.

        Note the API's default ``keepAlive`` is true: such a session bills until stopped.
        Never resent after an ambiguous failure (it may have started a browser).
        """
        return self._call_for_dict(
            "create_session", "POST", _wire.SESSIONS_PATH, json=dict(body or {}), resend_safe=False
        )

    def get_session(self, session_id: str) -> dict[str, Any]:
        """The session (SessionView) with its tasks."""
        session_id = _wire.require_uuid(session_id, "session_id")
        return self._call_for_dict(f"get_session({session_id})", "GET", _wire.session_path(session_id))

    def stop_session(self, session_id: str) -> dict[str, Any]:
        """Stop the session and its running tasks (``PATCH {"action": "stop"}``); SessionView."""
        session_id = _wire.require_uuid(session_id, "session_id")
        return self._call_for_dict(
            f"stop_session({session_id})",
            "PATCH",
            _wire.session_path(session_id),
            json=_wire.STOP_SESSION_BODY,
        )

    def list_sessions(self, status: str | _wire.SessionStatus | None = None) -> list[dict[str, Any]]:
        """Every session (SessionItemView), following all pages; ``status`` filters by status."""
        params: dict[str, Any] = {"pageSize": _wire.MAX_PAGE_SIZE}
        if status is not None:
            params["filterBy"] = _wire.SessionStatus(status).value
        return self._list_all("list_sessions", _wire.SESSIONS_PATH, params)

    def _list_all(self, call: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page_number = 1
        while True:
            page = self._call_for_dict(call, "GET", path, params={**params, "pageNumber": page_number})
            page_items = page.get("items") or []
            items.extend(page_items)
            if not page_items or len(items) >= int(page.get("totalItems") or 0):
                return items
            page_number += 1

    # --- tasks ------------------------------------------------------------------------------

    def create_task(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start an agent task (``POST /tasks``) with the API's CreateTaskRequest fields.

        Returns ``{"id": ..., "sessionId": ...}``. Without ``sessionId`` the API starts a
        one-off session that closes when the task ends. Never resent after an ambiguous failure.
        """
        task = body.get("task")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty prompt for the agent, got {task!r}")
        if body.get("sessionId") is not None:
            body = {**body, "sessionId": _wire.require_uuid(body["sessionId"], "session_id")}
        return self._call_for_dict("create_task", "POST", _wire.TASKS_PATH, json=dict(body), resend_safe=False)

    def get_task(self, task_id: str) -> dict[str, Any]:
        """The full task (TaskView) with steps, output files and judgement: fetch it once."""
        task_id = _wire.require_uuid(task_id, "browser_use_task_id")
        return self._call_for_dict(f"get_task({task_id})", "GET", _wire.task_path(task_id))

    def get_task_status(self, task_id: str) -> dict[str, Any]:
        """The light task status (TaskStatusView) meant for polling."""
        task_id = _wire.require_uuid(task_id, "browser_use_task_id")
        return self._call_for_dict(f"get_task_status({task_id})", "GET", _wire.task_status_path(task_id))

    def stop_task(self, task_id: str, *, stop_session: bool = False) -> dict[str, Any]:
        """Stop the task, and with ``stop_session`` its session too; returns the TaskView."""
        task_id = _wire.require_uuid(task_id, "browser_use_task_id")
        body = _wire.STOP_TASK_AND_SESSION_BODY if stop_session else _wire.STOP_TASK_BODY
        return self._call_for_dict(f"stop_task({task_id})", "PATCH", _wire.task_path(task_id), json=body)

    def get_output_file(self, task_id: str, file_id: str) -> dict[str, Any]:
        """An output file's name and presigned ``downloadUrl`` (short-lived; grants access)."""
        task_id = _wire.require_uuid(task_id, "browser_use_task_id")
        file_id = _wire.require_uuid(file_id, "file_id")
        return self._call_for_dict(f"get_output_file({task_id})", "GET", _wire.output_file_path(task_id, file_id))

    def download(self, url: str, destination: BinaryIO, *, call: str = "download") -> int:
        """Stream a presigned URL into ``destination``; returns the bytes written.

        The API key is not sent: a presigned URL carries its own grant, often to another host.
        Each attempt goes to a local spool, copied to ``destination`` once it is complete, so a
        retry never needs to rewind a destination that cannot seek (an S3 or GCS upload).
        """
        import shutil
        import tempfile

        import requests

        def attempt() -> tempfile.SpooledTemporaryFile[bytes]:
            spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=16 << 20)  # noqa: SIM115 (returned open)
            try:
                with requests.get(url, stream=True, timeout=self.timeout, headers={"User-Agent": USER_AGENT}) as answer:
                    if answer.status_code >= 400:
                        raise api_error(
                            call, self.browser_use_conn_id, status_code=answer.status_code, body=answer.text[:200]
                        )
                    for chunk in answer.iter_content(chunk_size=1 << 16):
                        spool.write(chunk)
            except requests.RequestException as error:  # the URL is in the message: keep it out
                spool.close()
                raise api_error(
                    call, self.browser_use_conn_id, kind="interrupted", reason=type(error).__name__
                ) from None
            except BaseException:
                spool.close()
                raise
            return spool

        with self._retrying(True)(attempt) as spool:
            size = spool.tell()
            spool.seek(0)
            shutil.copyfileobj(spool, destination)
        return size

    def session_ui_url(self, session_id: str) -> str:
        """The session's page in the Browser Use web app (from the connection's ``ui_base_url``)."""
        return _wire.session_ui_url(self.settings.ui_base_url, _wire.require_uuid(session_id, "session_id"))

    def list_tasks(
        self,
        *,
        session_id: str | None = None,
        status: str | _wire.TaskStatus | None = None,
        after: float | None = None,
    ) -> list[dict[str, Any]]:
        """Every task (TaskItemView), following all pages, optionally of one session or status,
        or created after ``after`` (epoch seconds)."""
        params: dict[str, Any] = {"pageSize": _wire.MAX_PAGE_SIZE}
        if after is not None:
            params["after"] = _wire.format_timestamp(after)
        if session_id is not None:
            params["sessionId"] = _wire.require_uuid(session_id, "session_id")
        if status is not None:
            params["filterBy"] = _wire.TaskStatus(status).value
        return self._list_all("list_tasks", _wire.TASKS_PATH, params)


# --- async, for triggers -----------------------------------------------------------------------

#: One small HTTP connection pool per event loop, shared by every trigger of this provider that
#: runs in it: a triggerer with a thousand deferred tasks keeps at most this many keep-alive
#: connections. Each connection is its own single-connection httpx client, handed out through a
#: queue: httpcore's own pool does work in proportion to the square of its size on every request,
#: which costs more CPU than the request itself when many triggers poll at once.
ASYNC_POOL_SIZE = 16


class _LoopPool:
    def __init__(self) -> None:
        self.idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        self.created = 0
        self._ssl = httpx.create_ssl_context()  # loaded once: each load of the CA file costs ~50 ms

    async def take(self) -> httpx.AsyncClient:
        if self.idle.empty() and self.created < ASYNC_POOL_SIZE:
            self.created += 1
            return httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                verify=self._ssl,
            )
        return await self.idle.get()


_loop_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = weakref.WeakKeyDictionary()


def shared_pool() -> _LoopPool:
    """The running event loop's pool (created on first use)."""
    loop = asyncio.get_running_loop()
    pool = _loop_pools.get(loop)
    if pool is None:
        pool = _loop_pools[loop] = _LoopPool()
    return pool


class BrowserUseAsyncHook:
    """The calls triggers need, over the shared async client, under the same retry policy.

    Methods return the API's JSON as dicts and raise
    :class:`~airflow_provider_browseruse.exceptions.BrowserUseAPIError`, exactly as
    :class:`BrowserUseHook`. The connection is read with Airflow's async connection API.
    """

    def __init__(
        self,
        browser_use_conn_id: str = BrowserUseHook.default_conn_name,
        *,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.browser_use_conn_id = browser_use_conn_id
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.retry_policy = retry_policy or RetryPolicy()
        self._settings: ApiSettings | None = None
        self.log = logging.getLogger(__name__)

    async def settings(self) -> ApiSettings:
        if self._settings is None:
            try:
                conn = await BaseHook.aget_connection(self.browser_use_conn_id)
            except ImportError:  # Airflow 3.1 outside a supervised process: read it off the loop
                conn = await asyncio.to_thread(BaseHook.get_connection, self.browser_use_conn_id)
            self._settings = api_settings(conn, self.browser_use_conn_id)
            BrowserUseHook._mask(self._settings.api_key)
        return self._settings

    async def _call(self, call: str, method: str, path: str, *, json: Any = None) -> dict[str, Any]:
        retrying = tenacity.AsyncRetrying(
            **self.retry_policy.tenacity_arguments(resend_safe=True, sleep=asyncio.sleep, log=self.log)
        )
        answer: Any = await retrying(self._send_once, call, method, path, json)
        return require_dict(call, self.browser_use_conn_id, answer)

    async def _send_once(self, call: str, method: str, path: str, json: Any) -> Any:
        settings = await self.settings()
        conn_id = self.browser_use_conn_id
        pool = shared_pool()
        client = await pool.take()
        try:
            response = await client.request(
                method,
                settings.base_url + path,
                json=json,
                headers={_wire.API_KEY_HEADER: settings.api_key},
                timeout=self.timeout,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:  # never sent
            raise api_error(call, conn_id, kind="unreachable", reason=type(error).__name__) from error
        except httpx.TransportError as error:  # read timeout, dropped connection, broken answer
            raise api_error(call, conn_id, kind="interrupted", reason=type(error).__name__) from error
        finally:
            pool.idle.put_nowait(client)
        return read_answer(
            call,
            conn_id,
            response.status_code,
            response.headers.get("Retry-After"),
            response.json,
            lambda: response.text,
        )

    async def get_session(self, session_id: str) -> dict[str, Any]:
        session_id = _wire.require_uuid(session_id, "session_id")
        return await self._call(f"get_session({session_id})", "GET", _wire.session_path(session_id))

    async def stop_session(self, session_id: str) -> dict[str, Any]:
        session_id = _wire.require_uuid(session_id, "session_id")
        return await self._call(
            f"stop_session({session_id})", "PATCH", _wire.session_path(session_id), json=_wire.STOP_SESSION_BODY
        )

    async def get_task_status(self, task_id: str) -> dict[str, Any]:
        task_id = _wire.require_uuid(task_id, "browser_use_task_id")
        return await self._call(f"get_task_status({task_id})", "GET", _wire.task_status_path(task_id))

    async def stop_task(self, task_id: str, *, stop_session: bool = False) -> dict[str, Any]:
        task_id = _wire.require_uuid(task_id, "browser_use_task_id")
        body = _wire.STOP_TASK_AND_SESSION_BODY if stop_session else _wire.STOP_TASK_BODY
        return await self._call(f"stop_task({task_id})", "PATCH", _wire.task_path(task_id), json=body)
