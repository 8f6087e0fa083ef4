"""BrowserUseHook: the authenticated connection to the Browser Use Cloud API v2.

:class:`BrowserUseHook` (requests) serves operators and sensors; :class:`BrowserUseAsyncHook`
(httpx) serves triggers. Both read the same connection, send the same requests, map failures to
the same :class:`~airflow_provider_browseruse.exceptions.BrowserUseAPIError` and retry under the
same :class:`~airflow_provider_browseruse._retry.RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import ipaddress
import itertools
import json
import logging
import os
import shutil
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import httpx
import tenacity
from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from airflow_provider_browseruse import CONNECTION_UI_FIELD_BEHAVIOUR, __version__, _wire, _wire_v4
from airflow_provider_browseruse._compat import AirflowException
from airflow_provider_browseruse._retry import RetryPolicy
from airflow_provider_browseruse.exceptions import BrowserUseAPIError, FailureKind

if TYPE_CHECKING:
    import requests

USER_AGENT = f"airflow-provider-browseruse/{__version__}"
#: Seconds to wait for each HTTP answer, unless a hook is given its own ``timeout``.
DEFAULT_TIMEOUT = 30.0
DEFAULT_API_ROOT = "/api"
#: The API versions below the root that this provider speaks.
API_VERSIONS = ("v2", "v4")


# --- the connection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiSettings:
    """What a client needs from an Airflow connection. The key never shows in ``repr``."""

    base_url: str
    api_key: str = field(repr=False)
    ui_base_url: str = _wire.DEFAULT_UI_BASE_URL
    #: The API v4 base URL, beside v2's under the same API root.
    v4_base_url: str = ""

    def base_url_for(self, api_version: int) -> str:
        return self.v4_base_url if api_version == 4 else self.base_url


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _is_true(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def _written_base_url(conn: Any, extra: Mapping[str, Any]) -> str:
    """The base URL as the connection writes it: a whole URL, or the URI form's parts."""
    host = (conn.host or "").strip()
    if not host:
        return _wire.DEFAULT_BASE_URL
    if "://" in host:
        return host
    port = f":{conn.port}" if conn.port else ""
    path = (conn.schema or "").strip("/")  # a URI's path arrives as the connection's schema
    return f"{extra.get('scheme', 'https')}://{host}{port}/{path}"


def api_settings(conn: Any, conn_id: str) -> ApiSettings:
    """Read an Airflow connection of type ``browser_use``.

    The API key is the password. The host names the API: either a whole URL
    (``https://api.browser-use.com/api/v2``, the JSON form) or, from a URI such as
    ``browser-use://:KEY@api.browser-use.com/api/v2``, a host name with port and path. Its
    path is the API root, below which ``/v2`` and ``/v4`` are the two API versions' base URLs;
    a path that ends in a version (``/api/v2``, ``/api/v4``) names its root all the same, and
    no path means ``/api``. So ``https://proxy.example.com/browser-use`` sends v2 calls to
    ``.../browser-use/v2`` and v4 calls to ``.../browser-use/v4``; an empty host means the
    public API. Plain ``http`` is
    refused for hosts other than loopback unless the extra ``allow_insecure_http`` is true.
    Extras: ``scheme`` (URI form, default https), ``ui_base_url`` (the web app, for links).

    :param conn: the Airflow connection.
    :param conn_id: its id, for messages.
    :return: the base URLs and the key.
    :raises AirflowException: no API key, or a base URL that is not usable.
    """
    api_key = (conn.password or "").strip()
    if not api_key:
        raise AirflowException(
            f"Airflow connection {conn_id!r} has no Browser Use API key: "
            "put the key (bu_...) in the connection's password field."
        )
    extra = conn.extra_dejson or {}
    parts = _checked_url_parts(_written_base_url(conn, extra), conn_id)
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not _is_true(extra.get("allow_insecure_http")):
        raise AirflowException(
            f"Airflow connection {conn_id!r} has a plain-http base URL to {parts.hostname!r}: the "
            "API key would travel unencrypted. Use https, or set the extra "
            '{"allow_insecure_http": true} if you really mean it.'
        )
    # Rebuilt from the parts just checked, so that the client connects where the check looked.
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port is not None else ""
    root = f"{parts.scheme}://{host}{port}{api_root(parts.path)}"
    ui_base_url = str(extra.get("ui_base_url") or _wire.DEFAULT_UI_BASE_URL).rstrip("/")
    return ApiSettings(f"{root}/v2", api_key, ui_base_url, f"{root}/v4")


def api_root(path: str) -> str:
    """The API root a base URL's path names: without a trailing ``/v2`` or ``/v4`` (the versions
    this provider speaks; any other path is the root itself); ``/api`` when empty."""
    path = path.rstrip("/")
    head, _, last = path.rpartition("/")
    if last in API_VERSIONS:
        return head  # ``https://gateway/v2``: the root is the gateway's own
    return path or DEFAULT_API_ROOT


@dataclass(frozen=True)
class _UrlParts:
    scheme: str
    hostname: str
    port: int | None
    path: str


