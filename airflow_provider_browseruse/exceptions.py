"""The errors the provider raises: a failed API call, and a remote task that did not succeed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from airflow_provider_browseruse._compat import AirflowException

#: How a call failed. ``http``: the API answered with an error status. ``unreachable``: no
#: connection could be made, so the request was never sent. ``tls``: the TLS handshake failed
#: (nothing was sent; asking again cannot help). ``interrupted``: the request was sent but no
#: complete answer came back (read timeout, dropped connection). ``malformed``: the API answered
#: with a body that is not the JSON it should be.
FailureKind = Literal["http", "unreachable", "tls", "interrupted", "malformed"]


class BrowserUseAPIError(AirflowException):
    """A Browser Use API call failed.

    :ivar call: the hook method that failed, with its id, e.g. ``get_session(3c90c3cc-...)``.
    :ivar http_status: the HTTP status the API answered, or None when no HTTP answer arrived.
        (Not ``status_code``: Airflow's own exceptions use that name for their REST status.)
    :ivar detail: the API's own ``detail`` text (validation errors joined), or the transport error.
    :ivar kind: how it failed; see :data:`FailureKind`.
    :ivar retry_after: seconds from the ``Retry-After`` header, when the API sent an integer one.
    """

    # Every argument but the message has a default: Airflow rebuilds exceptions from the message.
    def __init__(
        self,
        message: str,
        *,
        call: str = "",
        http_status: int | None = None,
        detail: str = "",
        kind: FailureKind = "http",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.call = call
        self.http_status = http_status
        self.detail = detail
        self.kind = kind
        self.retry_after = retry_after

    @property
    def is_not_found(self) -> bool:
        """Whether the API answered 404: the session, task or file does not exist (any more)."""
        return self.http_status == 404


class BrowserUseTaskError(AirflowException):
    """A Browser Use task ended without success: ``failed``, ``stopped``, rejected by the
    success policy, or with an output that does not match its ``structured_output`` schema.

    Catch it in a callback or a wrapping task to act on what the agent did::

        except BrowserUseTaskError as error:
            print(error.browser_use_task_id, error.status, error.output)

    :ivar browser_use_task_id: the remote task's id.
    :ivar status: its final status (``finished``, ``failed`` or ``stopped``).
    :ivar output: its raw output text, if any.
    :ivar is_success: the agent's own claim of success.
    :ivar judge_verdict: the judge's verdict, when the task was judged.
    :ivar judgement: the judge's reasoning, when the task was judged.
    """

    def __init__(self, message: str, task: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        task = task or {}
        self.browser_use_task_id: str | None = task.get("id")
        self.status: str | None = task.get("status")
        self.output: str | None = task.get("output")
        self.is_success: bool | None = task.get("isSuccess")
        self.judge_verdict: bool | None = task.get("judgeVerdict")
        self.judgement: str | None = task.get("judgement")
