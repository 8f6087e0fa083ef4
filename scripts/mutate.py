"""`make mutate`: break one promise of the README at a time and check that a test notices.

Each mutant is one small edit of the package (a line a careless change could plausibly make),
run against the tests that hold that promise. The table says which test killed it, or SURVIVED;
any survivor fails the run. A small list of patches rather than a mutation tool: each mutant is
chosen for a promise, runs only the tests that should catch it (about two minutes for all), and
reads as a sentence in review. The package is restored after each mutant, whatever happens.

    .venv/bin/python scripts/mutate.py [--only NAME]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "airflow_provider_browseruse"


@dataclass(frozen=True)
class Mutant:
    name: str
    promise: str
    path: str  # below the package
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "no stop on give-up",
        "giving up stops the remote task",
        "operators/browser_use.py",
        "            self.hook.stop_task(task_id, stop_session=self._owns_session)",
        "            pass",
        (
            "tests/test_operators.py::test_run_task_timeout_stops_the_remote_task_and_its_one_off_session",
            "tests/test_operators.py::test_run_task_on_kill_stops_the_remote_task",
        ),
    ),
    Mutant(
        "stop a passed-in session",
        "a session you passed in is left to its own teardown",
        "operators/browser_use.py",
        "            self.hook.stop_task(task_id, stop_session=self._owns_session)",
        "            self.hook.stop_task(task_id, stop_session=True)",
        ("tests/test_operators.py::test_run_task_timeout_leaves_a_given_session_to_its_owner",),
    ),
    Mutant(
        "deferred kill stops a passed-in session",
        "a deferred kill leaves a session you passed in",
        "triggers/browser_use.py",
        "await self.hook().stop_task(self.watched_id, stop_session=self.owns_session)",
        "await self.hook().stop_task(self.watched_id, stop_session=True)",
        ("tests/test_promises.py::test_a_deferred_kill_leaves_a_session_the_user_passed_in",),
    ),
    Mutant(
        "resend an ambiguous create",
        "a create is never resent after an ambiguous failure",
        "_retry.py",
        '        if error.kind in ("interrupted", "malformed"):\n            return resend_safe',
        '        if error.kind in ("interrupted", "malformed"):\n            return True',
        ("tests/test_hook.py", "tests/test_operators.py::test_an_ambiguous_create_is_reconciled_not_resent"),
    ),
    Mutant(
        "retry replaces a finished task",
        "an Airflow retry uses the task its earlier try finished",
        "operators/browser_use.py",
        "if task is None or _wire.task_status(task) in _wire.TASK_FAILED_STATUSES:",
        "if task is None or _wire.task_status(task) in _wire.TASK_TERMINAL_STATUSES:",
        ("tests/test_promises.py::test_a_retry_uses_the_task_an_earlier_try_finished",),
    ),
    Mutant(
        "deadline counted in polls",
        "trigger deadlines are wall-clock",
        "triggers/browser_use.py",
        "import time\n",
        "import time as _real_time\n\n\nclass _PollClock:\n    now = _real_time.time()\n\n"
        "    def time(self) -> float:\n        self.now += 0.01\n        return self.now\n\n\ntime = _PollClock()\n",
        ("tests/test_promises.py::test_a_trigger_deadline_is_read_from_the_clock_not_counted_in_polls",),
    ),
    Mutant(
        "events about another task accepted",
        "an event about another task fails the task",
        "_common.py",
        "    if event.get(id_key) != expected_id:",
        "    if False:",
        ("tests/test_promises.py::test_execute_complete_refuses_an_ended_event_about_another_task",),
    ),
    Mutant(
        "secrets not masked",
        "task secrets are masked in logs",
        "operators/browser_use.py",
        "            mask_secret(value)",
        "            pass",
        ("tests/test_operators.py::test_secrets_are_sent_masked_and_never_logged",),
    ),
    Mutant(
        "echoed key not redacted",
        "an echoed key or secret goes no further",
        "hooks/browser_use.py",
        '            text = text.replace(secret, "***")',
        "            pass",
        (
            "tests/test_hostile.py::test_an_echoed_key_is_redacted",
            "tests/test_hostile.py::test_an_echoed_key_never_reaches_a_trigger_event",
        ),
    ),
    Mutant(
        "access URLs kept",
        "live, share and recording URLs never go to XCom",
        "_wire.py",
        "    return {key: value for key, value in view.items() if key not in ACCESS_URL_FIELDS}",
        "    return dict(view)",
        ("tests/test_operators.py::test_stop_session_sends_stop_and_publishes_outputs",),
    ),
    Mutant(
        "agent policy ignores isSuccess",
        "success_policy='agent' fails a task the agent says did not succeed",
        "_wire.py",
        'elif policy is SuccessPolicy.AGENT and view.get("isSuccess") is False:',
        'elif policy is SuccessPolicy.AGENT and view.get("isSuccess") is None:',
        ("tests/test_operators.py::test_run_task_success_policy",),
    ),
    Mutant(
        "schema not checked",
        "a structured output that does not match its schema fails the task",
        "_wire.py",
        "        jsonschema.validate(value, dict(schema))",
        "        pass",
        ("tests/test_operators.py::test_run_task_bad_structured_output_fails_clearly",),
    ),
    Mutant(
        "redirects followed",
        "no redirect is followed",
        "hooks/browser_use.py",
        "timeout=self.timeout, stream=True, allow_redirects=False",
        "timeout=self.timeout, stream=True, allow_redirects=True",
        ("tests/test_hostile.py::test_no_redirect_is_followed",),
    ),
    Mutant(
        "no size cap",
        "an answer over 8 MiB is refused unread",
        "hooks/browser_use.py",
        "MAX_ANSWER_BYTES = 8 << 20",
        "MAX_ANSWER_BYTES = 8 << 40",
        ("tests/test_hostile.py::test_an_oversized_answer_is_refused_unread",),
    ),
    Mutant(
        "no deadline per attempt",
        "a dripping answer ends at the attempt's deadline",
        "hooks/browser_use.py",
        "    token = _watchdog.schedule(seconds, cut)",
        "    token = _watchdog.schedule(seconds * 1000, cut)",
        ("tests/test_hostile.py::test_a_dripping_body_ends_at_the_attempts_deadline",),
    ),
    Mutant(
        "a crash kills the trigger",
        "nothing a server answers can kill a trigger",
        "triggers/browser_use.py",
        "        except Exception as error:\n            self.log.exception(",
        "        except ZeroDivisionError as error:\n            self.log.exception(",
        ("tests/test_hostile.py::test_an_unexpected_exception_is_an_error_event",),
    ),
    Mutant(
        "unsafe file names",
        "output files cannot escape their folder",
        "_common.py",
        '"_" if char in "/\\\\" or not char.isprintable() else char',
        "char",
        (
            "tests/test_operators.py::test_output_file_names_are_made_safe_and_distinct",
            "tests/test_operators_v4.py::test_workspace_file_names_are_made_safe_and_distinct",
        ),
    ),
    Mutant(
        "busy session fails",
        "a task for a busy session waits for it",
        "_wire.py",
        "    return http_status == 400 and SESSION_BUSY_DETAIL in detail",
        "    return False",
        ("tests/test_first_hour.py::test_a_task_for_a_busy_session_waits_for_it_then_starts",),
    ),
    Mutant(
        "NaN seconds accepted",
        "bad numbers fail first, naming the parameter",
        "_wire.py",
        "not 0 < value <= maximum:",
        "value <= 0 or value > maximum:",
        ("tests/test_bad_input.py",),
    ),
    Mutant(
        "mapped resume reads every id",
        "a deferred mapped task comes back to its own remote task",
        "operators/browser_use.py",
        "key=_common.BROWSER_USE_TASK_ID_KEY, map_indexes=ti.map_index)",
        "key=_common.BROWSER_USE_TASK_ID_KEY)",
        ("tests/test_triggers.py::test_a_deferred_instance_resumes_on_its_own_task",),
    ),
    Mutant(
        "triggerer ends a failure",
        "only a task that ended well ends in the triggerer",
        "triggers/browser_use.py",
        "        if _wire.task_failure(task, self.success_policy) is not None:\n            return None  # the worker",
        "        if False:\n            return None  # the worker",
        ("tests/test_triggers.py::test_anything_but_a_success_goes_back_to_a_worker",),
    ),
    Mutant(
        "triggerer drops asset events",
        "outlets get their asset events",
        "operators/browser_use.py",
        "            and not self.outlets\n",
        "",
        ("tests/test_triggers.py::test_the_operator_ends_in_the_triggerer_only_when_no_worker_is_needed",),
    ),
    Mutant(
        "budget ignored",
        "a task past max_cost_usd is stopped",
        "_wire.py",
        "    return cost if cost > Decimal(str(max_cost_usd)) else None",
        "    return None",
        ("tests/test_cost_control.py::test_a_task_past_its_budget_is_stopped_and_fails",),
    ),
    Mutant(
        "sweeper stops busy sessions",
        "the sweeper never stops a session with a running task unless asked",
        "operators/browser_use.py",
        "        if _wire.running_task_id(view) is not None and not self.include_running:",
        "        if False:",
        ("tests/test_sweeper.py::test_it_stops_only_the_providers_idle_sessions_past_their_limits",),
    ),
    Mutant(
        "429 fails at once",
        "a create at the session cap waits for a free slot",
        "operators/browser_use.py",
        "                if error.http_status == 429:",
        "                if False:",
        ("tests/test_cost_control.py::test_a_create_at_the_session_cap_waits_for_a_free_slot",),
    ),
    Mutant(
        "v4: no cancel on give-up",
        "giving up on a v4 run cancels it",
        "_common.py",
        "            hook.cancel_run(run_id)",
        "            pass",
        (
            "tests/test_operators_v4.py::test_a_timeout_cancels_the_run_and_stops_the_browser",
            "tests/test_operators_v4.py::test_on_kill_cancels_the_run",
        ),
    ),
    Mutant(
        "v4: browser left up",
        "a v4 conversation the operator started leaves no browser billing",
        "operators/browser_use_v4.py",
        "            if self.hook.stop_agent_session_browsers(session_id):",
        "            if False:",
        ("tests/test_operators_v4.py::test_a_run_returns_its_answer_pushes_ids_and_stops_its_browser",),
    ),
    Mutant(
        "v4: retries start anew",
        "a v4 retry adopts the earlier try's run",
        "operators/browser_use_v4.py",
        '        elif int(getattr(ti, "try_number", 1)) > 1:',
        "        elif False:",
        ("tests/test_operators_v4.py::test_a_retry_adopts_the_run_an_earlier_try_started",),
    ),
    Mutant(
        "v4: ambiguous create unreconciled",
        "a v4 create whose answer was lost is found, not resent",
        "operators/browser_use_v4.py",
        "                if may_have_taken_effect(error):",
        "                if False:",
        ("tests/test_operators_v4.py::test_an_ambiguous_create_is_found_not_resent",),
    ),
    Mutant(
        "v4: no repair",
        "a structured answer out of shape is repaired in the same session",
        "operators/browser_use_v4.py",
        "            if repairs >= self.structured_output_repairs or self._remaining() <= 0:",
        "            if True:",
        ("tests/test_operators_v4.py::test_structured_output_is_checked_and_repaired_in_the_same_session",),
    ),
    Mutant(
        "v4: sweeper takes foreign conversations",
        "the sweeper touches only the provider's v4 conversations unless told",
        "operators/browser_use.py",
        '            if not str(name or "").startswith(_wire_v4.WORKSPACE_TAG_PREFIX):',
        "            if False:",
        ("tests/test_sweeper.py::test_v4_conversations_are_swept_by_the_same_rules_beside_v2_sessions",),
    ),
]


def run(mutant: Mutant) -> tuple[str, float]:
    """Apply the mutant, run its tests, restore the file; returns the killing test or SURVIVED."""
    path = PACKAGE / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name!r}: its line is not in {mutant.path} exactly once; update it")
    started = time.monotonic()
    try:
        path.write_text(original.replace(mutant.old, mutant.new))
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        path.write_text(original)
    killer = re.search(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    if done.returncode == 0:
        return "SURVIVED", time.monotonic() - started
    if killer is None:  # an error before any test failed (an import broke): that does not count
        return f"ERROR (pytest exit {done.returncode})", time.monotonic() - started
    return killer.group(1).split("::", 1)[-1].split("[")[0], time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the mutants whose name contains this")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only is None or args.only in m.name]
    rows, survivors = [], 0
    for mutant in chosen:
        verdict, seconds = run(mutant)
        survivors += not verdict.startswith("test_")
        rows.append((mutant.name, mutant.promise, verdict, seconds))
        print(f"{mutant.name:<40} {verdict}  ({seconds:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{'mutant':<40} {'promise':<62} killed by")
    for name, promise, verdict, _ in rows:
        print(f"{name:<40} {promise:<62} {verdict}")
    killed = len(rows) - survivors
    print(f"\nmutation score: {killed}/{len(rows)} killed" + (f", {survivors} NOT" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