def _checked_url_parts(written: str, conn_id: str) -> _UrlParts:
    """The parts of a base URL, refusing what a client could read another way than the check."""

    def refuse(why: str) -> AirflowException:
        return AirflowException(
            f"Airflow connection {conn_id!r} has base URL {written!r}: {why}; expected an http(s) URL "
            f"such as {_wire.DEFAULT_BASE_URL!r}."
        )

    if any(char == "\\" or char.isspace() or not char.isprintable() for char in written):
        raise refuse("it holds a backslash, white space or a control character")
    parts = urlsplit(written.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("no http(s) scheme and host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise refuse("a user name or password in the URL (the key goes in the password field)")
    if parts.query or parts.fragment:
        raise refuse("a query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise refuse("its port is not a number from 0 to 65535") from None
    return _UrlParts(parts.scheme, parts.hostname, port, parts.path)


# --- answers and errors, shared by the sync and async hooks ------------------------------------

#: The largest answer the hooks read from the API. A real one is a few KB (a long task's steps,
#: some hundred KB); past this, the answer is refused unread rather than held in memory.
MAX_ANSWER_BYTES = 8 << 20
#: The most pages a listing reads (of 100 items) before it stops with an error.
MAX_LIST_PAGES = 100
#: The largest output file :meth:`BrowserUseHook.download` saves, unless the hook is told otherwise.
DEFAULT_MAX_DOWNLOAD_BYTES = 1 << 30
#: Seconds one download attempt may take in all, unless the hook is told otherwise.
DEFAULT_DOWNLOAD_TIMEOUT = 600.0

#: What an HTTP error status means to a DAG author; ``{detail}`` is the API's own words.
_STATUS_MEANINGS = {
    401: "the API key was rejected ({detail}); check the password of Airflow connection {conn_id!r}",
    403: "the API key was rejected ({detail}); check the password of Airflow connection {conn_id!r}",
    402: "out of credits or over the key's spend limit ({detail})",
    404: "{detail}",
    422: "the API rejected the request: {detail}",
    429: "the account's concurrent-session cap is reached ({detail})",
}
_EMPTY_DETAILS = {401: "unauthorized", 403: "unauthorized", 404: "not found"}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Return ``text`` with every secret (the API key, task secrets) replaced by ``***``.

    An answer may echo what was sent (a verbose proxy, a misconfigured server): nothing the
    provider raises, logs or puts in a trigger event may carry it on.
    """
    for secret in secrets:
        if len(secret) >= 3:  # shorter values are not secrets anyone could pick out of a message
            text = text.replace(secret, "***")
    return text


def _failure_reason(
    kind: FailureKind, http_status: int | None, detail: str, reason: str, conn_id: str, where: str, api_version: int
) -> str:
    at = f" at {where}" if where else ""
    if kind == "unreachable":
        return f"could not connect to the API{at} ({reason}): is the server up, and are the host and port right?"
    if kind == "tls":
        return (
            f"the TLS handshake with the API{at} failed ({reason}); nothing was sent. If that server speaks "
            "plain http (a local emulator, say), write http:// in the connection's base URL"
        )
    if kind == "interrupted":
        return f"no complete answer from the API{at} ({reason})"
    if kind == "malformed":
        return f"the API's answer (HTTP {http_status}) is not what it should be: {reason or 'not JSON'}"
    if http_status is not None and 300 <= http_status < 400:
        return (
            f"HTTP {http_status}: the API answered with a redirect, which it never sends; it was not "
            "followed (nothing was sent on). Check the connection's base URL"
        )
    if http_status == 404 and _is_generic(detail):
        return (
            f"HTTP 404: {detail or 'Not Found'}{at}: the server has no such route. Is the path of the "
            "connection's base URL right (the API root, such as https://api.browser-use.com/api, or a URL "
            "that ends in /api/v2)?"
        )
    if http_status == 403 and api_version == 4:
        return f"HTTP 403: {_wire_v4.ZERO_DATA_RETENTION.format(detail=detail or 'forbidden')}"
    detail = detail or _EMPTY_DETAILS.get(http_status or 0, "")
    meaning = _STATUS_MEANINGS.get(http_status or 0, "{detail}").format(detail=detail, conn_id=conn_id)
    return f"HTTP {http_status}: {meaning}" if meaning else f"HTTP {http_status}"


def _is_generic(detail: str) -> bool:
    """Whether a 404's detail is a web server's or framework's own, not the API's about an object."""
    text = detail.strip()
    return text.lower() in ("", "not found", "404 not found") or text.startswith("<")


def api_error(
    call: str,
    conn_id: str,
    *,
    http_status: int | None = None,
    body: Any = None,
    kind: FailureKind = "http",
    retry_after: float | None = None,
    reason: str = "",
    secrets: Iterable[str] = (),
    where: str = "",
    api_version: int = 2,
) -> BrowserUseAPIError:
    """Build the error for a failed call, in words a DAG author understands.

    :param call: the hook method, with its id, for the message.
    :param conn_id: the Airflow connection, named when the key was rejected.
    :param http_status: the HTTP status, when the API answered.
    :param body: the error body the API sent (its ``detail`` is shown).
    :param kind: how the call failed.
    :param retry_after: the ``Retry-After`` seconds the API asked for.
    :param reason: why, when no usable HTTP answer arrived.
    :param secrets: values to redact from the message and the detail (see :func:`redact`).
    :param where: the base URL the call went to, named where it helps find the mistake.
    :param api_version: the API version called (a 403 means Zero Data Retention on v4).
    """
    secrets = tuple(secrets)
    detail = redact(_wire.error_detail(body) if body is not None else reason, secrets)
    why = _failure_reason(kind, http_status, detail, reason, conn_id, where, api_version)
    return BrowserUseAPIError(
        redact(f"Browser Use {call} failed: {why}", secrets),
        call=call,
        http_status=http_status,
        detail=detail,
        kind=kind,
        retry_after=retry_after,
    )


def storage_error(call: str, conn_id: str, status: int, body: bytes) -> BrowserUseAPIError:
    """The error for a presigned download or upload the storage host refused: no API key was
    involved, so a 401 or 403 means the URL itself (expired, or other headers than it was
    signed for), not the connection."""
    if status in (401, 403):
        detail = body.decode("utf-8", "replace").strip()
        return BrowserUseAPIError(
            f"Browser Use {call} failed: HTTP {status} from the storage host: the presigned URL was refused "
            f"(expired, or signed for other headers): {detail[:200]}",
            call=call,
            http_status=status,
            detail=detail,
        )
    return api_error(call, conn_id, http_status=status, body=body.decode("utf-8", "replace"))


def parse_json(body: bytes) -> Any:
    """Return the value of a UTF-8 JSON body.

    :raises ValueError: the body is not UTF-8, not JSON, or nested too deep to parse.
    """
    # No garbage collection while parsing: a collection that runs an unrelated finalizer deep
    # inside a hostile [[[[...]]]] would itself overflow the stack ("unraisable" errors).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return json.loads(body.decode("utf-8"))
    except RecursionError:  # a hostile answer such as [[[[...]]]]: refused, not a crash
        raise ValueError("JSON nested too deeply") from None
    finally:
        if collecting:
            gc.enable()


def read_answer(
    call: str,
    conn_id: str,
    status: int,
    retry_after: str | None,
    body: bytes,
    secrets: Iterable[str] = (),
    where: str = "",
    api_version: int = 2,
) -> Any:
    """Return the JSON of a complete answer (None for 204), or raise the error it stands for."""
    if status >= 300:
        try:
            detail_body: Any = parse_json(body)
        except ValueError:
            detail_body = body[:500].decode("utf-8", "replace")
        raise api_error(
            call,
            conn_id,
            http_status=status,
            body=detail_body,
            retry_after=retry_after_seconds(retry_after),
            secrets=secrets,
            where=where,
            api_version=api_version,
        )
    if status == 204:
        return None
    try:
        return parse_json(body)
    except ValueError as error:
        raise api_error(call, conn_id, http_status=status, kind="malformed", reason=str(error)) from None


def require_dict(call: str, conn_id: str, answer: Any) -> dict[str, Any]:
    """Return ``answer`` if it is a JSON object, else raise a ``malformed`` error."""
    if not isinstance(answer, dict):
        raise api_error(call, conn_id, http_status=200, kind="malformed", reason="not a JSON object")
    return answer


def retry_after_seconds(value: str | None) -> float | None:
    """Return an integer ``Retry-After`` in seconds; dates and garbage give None."""
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class AnswerOverrun(Exception):
    """An answer that outran its bound: too slow (``kind="interrupted"``) or too large (``"malformed"``)."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind: FailureKind = kind
        self.reason = reason


class Watchdog:
    """One daemon thread that runs actions at their deadlines, for every sync call of the process.

    A ``threading.Timer`` per call would cost a thread start (about 0.3 ms, a third of a call to
    a nearby server); scheduling here costs a heap push. Restarted in a forked child, where the
    parent's thread does not exist.
    """

    def __init__(self) -> None:
        self._wakeup = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], Any]]] = []
        self._cancelled: set[int] = set()
        self._tokens = itertools.count()
        self._pid = 0

    def schedule(self, seconds: float, action: Callable[[], Any]) -> int:
        """Run ``action`` in ``seconds`` unless cancelled; returns the token for :meth:`cancel`."""
        with self._wakeup:
            if self._pid != os.getpid():
                self._due, self._cancelled, self._pid = [], set(), os.getpid()
                threading.Thread(target=self._run, name="browser-use-watchdog", daemon=True).start()
            token = next(self._tokens)
            deadline = time.monotonic() + seconds
            if not self._due or deadline < self._due[0][0]:
                self._wakeup.notify()
            heapq.heappush(self._due, (deadline, token, action))
            return token

    def cancel(self, token: int) -> None:
        with self._wakeup:
            self._cancelled.add(token)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while True:
                    if self._due and self._due[0][1] in self._cancelled:
                        self._cancelled.discard(heapq.heappop(self._due)[1])
                        continue
                    wait = self._due[0][0] - time.monotonic() if self._due else None
                    if wait is not None and wait <= 0:
                        break
                    self._wakeup.wait(wait)
                _, _, action = heapq.heappop(self._due)
            try:
                action()
            except Exception:  # a connection already closed, say: nothing left to cut
                logging.getLogger(__name__).debug("watchdog action failed", exc_info=True)


_watchdog = Watchdog()


