"""The one exception type raised for a failed Browser Use API call."""

from __future__ import annotations

from typing import Literal

from airflow_provider_browseruse._compat import AirflowException

#: How a call failed. ``http``: the API answered with an error status. ``unreachable``: no
#: connection could be made, so the request was never sent. ``interrupted``: the request was
#: sent but no complete answer came back (read timeout, dropped connection). ``malformed``: the
#: API answered with a body that is not the JSON it should be.
FailureKind = Literal["http", "unreachable", "interrupted", "malformed"]


class BrowserUseAPIError(AirflowException):
    """A Browser Use API call failed.

    :ivar call: the hook method that failed, with its id, e.g. ``get_session(3c90c3cc-...)``.
    :ivar status_code: the HTTP status, or None when no HTTP answer arrived.
    :ivar detail: the API's own ``detail`` text (validation errors joined), or the transport error.
    :ivar kind: how it failed; see :data:`FailureKind`.
    :ivar retry_after: seconds from the ``Retry-After`` header, when the API sent an integer one.
    """

    status_code: int | None  # type: ignore[assignment]  # the API's status, not Airflow's own

    def __init__(
        self,
        message: str,
        *,
        call: str,
        status_code: int | None = None,
        detail: str = "",
        kind: FailureKind = "http",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.call = call
        self.status_code = status_code
        self.detail = detail
        self.kind = kind
        self.retry_after = retry_after

    @property
    def is_not_found(self) -> bool:
        return self.status_code == 404
