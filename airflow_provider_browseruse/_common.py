"""What the operators and sensors share: XCom keys, parameter checks, deadlines, trigger events
and finishing an ended task. Airflow-side rules; the API's own rules live in ``_wire``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.sdk import ObjectStoragePath

from airflow_provider_browseruse import _wire
from airflow_provider_browseruse._compat import AirflowException, AirflowFailException
from airflow_provider_browseruse.exceptions import BrowserUseTaskError

if TYPE_CHECKING:
    from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook


class Log(Protocol):
    """What these helpers need of a logger: an operator's ``self.log`` (stdlib or structlog)."""

    def info(self, event: str, *args: Any) -> Any: ...

    def error(self, event: str, *args: Any) -> Any: ...


# --- XCom keys ---------------------------------------------------------------------------------

SESSION_ID_KEY = "session_id"
BROWSER_USE_TASK_ID_KEY = "browser_use_task_id"
#: The final task, without its steps.
TASK_KEY = "task"
#: For each task of a stopped session: id, status, output, success claims, cost.
TASK_OUTPUTS_KEY = "task_outputs"
OUTPUT_FILES_KEY = "output_files"
#: The session's page in the web app, read by the extra link (needs a login; grants nothing).
SESSION_URL_KEY = "browser_use_session_url"
#: What the remote work cost, in USD, as a number: a task's cost, or a stopped session's total.
COST_KEY = "cost_usd"


def push_cost(ti: Any, amount: Decimal) -> None:
    ti.xcom_push(key=COST_KEY, value=float(amount))


def over_budget_failure(
    browser_use_task_id: str, cost: Decimal, max_cost_usd: float, *, stopped: bool
) -> AirflowFailException:
    """The failure for a task past its budget: final, since a retry would pay again."""
    what = "it was stopped" if stopped else "stopping it FAILED: stop it by hand"
    return AirflowFailException(
        f"Browser Use task {browser_use_task_id} has cost ${cost}, past max_cost_usd={max_cost_usd}; {what}. "
        "Not retried: a retry would start a new task and pay again."
    )


def stop_task_quietly(hook: BrowserUseHook, log: Log, browser_use_task_id: str, *, stop_session: bool) -> bool:
    """Stop a task (and its session); log instead of raising. Returns whether it worked."""
    try:
        hook.stop_task(browser_use_task_id, stop_session=stop_session)
    except Exception as error:
        log.error("Could not stop Browser Use task %s (%s): stop it by hand.", browser_use_task_id, error)
        return False
    return True


# --- the label of a mapped task instance in the UI ---------------------------------------------

#: Default ``map_index_template`` of the task operators: their ``map_index_label``. It reads
#: rendered fields, so Airflow can show it before ``execute`` (a deferred task is never rendered
#: again on the worker that deferred it).
MAP_INDEX_TEMPLATE = "{{ task.map_index_label }}"
MAP_INDEX_LABEL_CHARS = 80


def map_index_label(start_url: Any, prompt: Any) -> str:
    """The start URL (without query, fragment or credentials: they may carry tokens), else the
    prompt, on one line and at most ``MAP_INDEX_LABEL_CHARS``; empty while neither is known."""
    if isinstance(start_url, str) and start_url.strip():
        parts = urlsplit(start_url.strip())
        text = f"{parts.scheme}://{parts.hostname}{parts.path}" if parts.hostname else start_url
    elif isinstance(prompt, str):
        text = prompt
    else:
        return ""
    label = " ".join(text.split())
    return label if len(label) <= MAP_INDEX_LABEL_CHARS else label[: MAP_INDEX_LABEL_CHARS - 1] + "…"


# --- parameters --------------------------------------------------------------------------------


def as_seconds(value: Any) -> Any:
    """A timedelta as seconds; anything else as given (checked by ``_wire.check_seconds``)."""
    return value.total_seconds() if isinstance(value, timedelta) else value


def check_id_if_known(value: Any, parameter: str) -> None:
    """Check an id at DAG parsing when it is already a value, not a template or an XComArg.

    :raises ValueError: naming ``parameter``.
    """
    if isinstance(value, str) and "{{" not in value:
        _wire.require_uuid(value, parameter)