def read_within(raw: Any, seconds: float, limit: int, sink: Callable[[bytes], Any]) -> int:
    """Pass a urllib3 response's decoded body to ``sink`` within ``seconds`` and ``limit`` bytes.

    The watchdog shuts the socket down at the deadline, so a body that drips a byte at a time
    (each read well within the per-read timeout) still ends on time.

    :return: the number of bytes read.
    :raises AnswerOverrun: too slow, or too large.
    """
    if seconds <= 0:
        raise AnswerOverrun("interrupted", "no complete answer in time")
    late = threading.Event()

    def cut() -> None:
        late.set()
        raw.shutdown()

    token = _watchdog.schedule(seconds, cut)
    size = 0
    try:
        while chunk := raw.read1(1 << 16, decode_content=True):
            size += len(chunk)
            if size > limit:
                raise AnswerOverrun("malformed", f"the answer is larger than {limit:,} bytes")
            sink(chunk)
    except AnswerOverrun:
        raise
    except Exception:
        if late.is_set():
            raise AnswerOverrun("interrupted", f"no complete answer within {seconds:.0f} s") from None
        raise
    finally:
        _watchdog.cancel(token)
    if late.is_set():
        raise AnswerOverrun("interrupted", f"no complete answer within {seconds:.0f} s")
    return size


def exchange_within(
    send: Callable[[], requests.Response], seconds: float, limit: int, sink: Callable[[bytes], Any]
) -> tuple[int, str | None]:
    """Make one sync request and read its whole answer into ``sink`` within ``seconds`` and ``limit``.

    :param send: makes the request with ``stream=True`` and ``allow_redirects=False``.
    :return: the HTTP status and the ``Retry-After`` header.
    :raises AnswerOverrun: too slow or too large; requests' and urllib3's errors as they come.
    """
    started = time.monotonic()
    with send() as response:
        read_within(response.raw, seconds - (time.monotonic() - started), limit, sink)
        return response.status_code, response.headers.get("Retry-After")


def sync_transport_error(call: str, conn_id: str, error: Exception, where: str = "") -> BrowserUseAPIError | None:
    """The API error a requests or urllib3 failure stands for, or None for anything else."""
    import requests  # lazy, as in ``BrowserUseHook.http``
    from urllib3.exceptions import DecodeError, HTTPError, NewConnectionError

    kind: FailureKind = "interrupted"  # read timeout, broken body: the request may have arrived
    reason = type(error).__name__
    if isinstance(error, AnswerOverrun):
        kind, reason = error.kind, error.reason
    elif isinstance(error, (requests.exceptions.ContentDecodingError, DecodeError)):
        kind, reason = "malformed", "its body could not be decoded"
    elif isinstance(error, requests.exceptions.SSLError):
        kind = "tls"
    elif isinstance(error, requests.ConnectionError):
        # A refused or timed-out connect never sent the request; anything else may have.
        cause = error.args[0] if error.args else None
        if isinstance(error, requests.ConnectTimeout) or isinstance(getattr(cause, "reason", None), NewConnectionError):
            kind = "unreachable"
    elif not isinstance(error, (requests.RequestException, HTTPError, OSError)):
        return None
    return api_error(call, conn_id, kind=kind, reason=reason, where=where)


