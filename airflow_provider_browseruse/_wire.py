"""Browser Use API v2 on the wire: paths, statuses, parsing and trimming of answers.

Every rule about what the API sends and means lives here, so that the sync hook, the async
client, the operators and the sensors read it in one place.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

DEFAULT_BASE_URL = "https://api.browser-use.com/api/v2"
DEFAULT_UI_BASE_URL = "https://cloud.browser-use.com"
API_KEY_HEADER = "X-Browser-Use-API-Key"
MAX_PAGE_SIZE = 100


class SessionStatus(str, Enum):
    """Status of a session (a cloud browser)."""

    ACTIVE = "active"
    STOPPED = "stopped"


class TaskStatus(str, Enum):
    """Status of a task (one agent run)."""

    CREATED = "created"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"


TASK_TERMINAL_STATUSES = frozenset({TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.STOPPED})
TASK_FAILED_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.STOPPED})

#: Fields holding URLs that grant access to a browser or its recording: never in XCom or logs.
ACCESS_URL_FIELDS = ("liveUrl", "publicShareUrl", "recordingUrl", "cdpUrl")
#: What ``task_outputs`` keeps of each task of a session.
TASK_OUTPUT_FIELDS = ("id", "status", "output", "isSuccess", "judgeVerdict", "cost")


# --- paths -------------------------------------------------------------------------------------

ACCOUNT_PATH = "/billing/account"
SESSIONS_PATH = "/sessions"
TASKS_PATH = "/tasks"
BROWSERS_PATH = "/browsers"


def parse_timestamp(value: Any) -> float | None:
    """An API timestamp (ISO 8601, UTC, with or without ``Z``) as epoch seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def format_timestamp(epoch: float) -> str:
    """Epoch seconds as the API writes timestamps (ISO 8601, UTC)."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def session_path(session_id: str) -> str:
    return f"{SESSIONS_PATH}/{session_id}"


def browser_path(browser_id: str) -> str:
    return f"{BROWSERS_PATH}/{browser_id}"


def task_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}"


def task_status_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}/status"


STOP_SESSION_BODY = {"action": "stop"}
STOP_BROWSER_BODY = {"action": "stop"}
STOP_TASK_BODY = {"action": "stop"}
STOP_TASK_AND_SESSION_BODY = {"action": "stop_task_and_session"}


# --- input checks ------------------------------------------------------------------------------


def require_uuid(value: Any, parameter: str) -> str:
    """Return ``value`` as a canonical UUID string, or raise ValueError naming ``parameter``."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            pass
    raise ValueError(
        f"{parameter} must be a Browser Use id (a UUID such as '3c90c3cc-0d44-4b50-8888-8dd25736052a'), got {value!r}"
    )


#: The longest wait any parameter may ask for (30 days): longer is a typo, not a plan.
MAX_SECONDS = 30 * 24 * 3600.0


def check_seconds(value: Any, parameter: str, *, maximum: float = MAX_SECONDS) -> float:
    """Return ``value`` as seconds that are finite, positive and at most ``maximum``.

    :raises ValueError: naming ``parameter`` (NaN, infinity, zero, negatives and non-numbers).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= maximum:
        raise ValueError(f"{parameter} must be a positive number of seconds, at most {maximum:,.0f}; got {value!r}")
    return float(value)


#: The largest ``max_cost_usd`` accepted: a typo guard, far above any agent task.
MAX_COST_USD = 100_000.0


def check_cost_cap(value: Any, parameter: str) -> Decimal:
    """Return a budget in USD that is finite, positive and at most :data:`MAX_COST_USD`.

    :raises ValueError: naming ``parameter``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_COST_USD:
        raise ValueError(f"{parameter} must be a positive amount in USD, at most {MAX_COST_USD:,.0f}; got {value!r}")
    return Decimal(str(value))


def over_budget(view: Mapping[str, Any], max_cost_usd: float | None) -> Decimal | None:
    """The task's running ``cost`` when it has passed ``max_cost_usd``; None within it (or without a cap)."""
    if max_cost_usd is None:
        return None
    cost = to_decimal(view.get("cost"))
    return cost if cost > Decimal(str(max_cost_usd)) else None


