"""Browser Use API v4 on the wire: runs, agent sessions, workspaces; paths, statuses, parsing.

v4 rules live here as v2's live in ``_wire`` (whose input checks, money parsing and output
parsing v4 shares). A v4 *run* is one agent turn; a v4 *session* is a conversation whose runs
share the agent's memory, a workspace and a live browser (a ``/browsers`` entry whose
``agentSessionId`` is the session's id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

from airflow_provider_browseruse import _wire


class RunStatus(str, Enum):
    """Status of a v4 run (and of a v4 session: that of its latest run)."""

    QUEUED = "queued"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


RUN_TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
RUN_FAILED_STATUSES = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})

#: ``keepAlive``: seconds the session's browser stays open (and bills) after its last run.
KEEP_ALIVE_MIN = 120
KEEP_ALIVE_MAX = 14_400
#: The most files one run may have attached.
MAX_ATTACHED_FILES = 20
#: The largest file one upload takes (50 MiB); an empty one is refused too.
MAX_UPLOAD_BYTES = 50 << 20
#: Seconds a judge's verdict may take to land after its run ended, before it counts as missing.
JUDGEMENT_WAIT = 120.0
#: What a 403 means on every v4 route.
ZERO_DATA_RETENTION = (
    "the project has Zero Data Retention enabled, where API v4 is not supported ({detail}); "
    "use the v2 operators for this project, or turn ZDR off"
)

# --- paths -------------------------------------------------------------------------------------

RUNS_PATH = "/runs"
SESSIONS_PATH = "/sessions"
WORKSPACES_PATH = "/workspaces"
BROWSERS_PATH = "/browsers"


def run_path(run_id: str, tail: str = "") -> str:
    """``/runs/{id}`` and below it (``/status``, ``/cancel``, ``/events``, ``/attachments``)."""
    return f"{RUNS_PATH}/{run_id}{tail}"


def session_path(session_id: str, tail: str = "") -> str:
    """``/sessions/{id}`` and below it (``/cost``, ``/cost-cap``, ``/queue``, ``/purge``)."""
    return f"{SESSIONS_PATH}/{session_id}{tail}"


def workspace_path(workspace_id: str, tail: str = "") -> str:
    """``/workspaces/{id}`` and below it (``/files``, ``/files/upload``)."""
    return f"{WORKSPACES_PATH}/{workspace_id}{tail}"


# --- statuses and outcomes ---------------------------------------------------------------------


def run_status(view: Mapping[str, Any]) -> RunStatus | None:
    """The run's status, or None when it is one this version does not know (never terminal)."""
    try:
        return RunStatus(view.get("status"))
    except ValueError:
        return None


def is_terminal(view: Mapping[str, Any]) -> bool:
    return run_status(view) in RUN_TERMINAL_STATUSES


def run_cost(run: Mapping[str, Any]) -> Decimal:
    """What the run has cost so far in USD (the model's tokens; browser time is billed apart)."""
    return _wire.to_decimal(run.get("totalCostUsd"))


def over_budget(run: Mapping[str, Any], max_cost_usd: float | None) -> Decimal | None:
    """The run's cost when it has passed ``max_cost_usd``; None within it (or without a cap)."""
    if max_cost_usd is None:
        return None
    cost = run_cost(run)
    return cost if cost > Decimal(str(max_cost_usd)) else None


def judge_verdict(run: Mapping[str, Any]) -> bool | None:
    """The judge's verdict (``judgement.verdict``), or None while it has not landed."""
    judgement = run.get("judgement")
    verdict = judgement.get("verdict") if isinstance(judgement, Mapping) else None
    return verdict if isinstance(verdict, bool) else None


def awaits_judgement(run: Mapping[str, Any], policy: _wire.SuccessPolicy) -> bool:
    """Whether a completed run's verdict is still to land (the judge works after the run ends)."""
    return policy is _wire.SuccessPolicy.JUDGE and run_status(run) is RunStatus.COMPLETED and not run.get("judgement")


def run_failure(run: Mapping[str, Any], policy: _wire.SuccessPolicy) -> str | None:
    """Why an ended run does not count as a success under ``policy``, or None when it does.

    v4 has no agent's own success claim: ``agent`` and ``lenient`` need ``completed``;
    ``judge`` also needs the judge's verdict to be true.
    """
    status = run_status(run)
    what = f"Browser Use run {run.get('id')} {run.get('status')}"
    if status in RUN_FAILED_STATUSES:
        return f"{what}: {run.get('error') or 'no error given'}"
    if status is not RunStatus.COMPLETED:
        return f"{what}: not an ended status"
    if policy is _wire.SuccessPolicy.JUDGE and judge_verdict(run) is not True:
        return f"{what} but the judge's verdict is {judge_verdict(run)!r}, not true; judgement: {run.get('judgement')}"
    return None


def outcome(run: Mapping[str, Any]) -> str:
    """How an ended run came out, for the log: status, verdict, cost and tokens."""
    return (
        f"Browser Use run {run.get('id')} {run.get('status')} (judge's verdict {judge_verdict(run)}); "
        f"cost ${run_cost(run)}, tokens {run.get('totalInputTokens')} in / {run.get('totalOutputTokens')} out"
    )


#: What the final run keeps in XCom: everything but what may be long or grants access.
RUN_XCOM_FIELDS = (
    "id",
    "status",
    "model",
    "sessionId",
    "workspaceId",
    "result",
    "output",
    "error",
    "judgement",
    "totalCostUsd",
    "totalInputTokens",
    "totalOutputTokens",
    "createdAt",
    "updatedAt",
)


def run_for_xcom(run: Mapping[str, Any]) -> dict[str, Any]:
    return {field: run.get(field) for field in RUN_XCOM_FIELDS if field in run}


def run_output_text(run: Mapping[str, Any]) -> str | None:
    """The run's answer as text: the server-parsed ``output`` (with an ``outputSchema``) as JSON,
    else ``result``."""
    import json

    if run.get("output") is not None:
        return json.dumps(run["output"])
    result = run.get("result")
    return result if isinstance(result, str) else None


# --- finding what a task instance started ------------------------------------------------------

#: Workspace names start so; the rest identifies one Airflow task instance (a hash: names are
#: short, and dag and run ids may be long).
WORKSPACE_TAG_PREFIX = "airflow-"


def instance_workspace_name(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The name of the workspace a task instance's run works in: the same for all its tries,
    different for any other instance, at most 100 characters (the API's limit)."""
    digest = hashlib.sha256(f"{dag_id}\x00{run_id}\x00{task_id}\x00{map_index}".encode()).hexdigest()[:24]
    readable = f"{dag_id}.{task_id}"[:60]
    return f"{WORKSPACE_TAG_PREFIX}{readable}-{digest}"


# --- structured output -------------------------------------------------------------------------


#: How a repair prompt starts: a retry recognises the repairs of its conversation by it.
REPAIR_PROMPT_START = "Your final answer did not match the required JSON Schema: "


def repair_prompt(error: str, schema: Mapping[str, Any]) -> str:
    """The follow-up that asks the agent to answer again in the shape it was given."""
    import json

    return (
        f"{REPAIR_PROMPT_START}"
        f"{error}. Answer again with only a JSON value that matches this schema, and nothing else: "
        f"{json.dumps(schema, separators=(',', ':'))}"
    )