def _caused_by_tls(error: BaseException) -> bool:
    """Whether an httpx connect error is a failed TLS handshake (an ``ssl.SSLError`` below it)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- the sync hook -----------------------------------------------------------------------------


class BrowserUseHook(BaseHook):
    """Call the Browser Use Cloud API v2 with the key of an Airflow connection.

    Every method returns the API's JSON as a dict with the API's own (camelCase) field names and
    raises :class:`~airflow_provider_browseruse.exceptions.BrowserUseAPIError` when the call
    fails after the retries its kind allows (see :class:`~airflow_provider_browseruse._retry.RetryPolicy`).
    Ids are checked to be UUIDs before anything is sent (``ValueError`` naming the parameter).

    Every attempt is bounded: its whole answer must arrive within ``timeout`` seconds and
    :data:`MAX_ANSWER_BYTES`; a redirect is an error, never followed; a listing reads at most
    :data:`MAX_LIST_PAGES` pages. The API key and task secrets are redacted from every error.

    :param browser_use_conn_id: the Airflow connection (type ``browser_use``).
    :param timeout: seconds one attempt of a call may take, from request to the answer's last byte.
    :param retry_policy: retry limits; the default retries 5 times within 120 s.
    :param max_download_bytes: the largest output file :meth:`download` saves.
    :param download_timeout: seconds one download attempt may take.
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
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.browser_use_conn_id = browser_use_conn_id
        self.timeout = _wire.check_seconds(timeout, "timeout") if timeout is not None else DEFAULT_TIMEOUT
        self.retry_policy = retry_policy or RetryPolicy()
        self.max_download_bytes = _wire.check_count(max_download_bytes, "max_download_bytes")
        self.download_timeout = _wire.check_seconds(download_timeout, "download_timeout")
        self._sleep: Callable[[float], Any] = time.sleep
        self._settings: ApiSettings | None = None
        self._http: requests.Session | None = None
        # Built once per hook (a hook is used from one thread at a time): creates, and the rest.
        self._retrying: dict[bool, tenacity.Retrying] = {}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the connection form, for Airflow before 3.2 (newer versions read the provider info)."""
        return CONNECTION_UI_FIELD_BEHAVIOUR

    @property
    def settings(self) -> ApiSettings:
        """The base URLs and key, read from the connection on first use (the key is masked)."""
        if self._settings is None:
            self._settings = api_settings(self.get_connection(self.browser_use_conn_id), self.browser_use_conn_id)
            mask_secret(self._settings.api_key)
        return self._settings

    @property
    def http(self) -> requests.Session:
        """The keep-alive session every call of this hook goes through."""
        if self._http is None:
            # Imported here, not at module level: requests costs DAG files ~30 ms (make bench).
            import requests

            self._http = requests.Session()
            self._http.headers.update(
                {_wire.API_KEY_HEADER: self.settings.api_key, "User-Agent": USER_AGENT, "Accept": "application/json"}
            )
        return self._http

    def close(self) -> None:
        """Close the keep-alive connections (they also close when the hook is collected)."""
        if self._http is not None:
            self._http.close()
            self._http = None

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
        secrets: Iterable[str] = (),
        api_version: int = 2,
    ) -> Any:
        return self._retrying_for(resend_safe)(
            self._send_once, call, method, path, json, params, tuple(secrets), api_version
        )

    def _retrying_for(self, resend_safe: bool) -> tenacity.Retrying:
        if resend_safe not in self._retrying:
            arguments = self.retry_policy.tenacity_arguments(resend_safe=resend_safe, sleep=self._sleep, log=self.log)
            self._retrying[resend_safe] = tenacity.Retrying(**arguments)
        return self._retrying[resend_safe]

    def _send_once(
        self,
        call: str,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, Any] | None,
        secrets: tuple[str, ...],
        api_version: int = 2,
    ) -> Any:
        secrets = (self.settings.api_key, *secrets)
        base_url = self.settings.base_url_for(api_version)
        url = base_url + path
        body = bytearray()
        try:
            status, retry_after = exchange_within(
                lambda: self.http.request(
                    method, url, json=json, params=params, timeout=self.timeout, stream=True, allow_redirects=False
                ),
                self.timeout,
                MAX_ANSWER_BYTES,
                body.extend,
            )
        except Exception as error:
            mapped = sync_transport_error(call, self.browser_use_conn_id, error, base_url)
            if mapped is None:
                raise
            raise mapped from error
        return read_answer(
            call, self.browser_use_conn_id, status, retry_after, bytes(body), secrets, base_url, api_version
        )

    def _call_for_dict(
        self, call: str, method: str, path: str, *, required: tuple[str, ...] = (), **kwargs: Any
    ) -> dict[str, Any]:
        answer = require_dict(call, self.browser_use_conn_id, self._call(call, method, path, **kwargs))
        missing = [name for name in required if not isinstance(answer.get(name), str)]
        if missing:
            reason = f"it has no {' or '.join(missing)}"
            raise api_error(call, self.browser_use_conn_id, http_status=200, kind="malformed", reason=reason)
        return answer

    def _list_by_status(
        self, call: str, path: str, status: str | _wire.SessionStatus | None, api_version: int = 2
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"pageSize": _wire.MAX_PAGE_SIZE}
        if status is not None:
            params["filterBy"] = _wire.SessionStatus(status).value  # ValueError for an unknown one
        return self._list_all(call, path, params, api_version)

    def _list_all(self, call: str, path: str, params: dict[str, Any], api_version: int = 2) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page_number in range(1, MAX_LIST_PAGES + 1):
            page = self._call_for_dict(
                call, "GET", path, params={**params, "pageNumber": page_number}, api_version=api_version
            )
            page_items, total = page.get("items"), page.get("totalItems")
            if not isinstance(page_items, list) or not isinstance(total, int):
                raise api_error(call, self.browser_use_conn_id, http_status=200, kind="malformed", reason="not a page")
            items.extend(page_items)
            if not page_items or len(items) >= total:
                return items
        raise api_error(
            call,
            self.browser_use_conn_id,
            http_status=200,
            kind="malformed",
            reason=f"still more after {MAX_LIST_PAGES} pages ({len(items)} items; it claims {total})",
        )

    # --- account ----------------------------------------------------------------------------

    def get_account(self) -> dict[str, Any]:
        """Return the account (``GET /billing/account``, AccountView): balances and plan.

        :return: the AccountView (``projectId``, ``planInfo``, balances; the session cap on
            newer servers).
        :raises BrowserUseAPIError: the call failed; 401 names the connection to fix.
        """
        return self._call_for_dict("get_account", "GET", _wire.ACCOUNT_PATH)

    def concurrent_session_limit(self) -> int | None:
        """Return how many sessions the account may have active at once (``concurrentSessionLimit``).

        Size an Airflow pool to it so that fanned-out tasks queue in Airflow, not on 429s.

        :return: the limit, or None when the server does not say (older servers).
        :raises BrowserUseAPIError: the account could not be read.
        """
        limit = self.get_account().get("concurrentSessionLimit")
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def test_connection(self) -> tuple[bool, str]:
        """Check the key with the side-effect-free account call, for ``airflow connections test``.

        :return: ``(True, "Connected to Browser Use: project ..., plan.")`` or ``(False, why)``;
            never raises.
        """
        try:
            account = self.get_account()
        except Exception as error:
            return False, str(error)
        plan = (account.get("planInfo") or {}).get("planName", "unknown plan")
        message = f"Connected to Browser Use: project {account.get('projectId')}, {plan}."
        # `airflow connections test` prints only "Connection success!" and shows no hook log: say it here.
        print(message)
        return True, message

    # --- sessions ---------------------------------------------------------------------------

    def create_session(self, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start a session (``POST /sessions``); never resent after an ambiguous failure.

        Mind the API's default ``keepAlive`` of true: such a session bills until stopped.

        :param body: CreateSessionRequest fields, with the API's names (``keepAlive``, ...).
        :return: the new session (SessionItemView).
        :raises BrowserUseAPIError: the call failed (429: the concurrent-session cap); after a
            dropped connection, a timeout or a 5xx the session may exist all the same.
        """
        return self._call_for_dict(
            "create_session", "POST", _wire.SESSIONS_PATH, json=dict(body or {}), resend_safe=False, required=("id",)
        )

    def get_session(self, session_id: str) -> dict[str, Any]:
        """Return the session (``GET /sessions/{id}``) with its tasks.

        :param session_id: the session's id (a UUID).
        :return: the SessionView, with ``tasks`` and the access-granting ``liveUrl``.
        :raises ValueError: ``session_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown session.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        return self._call_for_dict(f"get_session({session_id})", "GET", _wire.session_path(session_id))

    def stop_session(self, session_id: str) -> dict[str, Any]:
        """Stop the session and its running tasks (``PATCH /sessions/{id}`` with ``stop``).

        :param session_id: the session's id (a UUID).
        :return: the SessionView after the stop (``status`` may still be ``active`` a moment).
        :raises ValueError: ``session_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown session.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        return self._call_for_dict(
            f"stop_session({session_id})", "PATCH", _wire.session_path(session_id), json=_wire.STOP_SESSION_BODY
        )

    def list_sessions(self, status: str | _wire.SessionStatus | None = None) -> list[dict[str, Any]]:
        """Return every session, following all pages (``GET /sessions``).

        :param status: only sessions with this status (``active`` or ``stopped``).
        :return: the SessionItemViews, newest first.
        :raises ValueError: an unknown ``status``.
        :raises BrowserUseAPIError: a page could not be read.
        """
        return self._list_by_status("list_sessions", _wire.SESSIONS_PATH, status)

    def list_browsers(
        self, status: str | _wire.SessionStatus | None = None, *, api_version: int = 2
    ) -> list[dict[str, Any]]:
        """Return every browser session (``GET /browsers``), following all pages.

        :param status: only browsers with this status (``active`` or ``stopped``).
        :param api_version: list through API v2 or v4 (v4 lists the browsers of v4 conversations).
        :return: the BrowserSessionItemViews (``agentSessionId`` names an agent session's own browser).
        :raises ValueError: an unknown ``status``.
        :raises BrowserUseAPIError: a page could not be read.
        """
        return self._list_by_status("list_browsers", _wire.BROWSERS_PATH, status, api_version)

    def stop_browser(self, browser_id: str) -> dict[str, Any]:
        """Stop a bare browser session (``PATCH /browsers/{id}`` with ``stop``).

        :param browser_id: the browser session's id (a UUID).
        :return: the BrowserSessionView after the stop.
        :raises ValueError: ``browser_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown browser.
        """
        browser_id = _wire.require_uuid(browser_id, "browser_id")
        return self._call_for_dict(
            f"stop_browser({browser_id})", "PATCH", _wire.browser_path(browser_id), json=_wire.STOP_BROWSER_BODY
        )

    def session_ui_url(self, session_id: str) -> str:
        """Return the session's page in the Browser Use web app (needs a login; grants nothing).

        :param session_id: the session's id (a UUID).
        :return: ``{ui_base_url}/sessions/{id}``, from the connection's ``ui_base_url`` extra.
        :raises ValueError: ``session_id`` is not a UUID.
        """
        return _wire.session_ui_url(self.settings.ui_base_url, _wire.require_uuid(session_id, "session_id"))

    # --- tasks ------------------------------------------------------------------------------

    def create_task(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start an agent task (``POST /tasks``); never resent after an ambiguous failure.

        Without ``sessionId`` the API starts a one-off session that closes when the task ends.

        :param body: CreateTaskRequest fields, with the API's names (``task``, ``sessionId``...).
        :return: ``{"id": ..., "sessionId": ...}``.
        :raises ValueError: an empty ``task``, or a ``sessionId`` that is not a UUID.
        :raises BrowserUseAPIError: the call failed; after a dropped connection, a timeout or
            a 5xx the task may exist all the same (find it by its ``metadata``).
        """
        task = body.get("task")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty prompt for the agent, got {task!r}")
        if body.get("sessionId") is not None:
            body = {**body, "sessionId": _wire.require_uuid(body["sessionId"], "session_id")}
        secrets = [value for value in (body.get("secrets") or {}).values() if isinstance(value, str)]
        return self._call_for_dict(
            "create_task",
            "POST",
            _wire.TASKS_PATH,
            json=dict(body),
            resend_safe=False,
            secrets=secrets,
            required=("id", "sessionId"),
        )

    def get_task(self, browser_use_task_id: str) -> dict[str, Any]:
        """Return the full task (``GET /tasks/{id}``): fetch it once, at the end.

        :param browser_use_task_id: the task's id (a UUID).
        :return: the TaskView with steps, output, output files and judgement.
        :raises ValueError: the id is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown task.
        """
        task_id = _wire.require_uuid(browser_use_task_id, "browser_use_task_id")
        return self._call_for_dict(
            f"get_task({task_id})", "GET", _wire.task_path(task_id), required=("id", "sessionId")
        )

    def get_task_status(self, browser_use_task_id: str) -> dict[str, Any]:
        """Return the light task status (``GET /tasks/{id}/status``), the call meant for polling.

        :param browser_use_task_id: the task's id (a UUID).
        :return: the TaskStatusView: ``status``, ``output``, ``isSuccess``, ``cost``...
        :raises ValueError: the id is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown task.
        """
        task_id = _wire.require_uuid(browser_use_task_id, "browser_use_task_id")
        return self._call_for_dict(f"get_task_status({task_id})", "GET", _wire.task_status_path(task_id))

    def stop_task(self, browser_use_task_id: str, *, stop_session: bool = False) -> dict[str, Any]:
        """Stop the task (``PATCH /tasks/{id}``), and with ``stop_session`` its session too.

        :param browser_use_task_id: the task's id (a UUID).
        :param stop_session: stop the task's session as well (``stop_task_and_session``).
        :return: the TaskView after the stop.
        :raises ValueError: the id is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown task.
        """
        task_id = _wire.require_uuid(browser_use_task_id, "browser_use_task_id")
        body = _wire.STOP_TASK_AND_SESSION_BODY if stop_session else _wire.STOP_TASK_BODY
        return self._call_for_dict(
            f"stop_task({task_id})", "PATCH", _wire.task_path(task_id), json=body, required=("sessionId",)
        )

    def list_tasks(
        self,
        *,
        session_id: str | None = None,
        status: str | _wire.TaskStatus | None = None,
        after: float | None = None,
    ) -> list[dict[str, Any]]:
        """Return every task, following all pages (``GET /tasks``).

        :param session_id: only the tasks of this session.
        :param status: only tasks with this status.
        :param after: only tasks created after this time (epoch seconds).
        :return: the TaskItemViews (with ``metadata``), newest first.
        :raises ValueError: ``session_id`` is not a UUID, or an unknown ``status``.
        :raises BrowserUseAPIError: a page could not be read.
        """
        params: dict[str, Any] = {"pageSize": _wire.MAX_PAGE_SIZE}
        if after is not None:
            params["after"] = _wire.format_timestamp(after)
        if session_id is not None:
            params["sessionId"] = _wire.require_uuid(session_id, "session_id")
        if status is not None:
            params["filterBy"] = _wire.TaskStatus(status).value
        return self._list_all("list_tasks", _wire.TASKS_PATH, params)

    # --- output files -----------------------------------------------------------------------

    def get_output_file(self, browser_use_task_id: str, file_id: str) -> dict[str, Any]:
        """Return an output file's name and presigned ``downloadUrl`` (short-lived; grants access).

        :param browser_use_task_id: the task's id (a UUID).
        :param file_id: the file's id from the task's ``outputFiles`` (a UUID).
        :return: ``{"id", "fileName", "downloadUrl"}``; keep the URL out of logs and XCom.
        :raises ValueError: an id is not a UUID.
        :raises BrowserUseAPIError: the call failed.
        """
        task_id = _wire.require_uuid(browser_use_task_id, "browser_use_task_id")
        file_id = _wire.require_uuid(file_id, "file_id")
        return self._call_for_dict(
            f"get_output_file({task_id})", "GET", _wire.output_file_path(task_id, file_id), required=("downloadUrl",)
        )

    def download(self, url: str, destination: BinaryIO, *, call: str = "download") -> int:
        """Stream a presigned URL into ``destination``, without the API key.

        A presigned URL carries its own grant, often to another host; a redirect is not
        followed. Each attempt must end within ``download_timeout`` and ``max_download_bytes``
        and goes to a local spool, copied to ``destination`` once complete, so a retry never
        needs to rewind a destination that cannot seek (an S3 or GCS upload).

        :param url: the presigned URL (from :meth:`get_output_file`); never logged.
        :param destination: a binary file object to write to.
        :param call: how the download is named in errors.
        :return: the number of bytes written.
        :raises BrowserUseAPIError: the download failed after its retries, or was too large or slow.
        """
        with self._retrying_for(True)(self._download_once, url, call) as spool:
            size = spool.tell()
            spool.seek(0)
            shutil.copyfileobj(spool, destination)
        return size

    def _download_once(self, url: str, call: str) -> tempfile.SpooledTemporaryFile[bytes]:
        import requests  # lazy, as in ``http``

        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=16 << 20)  # noqa: SIM115 (returned open)
        try:
            status, _ = exchange_within(
                lambda: requests.get(
                    url, stream=True, timeout=self.timeout, allow_redirects=False, headers={"User-Agent": USER_AGENT}
                ),
                self.download_timeout,
                self.max_download_bytes,
                spool.write,
            )
            if status >= 300:
                spool.seek(0)
                raise storage_error(call, self.browser_use_conn_id, status, spool.read(200))
        except Exception as error:
            spool.close()
            mapped = sync_transport_error(call, self.browser_use_conn_id, error)
            if mapped is None:
                raise
            raise mapped from None  # the URL is in requests' message: keep it out
        return spool

    # --- API v4: runs -----------------------------------------------------------------------

    def _v4(self, call: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._call_for_dict(call, method, path, api_version=4, **kwargs)

    def create_run(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start an agent run (v4 ``POST /runs``); never resent after an ambiguous failure.

        Without ``sessionId`` the API starts a new conversation with its own live browser.

        :param body: RunCreateRequest fields, with the API's names (``task``, ``sessionId``...).
        :return: RunCreateResponse: ``id``, ``status``, ``sessionId``, ``workspaceId``, ...
        :raises ValueError: an empty ``task``, or an id that is not a UUID.
        :raises BrowserUseAPIError: the call failed (409: the session has an active run); after
            a dropped connection, a timeout or a 5xx the run may exist all the same (v4 has no
            metadata: find it by its workspace, never by resending).
        """
        task = body.get("task")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty prompt for the agent, got {task!r}")
        checked = dict(body)
        for field_name, parameter in (("sessionId", "session_id"), ("workspaceId", "workspace_id")):
            if checked.get(field_name) is not None:
                checked[field_name] = _wire.require_uuid(checked[field_name], parameter)
        return self._v4(
            "create_run", "POST", _wire_v4.RUNS_PATH, json=checked, resend_safe=False, required=("id", "sessionId")
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        """Return the whole run (v4 ``GET /runs/{id}``, RunSummary): fetch it once, at the end.

        :raises ValueError: ``run_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown run.
        """
        run_id = _wire.require_uuid(run_id, "run_id")
        return self._v4(f"get_run({run_id})", "GET", _wire_v4.run_path(run_id), required=("id", "status", "sessionId"))

    def get_run_status(self, run_id: str) -> dict[str, Any]:
        """Return ``{"status": ...}`` (v4 ``GET /runs/{id}/status``), the call meant for polling.

        :raises ValueError: ``run_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown run.
        """
        run_id = _wire.require_uuid(run_id, "run_id")
        return self._v4(f"get_run_status({run_id})", "GET", _wire_v4.run_path(run_id, "/status"), required=("status",))

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Cancel a run (v4 ``POST /runs/{id}/cancel``); an ended run comes back as it is.

        Idempotent, so retried like a read.

        :return: the RunSummary after the cancel.
        :raises ValueError: ``run_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown run.
        """
        run_id = _wire.require_uuid(run_id, "run_id")
        return self._v4(f"cancel_run({run_id})", "POST", _wire_v4.run_path(run_id, "/cancel"))

    def get_run_events(self, run_id: str, *, after: int | None = None, limit: int = 100) -> dict[str, Any]:
        """Return one page of a run's events (v4 ``GET /runs/{id}/events``).

        A ``browser.ready`` event's ``data.live_view_url`` grants access to the browser: keep it
        out of logs and XCom.

        :param after: only events with a higher id (``nextAfter`` of the page before).
        :return: ``{"events": [...], "nextAfter": ..., "hasMore": ...}``.
        :raises ValueError: ``run_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed.
        """
        run_id = _wire.require_uuid(run_id, "run_id")
        params: dict[str, Any] = {"limit": _wire.check_count(limit, "limit", maximum=1000)}
        if after is not None:
            params["after"] = after
        return self._v4(f"get_run_events({run_id})", "GET", _wire_v4.run_path(run_id, "/events"), params=params)

    def get_run_attachments(self, run_id: str) -> list[dict[str, Any]]:
        """Return the files attached to a run (v4 ``GET /runs/{id}/attachments``)."""
        run_id = _wire.require_uuid(run_id, "run_id")
        answer = self._v4(f"get_run_attachments({run_id})", "GET", _wire_v4.run_path(run_id, "/attachments"))
        return list(answer.get("attachments") or [])

    def list_runs(
        self, *, session_id: str | None = None, max_items: int | None = None, created_after: float | None = None
    ) -> list[dict[str, Any]]:
        """Return runs, most recent first, following the cursor (v4 ``GET /runs``).

        :param session_id: only the runs of this session.
        :param max_items: stop after this many (the newest); None reads every page.
        :param created_after: stop at the first page that reaches runs created before this
            (epoch seconds); they are left out.
        :raises ValueError: ``session_id`` is not a UUID.
        :raises BrowserUseAPIError: a page could not be read.
        """
        params = {"sessionId": _wire.require_uuid(session_id, "session_id")} if session_id is not None else {}

        def older(run: Mapping[str, Any]) -> bool:
            created = _wire.parse_timestamp(run.get("createdAt"))
            return created_after is not None and created is not None and created < created_after

        runs = self._list_by_cursor("list_runs", _wire_v4.RUNS_PATH, params, "runs", max_items, stop=older)
        return [run for run in runs if not older(run)]

    def _list_by_cursor(
        self,
        call: str,
        path: str,
        params: Mapping[str, Any],
        items_key: str,
        max_items: int | None = None,
        stop: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page_params = {**params, "limit": _wire.MAX_PAGE_SIZE, **({"cursor": cursor} if cursor else {})}
            page = self._v4(call, "GET", path, params=page_params)
            page_items = page.get(items_key)
            if not isinstance(page_items, list) or not all(isinstance(item, dict) for item in page_items):
                raise api_error(call, self.browser_use_conn_id, http_status=200, kind="malformed", reason="not a page")
            items.extend(page_items)
            cursor = page.get("nextCursor")
            enough = max_items is not None and len(items) >= max_items
            if enough or not page.get("hasMore") or not cursor or (stop is not None and any(map(stop, page_items))):
                return items[:max_items] if max_items is not None else items
        raise api_error(
            call,
            self.browser_use_conn_id,
            http_status=200,
            kind="malformed",
            reason=f"still more after {MAX_LIST_PAGES} pages ({len(items)} items)",
        )

    # --- API v4: sessions (conversations) ---------------------------------------------------

    def get_agent_session(self, session_id: str) -> dict[str, Any]:
        """Return a v4 session (``GET /sessions/{id}``, SessionInfo): its latest run and status.

        :raises ValueError: ``session_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown session.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        return self._v4(f"get_agent_session({session_id})", "GET", _wire_v4.session_path(session_id))

    def list_agent_sessions(self) -> list[dict[str, Any]]:
        """Return every v4 session, most recent first (``GET /sessions``, following the cursor)."""
        return self._list_by_cursor("list_agent_sessions", _wire_v4.SESSIONS_PATH, {}, "sessions")

    def delete_agent_session(self, session_id: str) -> None:
        """Delete a v4 session (``DELETE /sessions/{id}``): cancels its active run and queued messages.

        :raises ValueError: ``session_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown session.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        self._call(f"delete_agent_session({session_id})", "DELETE", _wire_v4.session_path(session_id), api_version=4)

    def purge_agent_session(self, session_id: str) -> None:
        """Delete a v4 session's data now (``POST /sessions/{id}/purge``; Zero Data Retention projects only)."""
        session_id = _wire.require_uuid(session_id, "session_id")
        call = f"purge_agent_session({session_id})"
        try:
            self._call(call, "POST", _wire_v4.session_path(session_id, "/purge"), api_version=4)
        except BrowserUseAPIError as error:
            if error.http_status != 403:
                raise
            # Here a 403 means the opposite of what it means elsewhere on v4.
            raise BrowserUseAPIError(
                f"Browser Use {call} failed: HTTP 403: purging is for Zero Data Retention projects only, and "
                f"this project is not one ({error.detail}); delete the session instead",
                call=call,
                http_status=403,
                detail=error.detail,
            ) from None

    def get_agent_session_cost(self, session_id: str) -> dict[str, Any]:
        """Return what a v4 session has cost so far (``GET /sessions/{id}/cost``): LLM, search,
        browser, proxy and ``totalCostUsd``, as decimal strings."""
        session_id = _wire.require_uuid(session_id, "session_id")
        return self._v4(
            f"get_agent_session_cost({session_id})",
            "GET",
            _wire_v4.session_path(session_id, "/cost"),
            required=("totalCostUsd",),
        )

    def set_agent_session_cost_cap(self, session_id: str, max_cost_usd: float) -> dict[str, Any]:
        """Set a v4 session's budget in USD (``PATCH /sessions/{id}/cost-cap``); its spending so far counts.

        :raises ValueError: ``session_id`` is not a UUID, or ``max_cost_usd`` is not a positive amount.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        cap = _wire.check_cost_cap(max_cost_usd, "max_cost_usd")
        return self._v4(
            f"set_agent_session_cost_cap({session_id})",
            "PATCH",
            _wire_v4.session_path(session_id, "/cost-cap"),
            json={"maxCostUsd": str(cap)},
        )

    def get_agent_session_queue(self, session_id: str) -> list[dict[str, Any]]:
        """Return a v4 session's queued follow-up messages (``GET /sessions/{id}/queue``)."""
        session_id = _wire.require_uuid(session_id, "session_id")
        answer = self._v4(f"get_agent_session_queue({session_id})", "GET", _wire_v4.session_path(session_id, "/queue"))
        return list(answer.get("queue") or [])

    def remove_queued_message(self, session_id: str, message_id: int) -> dict[str, Any]:
        """Cancel one queued message (``DELETE /sessions/{id}/queue/{message_id}``)."""
        session_id = _wire.require_uuid(session_id, "session_id")
        message = _wire.check_count(message_id, "message_id", minimum=0)
        return self._v4(
            f"remove_queued_message({session_id}, {message})",
            "DELETE",
            _wire_v4.session_path(session_id, f"/queue/{message}"),
        )

    # --- API v4: workspaces -----------------------------------------------------------------

    def create_workspace(self, name: str | None = None) -> dict[str, Any]:
        """Create a workspace (v4 ``POST /workspaces``), where runs read and write files.

        Never resent after an ambiguous failure (it would make a second one).
        """
        body = {"name": name} if name is not None else {}
        return self._v4(
            "create_workspace", "POST", _wire_v4.WORKSPACES_PATH, json=body, resend_safe=False, required=("id",)
        )

    def get_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Return a workspace (v4 ``GET /workspaces/{id}``, WorkspaceInfo: ``id``, ``name``...)."""
        workspace_id = _wire.require_uuid(workspace_id, "workspace_id")
        return self._v4(f"get_workspace({workspace_id})", "GET", _wire_v4.workspace_path(workspace_id))

    def request_uploads(self, workspace_id: str, files: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Ask for presigned upload URLs (v4 ``POST /workspaces/{id}/files/upload``).

        :param files: ``{"name", "contentType", "size"}`` each; the PUT must send exactly these.
        :return: for each file its upload ``id`` (to attach to a run), ``path`` and ``uploadUrl``
            (access-granting: keep it out of logs and XCom), in order.
        :raises BrowserUseAPIError: the call failed, or it answered fewer URLs than files.
        """
        workspace_id = _wire.require_uuid(workspace_id, "workspace_id")
        call = f"request_uploads({workspace_id})"
        answer = self._v4(
            call, "POST", _wire_v4.workspace_path(workspace_id, "/files/upload"), json={"files": list(files)}
        )
        items = answer.get("files")
        if (
            not isinstance(items, list)
            or len(items) != len(files)
            or not all(isinstance(item, dict) and isinstance(item.get("uploadUrl"), str) for item in items)
        ):
            reason = f"not one upload URL for each of the {len(files)} file(s)"
            raise api_error(call, self.browser_use_conn_id, http_status=200, kind="malformed", reason=reason)
        return items

    def upload(
        self, url: str, open_source: Callable[[], BinaryIO], size: int, content_type: str, *, call: str = "upload"
    ) -> None:
        """PUT a file to a presigned URL, without the API key, with exactly the presigned headers.

        :param url: the presigned ``uploadUrl``; never logged.
        :param open_source: opens the file from its start (again for each attempt).
        :param size: its length in bytes, as presigned (sent as Content-Length).
        :param content_type: as presigned.
        :raises BrowserUseAPIError: the upload failed after its retries (a PUT of the same bytes
            may be resent).
        """
        self._retrying_for(True)(self._upload_once, url, open_source, size, content_type, call)

    def _upload_once(
        self, url: str, open_source: Callable[[], BinaryIO], size: int, content_type: str, call: str
    ) -> None:
        import requests  # lazy, as in ``http``

        answer = bytearray()
        try:
            with open_source() as source:
                status, _ = exchange_within(
                    lambda: requests.put(
                        url,
                        data=source,
                        stream=True,
                        timeout=self.timeout,
                        allow_redirects=False,
                        headers={"Content-Type": content_type, "Content-Length": str(size), "User-Agent": USER_AGENT},
                    ),
                    self.download_timeout,
                    MAX_ANSWER_BYTES,
                    answer.extend,
                )
        except Exception as error:
            mapped = sync_transport_error(call, self.browser_use_conn_id, error)
            if mapped is None:
                raise
            raise mapped from None  # the URL is in requests' message: keep it out
        if status >= 300:
            raise storage_error(call, self.browser_use_conn_id, status, bytes(answer[:200]))

    def list_workspace_files(
        self, workspace_id: str, *, prefix: str | None = None, include_urls: bool = False
    ) -> list[dict[str, Any]]:
        """Return a workspace's files (v4 ``GET /workspaces/{id}/files``), following the cursor.

        :param prefix: only paths that start with it.
        :param include_urls: with a presigned download ``url`` each (access-granting).
        :return: ``{"path", "size", "lastModified", "url"?}`` each.
        """
        workspace_id = _wire.require_uuid(workspace_id, "workspace_id")
        params: dict[str, Any] = {"includeUrls": "true" if include_urls else "false"}
        if prefix:
            params["prefix"] = prefix
        return self._list_by_cursor(
            f"list_workspace_files({workspace_id})", _wire_v4.workspace_path(workspace_id, "/files"), params, "files"
        )

    # --- API v4: an agent session's browsers ------------------------------------------------

    def list_agent_browsers(self, session_id: str) -> list[dict[str, Any]]:
        """Return the browsers of a v4 session (``GET /browsers?agentSessionId=``), any status."""
        session_id = _wire.require_uuid(session_id, "session_id")
        call = f"list_agent_browsers({session_id})"
        return self._list_all(
            call, _wire_v4.BROWSERS_PATH, {"agentSessionId": session_id, "pageSize": _wire.MAX_PAGE_SIZE}, 4
        )

    def stop_agent_browser(self, browser_id: str) -> dict[str, Any]:
        """Stop a browser through API v4 (``PATCH /browsers/{id}`` with ``stop``)."""
        browser_id = _wire.require_uuid(browser_id, "browser_id")
        return self._v4(
            f"stop_agent_browser({browser_id})",
            "PATCH",
            _wire_v4.BROWSERS_PATH + f"/{browser_id}",
            json=_wire.STOP_BROWSER_BODY,
        )

    def stop_agent_session_browsers(self, session_id: str) -> list[dict[str, Any]]:
        """Stop every active browser of a v4 session; returns the browsers it stopped (as after the stop)."""
        return [
            self.stop_agent_browser(str(browser["id"]))
            for browser in self.list_agent_browsers(session_id)
            if _wire.session_status(browser) is _wire.SessionStatus.ACTIVE
        ]

    def agent_session_ui_url(self, session_id: str) -> str:
        """Return a v4 session's page in the Browser Use web app (needs a login; grants nothing)."""
        return _wire.session_ui_url(self.settings.ui_base_url, _wire.require_uuid(session_id, "session_id"))


# --- the async hook, for triggers --------------------------------------------------------------

#: The most connections one event loop's pool keeps open, whatever the number of triggers.
ASYNC_POOL_SIZE = 16


class AsyncClientPool:
    """The HTTP clients of one event loop, shared by every trigger of this provider in it.

    A triggerer with a thousand deferred tasks keeps at most :data:`ASYNC_POOL_SIZE` keep-alive
    connections. Each is its own single-connection ``httpx.AsyncClient``, lent out through a
    queue: httpcore's own pool does work in proportion to the square of its size on every
    request, which costs more CPU than the request itself when many triggers poll at once.
    Clients carry no key; each request sends its own.
    """

    def __init__(self, size: int = ASYNC_POOL_SIZE) -> None:
        self.size = size
        self.created = 0
        self.idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        self.ssl_context = httpx.create_ssl_context()  # loaded once: each load of the CA file costs ~50 ms

    async def take(self) -> httpx.AsyncClient:
        """Return an idle client, a new one while fewer than ``size`` exist, or wait for one."""
        if self.idle.empty() and self.created < self.size:
            self.created += 1
            return httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                verify=self.ssl_context,
            )
        return await self.idle.get()

    def give_back(self, client: httpx.AsyncClient) -> None:
        """Return a client taken with :meth:`take`."""
        self.idle.put_nowait(client)

    async def aclose(self) -> None:
        """Close the idle clients (call when no request is in flight); the pool can be reused."""
        while not self.idle.empty():
            await self.idle.get_nowait().aclose()
            self.created -= 1


_loop_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClientPool] = weakref.WeakKeyDictionary()