def check_string_mapping(value: Any, parameter: str) -> None:
    """Check a mapping the API wants as strings to strings (values may hold Jinja).

    The message names the type, never the value: ``secrets`` go through here.

    :raises ValueError: naming ``parameter``.
    """
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ValueError(f"{parameter} must be a mapping of strings to strings, got a {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValueError(f"{parameter}[{key!r}] must be a string, got a {type(item).__name__}")


def check_string_list(value: Any, parameter: str) -> None:
    """Check a list of strings; a lone string is refused (it would become a list of letters).

    :raises ValueError: naming ``parameter``.
    """
    if value is None:
        return
    if isinstance(value, str):
        raise ValueError(f"{parameter} must be a list of strings, got the string {value!r}: write [{value!r}]")
    if not isinstance(value, Sequence) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{parameter} must be a list of strings, got {value!r}")


def require_id(value: Any, parameter: str) -> str:
    """Return a rendered id as a UUID string.

    :raises AirflowFailException: naming ``parameter``; a bad id fails the task without retries.
    """
    try:
        return _wire.require_uuid(value, parameter)
    except ValueError as error:
        raise AirflowFailException(str(error)) from error


def default_deferrable() -> bool:
    """Return Airflow's ``[operators] default_deferrable``, the default of every ``deferrable=``."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def schema_of(structured_output: Any) -> dict[str, Any] | None:
    """Return the JSON Schema of a ``structured_output`` parameter: a dict, or a pydantic model class.

    :raises ValueError: anything else.
    """
    if structured_output is None:
        return None
    if isinstance(structured_output, type) and hasattr(structured_output, "model_json_schema"):
        return structured_output.model_json_schema()
    if isinstance(structured_output, Mapping):
        return dict(structured_output)
    raise ValueError(
        f"structured_output must be a JSON Schema dict or a pydantic model class, got {structured_output!r}"
    )


# --- waiting -----------------------------------------------------------------------------------


def wall_clock_deadline(timeout: float, execution_timeout: timedelta | None, ti: Any) -> float:
    """Return when a deferred wait must end (``time.time()``).

    That is ``timeout`` from now, or ``execution_timeout`` from the start of this try if that
    comes first. Airflow does not apply ``execution_timeout`` to a deferral, and its defer
    timeout skips ``execute_complete``, so the trigger itself must fire a timeout event in time
    for the remote work to be stopped.
    """
    deadline = time.time() + timeout
    if execution_timeout is not None:
        started = getattr(ti, "start_date", None)
        begin = started.timestamp() if started is not None else time.time()
        deadline = min(deadline, begin + execution_timeout.total_seconds())
    return deadline


#: Seconds between two "still running" lines in a task's log while it waits.
PROGRESS_EVERY = 300.0


class Progress:
    """When a long wait should say again that it is still going: every :data:`PROGRESS_EVERY` s."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._next = self.started + PROGRESS_EVERY

    def due(self) -> bool:
        """Whether it is time to say so (then not again for another interval)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + PROGRESS_EVERY
        return True

    def __str__(self) -> str:
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        return f"{minutes} min {seconds} s so far" if minutes else f"{seconds} s so far"


# --- trigger events ----------------------------------------------------------------------------

TASK_EVENTS = frozenset({"ended", "over_budget", "timeout", "error"})
SESSION_EVENTS = frozenset({"stopped", "timeout", "error"})


def _checked_event(event: Any, id_key: str, expected_id: str, kinds: frozenset[str]) -> dict[str, Any]:
    if not isinstance(event, Mapping) or event.get("event") not in kinds:
        raise AirflowException(f"Unexpected event from the Browser Use trigger: {event!r}")
    if event.get(id_key) != expected_id:
        raise AirflowException(
            f"The trigger reported on {id_key} {event.get(id_key)!r}, not {expected_id!r}: {event!r}"
        )
    return dict(event)


#: The payload of Airflow's TaskSuccessEvent, as ``execute_complete`` receives it when a worker
#: resumes a task its trigger ended.
TRIGGER_SUCCESS_PAYLOAD = "success"


def task_event(event: Any, expected_task_id: str) -> dict[str, Any]:
    """Return a TaskStatusTrigger event once checked: a known kind, about ``expected_task_id``,
    and for ``ended`` a terminal status.

    :raises AirflowException: any other event.
    """
    if event == TRIGGER_SUCCESS_PAYLOAD:
        # The trigger ended the task itself, yet a worker resumed it (dag.test() does): the task
        # finished well, so finish it here as for ``ended``.
        return {"event": "ended", "browser_use_task_id": expected_task_id, "task_status": "finished"}
    checked = _checked_event(event, "browser_use_task_id", expected_task_id, TASK_EVENTS)
    if checked["event"] == "ended" and _wire.task_status(checked, "task_status") not in _wire.TASK_TERMINAL_STATUSES:
        raise AirflowException(f"The trigger reported an end with status {checked.get('task_status')!r}: {event!r}")
    return checked


def session_event(event: Any, expected_session_id: str) -> dict[str, Any]:
    """Return a SessionStatusTrigger event once checked: a known kind, about ``expected_session_id``.

    :raises AirflowException: any other event.
    """
    return _checked_event(event, "session_id", expected_session_id, SESSION_EVENTS)


# --- waiting for a free session slot ----------------------------------------------------------

#: The longest pause between two creates refused at the session cap (a Retry-After may ask more).
CAP_BACKOFF_MAX = 60.0


def session_cap_pause(error: BaseException, refusals: int, waited: float, remaining: float, log: Log) -> float:
    """Seconds to wait before asking again after a create the session cap refused (429).

    Nothing was created by a 429, so asking again is safe: with the API's ``Retry-After``, else
    an exponential backoff with jitter, never past the operator's own ``timeout``.

    :raises AirflowException: no time is left.
    """
    if remaining <= 0:
        raise AirflowException(
            f"The account's concurrent-session cap stayed full for {waited:.0f} s (the timeout): nothing was "
            "started. Size an Airflow pool to the cap (README: fan-out) so that tasks queue in Airflow."
        ) from error
    retry_after = getattr(error, "retry_after", None)
    pause = retry_after if retry_after else min(CAP_BACKOFF_MAX, 2.0**refusals) * random.uniform(0.5, 1.0)
    pause = min(pause, remaining)
    log.info(
        "The account's concurrent-session cap is full (429; nothing was created): waited %.0f s so far, "
        "asking again in %.1f s.",
        waited,
        pause,
    )
    return pause


# --- publishing what happened ------------------------------------------------------------------


def reserve_session_link(ti: Any) -> None:
    """Push an empty session URL before anything runs.

    Airflow reads every extra link when a try ends, even one that failed before a session
    existed; a missing XCom there is logged as an error. An empty one is simply no link.
    """
    ti.xcom_push(key=SESSION_URL_KEY, value="")


def push_session(ti: Any, hook: BrowserUseHook, session_id: str) -> None:
    """Push the session id and its page's URL (for the extra link) as soon as they are known."""
    ti.xcom_push(key=SESSION_ID_KEY, value=session_id)
    ti.xcom_push(key=SESSION_URL_KEY, value=hook.session_ui_url(session_id))


def publish_session(ti: Any, log: Log, view: Mapping[str, Any]) -> dict[str, Any]:
    """Push ``task_outputs``, log the session's cost, and return the view fit for XCom."""
    outputs = _wire.task_outputs(view)
    ti.xcom_push(key=TASK_OUTPUTS_KEY, value=outputs)
    push_cost(ti, _wire.session_cost(view))
    log.info(
        "Session %s is %s: %d task(s), total cost $%s",
        view.get("id"),
        view.get("status"),
        len(outputs),
        _wire.session_cost(view),
    )
    return _wire.without_access_urls(view)


@dataclass(frozen=True)
class FinishedTask:
    """A task that ended as its success policy wants.

    :param output: the text, or the parsed and checked JSON of a structured output.
    :param task: the final task as the API gave it, steps included.
    :param output_files: where its files were saved (empty unless ``output_files_path``).
    """

    output: Any
    task: dict[str, Any]
    output_files: list[str]

    def asset_extra(self) -> dict[str, Any]:
        """What an outlet's asset event carries: ids, status, cost, verdicts and file paths (no contents)."""
        return {
            BROWSER_USE_TASK_ID_KEY: self.task.get("id"),
            SESSION_ID_KEY: self.task.get("sessionId"),
            "status": self.task.get("status"),
            "cost_usd": float(_wire.to_decimal(self.task.get("cost"))),
            "is_success": self.task.get("isSuccess"),
            "judge_verdict": self.task.get("judgeVerdict"),
            OUTPUT_FILES_KEY: list(self.output_files),
        }


def annotate_outlets(context: Any, outlets: Sequence[Any], finished: FinishedTask, log: Log) -> None:
    """Put the finished task's facts in the ``extra`` of each outlet asset's event."""
    from airflow.sdk import Asset

    events = context.get("outlet_events")
    for outlet in outlets:
        if events is None or not isinstance(outlet, Asset):
            continue  # an alias names no event of its own to annotate
        events[outlet].extra.update(finished.asset_extra())
        log.info("Asset event for %s carries task %s's facts.", outlet.uri, finished.task.get("id"))


def finish_task(
    hook: BrowserUseHook,
    ti: Any,
    log: Log,
    browser_use_task_id: str,
    *,
    success_policy: _wire.SuccessPolicy,
    structured_output: Any,
    output_files_path: Any,
) -> FinishedTask:
    """Fetch an ended task once, push it to XCom, judge it, and return it with its output.

    The output is the text, or with ``structured_output`` the parsed JSON checked against the
    schema (a pydantic model class is validated and given back as a dict). With
    ``output_files_path`` the task's files are saved there and their paths pushed.

    :raises BrowserUseTaskError: the task failed, was stopped, fails ``success_policy``, or its
        output does not match ``structured_output``.
    """
    task = hook.get_task(browser_use_task_id)
    ti.xcom_push(key=TASK_KEY, value=_wire.task_without_steps(task))
    push_cost(ti, _wire.to_decimal(task.get("cost")))
    push_session(ti, hook, str(task["sessionId"]))
    log.info("%s.", _wire.outcome(task))
    failure = _wire.task_failure(task, success_policy)
    if failure is not None:
        raise BrowserUseTaskError(failure, task)
    output = _parsed_output(task, structured_output)
    paths: list[str] = []
    if output_files_path is not None:
        paths = download_output_files(hook, log, browser_use_task_id, task, output_files_path)
        ti.xcom_push(key=OUTPUT_FILES_KEY, value=paths)
    return FinishedTask(output=output, task=task, output_files=paths)


def _parsed_output(task: Mapping[str, Any], structured_output: Any) -> Any:
    try:
        output = _wire.parse_output(task.get("output"), schema_of(structured_output))
        if isinstance(structured_output, type):
            model: Any = structured_output
            output = model.model_validate(output).model_dump(mode="json")
    except ValueError as error:  # pydantic's ValidationError is a ValueError too
        raise BrowserUseTaskError(f"Browser Use task {task.get('id')}: {error}", task) from error
    return output


#: The longest output file name kept, in UTF-8 bytes (file systems allow 255; room for a prefix).
MAX_FILE_NAME_BYTES = 160


def download_output_files(
    hook: BrowserUseHook, log: Log, browser_use_task_id: str, task: Mapping[str, Any], target: Any
) -> list[str]:
    """Download the task's output files under ``target``/<task id>/ and return their paths.

    The folder is named after the id the caller checked, never one the API sent, and every file
    name is made safe before the first download (see :func:`output_file_names`).
    """
    names = output_file_names(task.get("outputFiles") or [])
    folder = ObjectStoragePath(str(target)) / browser_use_task_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_id, name in names:
        answer = hook.get_output_file(browser_use_task_id, file_id)
        path = folder / name
        with path.open("wb") as destination:
            size = hook.download(answer["downloadUrl"], destination, call=f"download({name})")
        log.info("Saved output file %s (%d bytes) to %s", name, size, path)
        paths.append(str(path))
    return paths


def output_file_names(files: Sequence[Any]) -> list[tuple[str, str]]:
    """Return ``(file id, name)`` for each output file: one path component each, all distinct.

    Separators and control characters become ``_``; a long name is shortened, keeping its
    extension; a name taken already (in any case) gets the file id in front.

    :raises AirflowException: a file without a valid id, or whose name is empty, ``.`` or ``..``.
    """
    names: list[tuple[str, str]] = []
    taken: set[str] = set()
    for file in files:
        given = file.get("fileName") if isinstance(file, Mapping) else None
        try:
            file_id = _wire.require_uuid(file.get("id") if isinstance(file, Mapping) else None, "outputFiles[].id")
        except ValueError as error:
            raise AirflowException(f"The API listed an output file that cannot be fetched: {error}") from None
        name = _one_component(str(given or ""))
        if name.strip(".") == "":
            raise AirflowException(f"Output file {file_id} has no name it could be saved under: {given!r}")
        name = _shortened(name)
        if name.casefold() in taken:
            name = f"{file_id}-{name}"
        taken.add(name.casefold())
        names.append((file_id, name))
    return names


def _one_component(text: str) -> str:
    """``text`` as one path component: separators and control characters become ``_``."""
    return "".join("_" if char in "/\\" or not char.isprintable() else char for char in text).strip()


def _shortened(name: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    extension = dot + suffix if stem and len(suffix) <= 16 else ""
    head = name[: len(name) - len(extension)]
    while len((head + extension).encode()) > MAX_FILE_NAME_BYTES:
        head = head[:-1]
    return head + extension


# --- API v4 runs -------------------------------------------------------------------------------

RUN_ID_KEY = "run_id"
WORKSPACE_ID_KEY = "workspace_id"
#: The final run, trimmed (``_wire_v4.run_for_xcom``).
RUN_KEY = "run"
#: The v4 session's cost so far, by kind (LLM, search, browser, proxy, total), as decimal strings.
SESSION_COST_KEY = "session_cost"
RUN_EVENTS = frozenset({"ended", "over_budget", "timeout", "error"})


def run_event(event: Any, expected_run_id: str) -> dict[str, Any]:
    """Return an AgentRunTrigger event once checked: a known kind, about ``expected_run_id``, and
    for ``ended`` a terminal status.

    :raises AirflowException: any other event.
    """
    from airflow_provider_browseruse import _wire_v4

    checked = _checked_event(event, RUN_ID_KEY, expected_run_id, RUN_EVENTS)
    if checked["event"] == "ended" and not _wire_v4.is_terminal({"status": checked.get("run_status")}):
        raise AirflowException(f"The trigger reported an end with status {checked.get('run_status')!r}: {event!r}")
    return checked


def push_agent_session(ti: Any, hook: BrowserUseHook, session_id: str) -> None:
    """Push a v4 session's id and its page's URL (for the extra link)."""
    ti.xcom_push(key=SESSION_ID_KEY, value=session_id)
    ti.xcom_push(key=SESSION_URL_KEY, value=hook.agent_session_ui_url(session_id))


def over_budget_run_failure(
    run_id: str, cost: Decimal, cap: float, *, cancelled: bool, parameter: str = "max_cost_usd"
) -> AirflowFailException:
    """The failure for a run past its budget (``parameter``): final, since a retry would pay again."""
    what = "it was ended" if cancelled else "cancelling it FAILED: cancel it by hand"
    spender = "Its session" if parameter == "session_max_cost_usd" else "It"
    return AirflowFailException(
        f"Browser Use run {run_id} is over budget: {spender} has cost ${cost}, past {parameter}={cap}; {what}. "
        "Not retried: a retry would start a new run and pay again."
    )


def stop_run_quietly(hook: BrowserUseHook, log: Log, run_id: str | None, session_id: str | None) -> bool:
    """Cancel a v4 run (if any) and, given its session (one this task started), stop the
    session's browsers.

    Logs instead of raising; returns whether everything worked.
    """
    worked = True
    try:
        if run_id is not None:
            hook.cancel_run(run_id)
    except Exception as error:
        log.error("Could not cancel Browser Use run %s (%s): cancel it by hand.", run_id, error)
        worked = False
    if session_id is not None:
        worked = stop_browsers_quietly(hook, log, session_id) and worked
    return worked


def stop_browsers_quietly(hook: BrowserUseHook, log: Log, session_id: str) -> bool:
    """Stop a v4 session's live browsers; logs instead of raising. Returns whether it worked."""
    try:
        stopped = hook.stop_agent_session_browsers(session_id)
    except Exception as error:
        log.error("Could not stop the browser of Browser Use session %s (%s): stop it by hand.", session_id, error)
        return False
    if stopped:
        log.info("Stopped the browser of Browser Use session %s (it bills while it is up).", session_id)
    return True


def parsed_run_output(run: Mapping[str, Any], structured_output: Any) -> Any:
    """A completed run's answer: the text, or with ``structured_output`` the JSON checked against it.

    The server's own ``output`` (with an ``outputSchema``) is checked again here: a schema the
    server could not enforce must not reach a downstream task unchecked.

    :raises ValueError: the answer is not JSON, or does not match the schema.
    """
    from airflow_provider_browseruse import _wire_v4

    schema = schema_of(structured_output)
    output = _wire.parse_output(_wire_v4.run_output_text(run), schema)
    if isinstance(structured_output, type):
        model: Any = structured_output
        output = model.model_validate(output).model_dump(mode="json")
    return output


def workspace_file_names(
    files: Sequence[Any], *, skip_prefix: str = "uploads/", since: float | None = None
) -> list[tuple[str, str]]:
    """Return ``(path, name)`` for each workspace file a run wrote: not the uploads, and with
    ``since``, not the files last changed before it (an earlier run's). Each name is one safe
    path component (folders become ``_``), all distinct in any case (a number in front of one
    taken, until it is free).

    :raises AirflowException: a listed file without a usable path.
    """
    names: list[tuple[str, str]] = []
    taken: set[str] = set()
    for file in files:
        path = file.get("path") if isinstance(file, Mapping) else None
        if not isinstance(path, str) or path.startswith(skip_prefix):
            continue
        changed = _wire.parse_timestamp(file.get("lastModified"))
        if since is not None and changed is not None and changed < since - 1.0:
            continue
        name = _shortened(_one_component(path))
        if name.strip("._") == "":
            raise AirflowException(f"Workspace file {path!r} has no name it could be saved under.")
        candidate, number = name, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{number}-{name}"
        taken.add(candidate.casefold())
        names.append((path, candidate))
    return names


def copy_workspace_files(
    hook: BrowserUseHook, log: Log, run_id: str, workspace_id: str, target: Any, *, since: float | None = None
) -> list[str]:
    """Copy what a run wrote to its workspace under ``target``/<run id>/; return the paths.

    Each file's download URL is asked for just before its download (they expire within a
    minute); URLs are never logged; a file whose download fails is not left behind half written.
    """
    names = workspace_file_names(hook.list_workspace_files(workspace_id), since=since)
    folder = ObjectStoragePath(str(target)) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for path, name in names:
        listed = hook.list_workspace_files(workspace_id, prefix=path, include_urls=True)
        url = next((f.get("url") for f in listed if f.get("path") == path), None)
        if not isinstance(url, str):
            raise AirflowException(f"The API gave no download URL for workspace file {path!r}.")
        destination_path = folder / name
        try:
            with destination_path.open("wb") as destination:
                size = hook.download(url, destination, call=f"download({name})")
        except BaseException:
            destination_path.unlink(missing_ok=True)
            raise
        log.info("Saved workspace file %s (%d bytes) to %s", path, size, destination_path)
        paths.append(str(destination_path))
    return paths