def check_count(value: Any, parameter: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` if it is a whole number from ``minimum`` to ``maximum``.

    :raises ValueError: naming ``parameter``.
    """
    too_big = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_big:
        if maximum is not None:
            what = f"a whole number from {minimum} to {maximum}"
        elif minimum == 1:
            what = "a positive whole number"
        else:
            what = f"a whole number of at least {minimum}"
        raise ValueError(f"{parameter} must be {what}, got {value!r}")
    return value


# --- statuses ----------------------------------------------------------------------------------


def session_status(view: Mapping[str, Any]) -> SessionStatus | None:
    """The session's status, or None when the API sent one this version does not know."""
    try:
        return SessionStatus(view.get("status"))
    except ValueError:
        return None


def task_status(view: Mapping[str, Any], field: str = "status") -> TaskStatus | None:
    """The task's status (read from ``field``), or None when it is one this version does not know.

    An unknown status is never terminal: older and newer API versions have had others.
    """
    try:
        return TaskStatus(view.get(field))
    except ValueError:
        return None


# --- trimming answers for XCom -----------------------------------------------------------------


def without_access_urls(view: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a session view without the URLs that grant access to the browser."""
    return {key: value for key, value in view.items() if key not in ACCESS_URL_FIELDS}


def task_outputs(session_view: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each task of a session, in order: its id, status, output, success claims and cost."""
    return [{field: task.get(field) for field in TASK_OUTPUT_FIELDS} for task in session_view.get("tasks") or []]


#: The largest money or size figure believed; past it (or ``NaN``, ``Infinity``) an answer is garbage.
MAX_FIGURE = Decimal(10) ** 12


def to_decimal(value: Any) -> Decimal:
    """A decimal-string money or size field as a Decimal; missing, unreadable, not finite or
    past :data:`MAX_FIGURE` (an answer not to be trusted) counts as 0."""
    if value is None:
        return Decimal(0)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)
    return number if number.is_finite() and abs(number) <= MAX_FIGURE else Decimal(0)


def session_cost(session_view: Mapping[str, Any]) -> Decimal:
    """The session's total cost in USD: its tasks' costs plus the proxy cost."""
    tasks: Iterable[Mapping[str, Any]] = session_view.get("tasks") or []
    return sum((to_decimal(task.get("cost")) for task in tasks), to_decimal(session_view.get("proxyCost")))


# --- sessions busy with a task ----------------------------------------------------------------

#: Part of the ``detail`` of the 400 the API answers to a task created in a session that is
#: running another one (nothing was created: waiting and asking again is safe).
SESSION_BUSY_DETAIL = "already has a running task"


def is_session_busy(http_status: int | None, detail: str) -> bool:
    """Whether an error answer means the session is busy with another task (and will be free later)."""
    return http_status == 400 and SESSION_BUSY_DETAIL in detail


def running_task_id(session_view: Mapping[str, Any]) -> str | None:
    """The id of the task a session is running, if any."""
    running = (TaskStatus.CREATED, TaskStatus.STARTED)
    return next((str(t.get("id")) for t in session_view.get("tasks") or [] if task_status(t) in running), None)


# --- error bodies ------------------------------------------------------------------------------


def error_detail(body: Any) -> str:
    """Turn an error body into words: ``{"detail": str}``, a list of validation errors or one."""
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    if isinstance(detail, str):
        return detail
    if isinstance(detail, Mapping):
        if "msg" in detail:
            return _validation_error_text(detail)
        if "message" in detail:
            return str(detail["message"])
    if isinstance(detail, list) and detail:
        return "; ".join(_validation_error_text(item) if isinstance(item, Mapping) else str(item) for item in detail)
    return "" if detail is None else str(detail)


def _validation_error_text(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error.get("loc") or [] if part not in ("body", "query", "path")]
    field = ".".join(location)
    message = str(error.get("msg", "invalid value"))
    return f"{field}: {message}" if field else message


# --- tasks: success rules, outputs, tags -------------------------------------------------------


class SuccessPolicy(str, Enum):
    """When a ``finished`` task counts as a success (``failed`` and ``stopped`` never do).

    ``agent``: the agent's own ``isSuccess`` must not be false (the default).
    ``judge``: the judge's ``judgeVerdict`` must be true (run the task with ``judge=True``).
    ``lenient``: ``finished`` is enough.
    """

    AGENT = "agent"
    JUDGE = "judge"
    LENIENT = "lenient"


def success_policy(value: Any) -> SuccessPolicy:
    """A ``success_policy`` parameter as the enum, or ValueError naming the choices."""
    try:
        return SuccessPolicy(value)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in SuccessPolicy)
        raise ValueError(f"success_policy must be one of {choices}, got {value!r}") from None


def task_failure(view: Mapping[str, Any], policy: SuccessPolicy) -> str | None:
    """Why an ended task does not count as a success under ``policy``, or None when it does."""
    status = task_status(view)
    what = f"Browser Use task {view.get('id')} {view.get('status')}"
    if status in TASK_FAILED_STATUSES:
        reason = what
    elif status is not TaskStatus.FINISHED:
        return f"{what}: not an ended status"
    elif policy is SuccessPolicy.AGENT and view.get("isSuccess") is False:
        reason = f"{what} but the agent reports it did not succeed (isSuccess false)"
    elif policy is SuccessPolicy.JUDGE and view.get("judgeVerdict") is not True:
        reason = f"{what} but the judge's verdict is {view.get('judgeVerdict')!r}, not true"
    else:
        return None
    details = [f"output: {view.get('output')!r}"]
    if view.get("judgement"):
        details.append(f"judgement: {view.get('judgement')}")
    return f"{reason}; " + "; ".join(details)


def outcome(task_view: Mapping[str, Any]) -> str:
    """How an ended task came out, for the log: status, the success claims, cost."""
    return (
        f"Browser Use task {task_view.get('id')} {task_view.get('status')} (isSuccess {task_view.get('isSuccess')}, "
        f"judgeVerdict {task_view.get('judgeVerdict')}); cost ${to_decimal(task_view.get('cost'))}"
    )


def progress_facts(task_view: Mapping[str, Any]) -> str:
    """What a running task has done so far, from its full view: steps and cost."""
    return f"steps so far: {len(task_view.get('steps') or [])}, cost so far: ${to_decimal(task_view.get('cost'))}"


def task_without_steps(view: Mapping[str, Any]) -> dict[str, Any]:
    """The final task for XCom: everything but the (long) step list."""
    return {key: value for key, value in view.items() if key != "steps"}


def parse_output(output: str | None, schema: Mapping[str, Any] | None) -> Any:
    """The task's output: the text, or with a structured-output schema the parsed, checked JSON.

    :raises ValueError: the output is not JSON, or does not match the schema.
    """
    if schema is None:
        return output
    if output is None:
        raise ValueError("the task has no output, but a structured_output schema was given")
    try:
        value = json.loads(output)
    except ValueError as error:
        raise ValueError(f"the task's output is not valid JSON ({error}): {output[:200]!r}") from error
    import jsonschema  # lazy: see check_json_schema

    try:
        jsonschema.validate(value, dict(schema))
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise ValueError(
            f"the task's output does not match the structured_output schema at {where}: {error.message}"
        ) from error
    return value


def check_json_schema(schema: Mapping[str, Any], parameter: str) -> None:
    """Raise ValueError naming ``parameter`` when ``schema`` is not a valid JSON Schema."""
    # Imported here: Airflow 3.3's task SDK loads jsonschema anyway, but 3.1's does not, and it
    # costs a DAG file that never gives a structured_output tens of milliseconds.
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ValueError(f"{parameter} is not a valid JSON Schema: {error.message}") from error


#: Metadata keys with which the provider tags the tasks it starts, to find them again.
TAG_DAG_ID = "airflow_dag_id"
TAG_RUN_ID = "airflow_run_id"
TAG_TASK_ID = "airflow_task_id"
TAG_MAP_INDEX = "airflow_map_index"
TAG_TRY = "airflow_try"
#: The tags that name one Airflow task instance across its tries.
INSTANCE_TAGS = (TAG_DAG_ID, TAG_RUN_ID, TAG_TASK_ID, TAG_MAP_INDEX)
MAX_METADATA_PAIRS = 10


def is_tagged_for(task: Mapping[str, Any], tags: Mapping[str, str]) -> bool:
    """Whether a listed task carries every one of ``tags`` in its metadata."""
    metadata = task.get("metadata") or {}
    return all(metadata.get(key) == value for key, value in tags.items())


def session_ui_url(ui_base_url: str, session_id: str) -> str:
    """The session's page in the Browser Use web app (login required; grants no access)."""
    return f"{ui_base_url.rstrip('/')}/sessions/{session_id}"


def output_file_path(task_id: str, file_id: str) -> str:
    return f"/files/tasks/{task_id}/output-files/{file_id}"


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def request_body(fields: Mapping[str, Any], extra_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A request body from snake_case parameters (None left out) plus wire-named extra fields.

    ``extra_fields`` passes fields this version does not know straight through, and wins.
    """
    body = {camel_case(name): value for name, value in fields.items() if value is not None}
    body.update(extra_fields or {})
    return body


# --- forgotten sessions ------------------------------------------------------------------------


def started_by_the_provider(session_view: Mapping[str, Any]) -> bool:
    """Whether one of the session's tasks carries the provider's tags (sessions carry none)."""
    return any(TAG_DAG_ID in (task.get("metadata") or {}) for task in session_view.get("tasks") or [])


def idle_seconds(session_view: Mapping[str, Any], now: float) -> float | None:
    """Seconds since the session last did anything (started, or a task ended); None while a task runs."""
    if running_task_id(session_view) is not None:
        return None
    moments = [parse_timestamp(session_view.get("startedAt"))]
    moments += [parse_timestamp(task.get("finishedAt")) for task in session_view.get("tasks") or []]
    known = [moment for moment in moments if moment is not None]
    return now - max(known) if known else None


def age_seconds(session_view: Mapping[str, Any], now: float) -> float | None:
    started = parse_timestamp(session_view.get("startedAt"))
    return None if started is None else now - started


def browser_cost(browser_view: Mapping[str, Any]) -> Decimal:
    """A bare browser's cost so far in USD: the browser plus its proxy."""
    return to_decimal(browser_view.get("browserCost")) + to_decimal(browser_view.get("proxyCost"))