def shared_pool() -> AsyncClientPool:
    """Return the running event loop's pool, created on first use."""
    loop = asyncio.get_running_loop()
    if loop not in _loop_pools:
        _loop_pools[loop] = AsyncClientPool()
    return _loop_pools[loop]


class BrowserUseAsyncHook:
    """Make the calls triggers need, over the event loop's shared pool, under the same retry policy.

    Methods return the API's JSON as dicts and raise
    :class:`~airflow_provider_browseruse.exceptions.BrowserUseAPIError`, exactly as
    :class:`BrowserUseHook`. The connection is read with Airflow's async connection API.

    Each attempt is bounded as in :class:`BrowserUseHook`: its whole answer within ``timeout``
    and :data:`MAX_ANSWER_BYTES`, no redirect followed, the key redacted from every error.

    :param browser_use_conn_id: the Airflow connection (type ``browser_use``).
    :param timeout: seconds one attempt of a call may take, from request to the answer's last byte.
    :param retry_policy: retry limits; the default retries 5 times within 120 s.
    """

    def __init__(
        self,
        browser_use_conn_id: str = BrowserUseHook.default_conn_name,
        *,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.browser_use_conn_id = browser_use_conn_id
        self.timeout = _wire.check_seconds(timeout, "timeout") if timeout is not None else DEFAULT_TIMEOUT
        self.retry_policy = retry_policy or RetryPolicy()
        self._settings: ApiSettings | None = None
        self.log = logging.getLogger(__name__)

    async def settings(self) -> ApiSettings:
        """Return the base URLs and key, read from the connection on first use (the key is masked).

        :raises AirflowException: the connection has no key or an unusable base URL.
        """
        if self._settings is None:
            try:
                conn = await BaseHook.aget_connection(self.browser_use_conn_id)
            except ImportError:  # Airflow 3.1 outside a supervised process: read it off the loop
                conn = await asyncio.to_thread(BaseHook.get_connection, self.browser_use_conn_id)
            self._settings = api_settings(conn, self.browser_use_conn_id)
            mask_secret(self._settings.api_key)
        return self._settings

    def redact(self, text: str) -> str:
        """Return ``text`` without the API key (once the connection has been read)."""
        return redact(text, (self._settings.api_key,)) if self._settings is not None else text

    async def _call(
        self,
        call: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        api_version: int = 2,
    ) -> dict[str, Any]:
        retrying = tenacity.AsyncRetrying(
            **self.retry_policy.tenacity_arguments(resend_safe=True, sleep=asyncio.sleep, log=self.log)
        )
        answer: Any = await retrying(self._send_once, call, method, path, json, params, api_version)
        return require_dict(call, self.browser_use_conn_id, answer)

    async def _send_once(
        self,
        call: str,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, Any] | None = None,
        api_version: int = 2,
    ) -> Any:
        settings = await self.settings()
        conn_id, where = self.browser_use_conn_id, settings.base_url_for(api_version)
        pool = shared_pool()
        client = await pool.take()
        try:
            status, retry_after, body = await asyncio.wait_for(
                self._exchange(client, method, where + path, json, settings.api_key, params), self.timeout
            )
        except asyncio.TimeoutError:
            raise api_error(
                call, conn_id, kind="interrupted", reason=f"no complete answer within {self.timeout:g} s", where=where
            ) from None
        except AnswerOverrun as error:
            raise api_error(call, conn_id, kind=error.kind, reason=error.reason, where=where) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:  # never sent
            kind: FailureKind = "tls" if _caused_by_tls(error) else "unreachable"
            raise api_error(call, conn_id, kind=kind, reason=type(error).__name__, where=where) from error
        except httpx.DecodingError as error:  # a body that claims an encoding it does not have
            reason = "its body could not be decoded"
            raise api_error(call, conn_id, kind="malformed", reason=reason, where=where) from error
        except httpx.TransportError as error:  # read timeout, dropped connection, broken answer
            raise api_error(call, conn_id, kind="interrupted", reason=type(error).__name__, where=where) from error
        finally:
            pool.give_back(client)
        return read_answer(call, conn_id, status, retry_after, body, (settings.api_key,), where, api_version)

    async def _exchange(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        json: Any,
        api_key: str,
        params: Mapping[str, Any] | None = None,
    ) -> tuple[int, str | None, bytes]:
        """One request and its whole answer, at most :data:`MAX_ANSWER_BYTES` (redirects are not followed)."""
        headers = {_wire.API_KEY_HEADER: api_key}
        async with client.stream(
            method, url, json=json, params=params, headers=headers, timeout=self.timeout
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise AnswerOverrun("malformed", f"the answer is larger than {MAX_ANSWER_BYTES:,} bytes")
            return response.status_code, response.headers.get("Retry-After"), bytes(body)

    async def get_session(self, session_id: str) -> dict[str, Any]:
        """Return the session (SessionView); as :meth:`BrowserUseHook.get_session`.

        :param session_id: the session's id (a UUID).
        :raises ValueError: ``session_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown session.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        return await self._call(f"get_session({session_id})", "GET", _wire.session_path(session_id))

    async def stop_session(self, session_id: str) -> dict[str, Any]:
        """Stop the session and its running tasks; as :meth:`BrowserUseHook.stop_session`.

        :param session_id: the session's id (a UUID).
        :return: the SessionView after the stop.
        :raises ValueError: ``session_id`` is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown session.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        return await self._call(
            f"stop_session({session_id})", "PATCH", _wire.session_path(session_id), json=_wire.STOP_SESSION_BODY
        )

    async def get_task(self, browser_use_task_id: str) -> dict[str, Any]:
        """Return the full task (TaskView); as :meth:`BrowserUseHook.get_task`.

        :param browser_use_task_id: the task's id (a UUID).
        :raises ValueError: the id is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown task.
        """
        task_id = _wire.require_uuid(browser_use_task_id, "browser_use_task_id")
        return await self._call(f"get_task({task_id})", "GET", _wire.task_path(task_id))

    async def get_task_status(self, browser_use_task_id: str) -> dict[str, Any]:
        """Return the light task status (TaskStatusView); as :meth:`BrowserUseHook.get_task_status`.

        :param browser_use_task_id: the task's id (a UUID).
        :raises ValueError: the id is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown task.
        """
        task_id = _wire.require_uuid(browser_use_task_id, "browser_use_task_id")
        return await self._call(f"get_task_status({task_id})", "GET", _wire.task_status_path(task_id))

    async def stop_task(self, browser_use_task_id: str, *, stop_session: bool = False) -> dict[str, Any]:
        """Stop the task, and with ``stop_session`` its session; as :meth:`BrowserUseHook.stop_task`.

        :param browser_use_task_id: the task's id (a UUID).
        :param stop_session: stop the task's session as well.
        :return: the TaskView after the stop.
        :raises ValueError: the id is not a UUID.
        :raises BrowserUseAPIError: the call failed; ``is_not_found`` for an unknown task.
        """
        task_id = _wire.require_uuid(browser_use_task_id, "browser_use_task_id")
        body = _wire.STOP_TASK_AND_SESSION_BODY if stop_session else _wire.STOP_TASK_BODY
        return await self._call(f"stop_task({task_id})", "PATCH", _wire.task_path(task_id), json=body)

    # --- API v4 -------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """Return the whole v4 run (RunSummary); as :meth:`BrowserUseHook.get_run`."""
        run_id = _wire.require_uuid(run_id, "run_id")
        return await self._call(f"get_run({run_id})", "GET", _wire_v4.run_path(run_id), api_version=4)

    async def get_run_status(self, run_id: str) -> dict[str, Any]:
        """Return ``{"status": ...}`` of a v4 run; as :meth:`BrowserUseHook.get_run_status`."""
        run_id = _wire.require_uuid(run_id, "run_id")
        return await self._call(f"get_run_status({run_id})", "GET", _wire_v4.run_path(run_id, "/status"), api_version=4)

    async def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Cancel a v4 run (idempotent); as :meth:`BrowserUseHook.cancel_run`."""
        run_id = _wire.require_uuid(run_id, "run_id")
        return await self._call(f"cancel_run({run_id})", "POST", _wire_v4.run_path(run_id, "/cancel"), api_version=4)

    async def stop_agent_session_browsers(self, session_id: str) -> int:
        """Stop the active browsers of a v4 session (first page of 100: a session has one or two).

        :return: how many were stopped.
        """
        session_id = _wire.require_uuid(session_id, "session_id")
        page = await self._call(
            f"list_agent_browsers({session_id})",
            "GET",
            _wire_v4.BROWSERS_PATH,
            params={"agentSessionId": session_id, "pageSize": _wire.MAX_PAGE_SIZE},
            api_version=4,
        )
        stopped = 0
        for browser in page.get("items") or []:
            if isinstance(browser, dict) and _wire.session_status(browser) is _wire.SessionStatus.ACTIVE:
                browser_id = _wire.require_uuid(browser.get("id"), "browser id")
                await self._call(
                    f"stop_agent_browser({browser_id})",
                    "PATCH",
                    f"{_wire_v4.BROWSERS_PATH}/{browser_id}",
                    json=_wire.STOP_BROWSER_BODY,
                    api_version=4,
                )
                stopped += 1
        return stopped
