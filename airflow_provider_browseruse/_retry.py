"""The one retry policy, used by the sync hook and the async client alike.

What is retried: connection failures, timeouts, dropped connections, malformed answers, 429 and
5xx, with exponential backoff and jitter, honouring an integer ``Retry-After``, bounded in
attempts and in total time. A call that may create something remotely (``POST /sessions``,
``POST /tasks``) is resent only when the first attempt certainly created nothing: the
connection was never made, or the API answered 429 (the concurrency cap: nothing was created).
Other 4xx answers, redirects and a failed TLS handshake are final: resending the same request
cannot change them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from airflow_provider_browseruse.exceptions import BrowserUseAPIError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def may_have_taken_effect(error: BaseException) -> bool:
    """Whether a failed create call may still have created something remotely.

    Such a call is never resent; the caller looks for what it may have created instead.
    """
    if not isinstance(error, BrowserUseAPIError) or error.kind == "unreachable" or error.http_status == 429:
        return False
    return error.kind in ("interrupted", "malformed") or (error.http_status or 0) >= 500


#: Seconds to wait before each look for what an ambiguous create may have made (it may still be
#: in flight on the server when the client gives up).
RECONCILE_WAITS = (0.0, 1.0, 2.0)
#: How far back to list when looking for what this worker created: the API's clock and the
#: worker's may differ, and a few minutes is plenty.
LISTING_CLOCK_SKEW = 300.0

T = TypeVar("T")


def look_again(look: Callable[[], T | None]) -> T | None:
    """Call ``look`` after each of :data:`RECONCILE_WAITS` until it finds something.

    :return: what ``look`` found, or None when it found nothing every time.
    """
    for wait in RECONCILE_WAITS:
        time.sleep(wait)
        found = look()
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried.

    :param max_attempts: attempts in all, the first included (1 turns retries off).
    :param initial_wait: seconds before the first retry; doubled for each further one.
    :param max_wait: the longest backoff between two attempts (a ``Retry-After`` may be longer).
    :param max_total: seconds a call may take in all, waits included; no retry starts past it.
    """

    max_attempts: int = 5
    initial_wait: float = 1.0
    max_wait: float = 30.0
    max_total: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        for name in ("initial_wait", "max_wait", "max_total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number of seconds, not negative, got {value!r}")

    @staticmethod
    def is_retryable(error: BaseException, *, resend_safe: bool) -> bool:
        """Whether another attempt may help, and cannot duplicate remote work.

        :param resend_safe: True for reads and stops; False for calls that create something.
        """
        if not isinstance(error, BrowserUseAPIError):
            return False
        if error.kind == "unreachable" or error.http_status == 429:
            return True
        if error.kind in ("interrupted", "malformed"):
            return resend_safe
        return resend_safe and error.http_status in RETRYABLE_STATUSES

    def wait_seconds(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1).

        An integer ``Retry-After`` is honoured as sent; otherwise exponential backoff with
        jitter between half and all of the step, so that many clients do not retry in step.
        """
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        step = min(self.max_wait, self.initial_wait * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)

    def tenacity_arguments(
        self,
        *,
        resend_safe: bool,
        sleep: Callable[[float], Any],
        log: Any = None,
    ) -> dict[str, Any]:
        """Keyword arguments for ``tenacity.Retrying`` or ``tenacity.AsyncRetrying``."""

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.wait_seconds(state.attempt_number, error)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if log is None or state.outcome is None or state.next_action is None:
                return
            log.warning(
                "%s; retrying in %.1f s (attempt %d of %d)",
                state.outcome.exception(),
                state.next_action.sleep,
                state.attempt_number + 1,
                self.max_attempts,
            )

        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts) | tenacity.stop_before_delay(self.max_total),
            "wait": wait,
            "retry": tenacity.retry_if_exception(lambda error: self.is_retryable(error, resend_safe=resend_safe)),
            "sleep": sleep,
            "before_sleep": before_sleep,
            "reraise": True,
        }
