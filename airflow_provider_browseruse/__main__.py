"""``python -m airflow_provider_browseruse concurrent-session-limit``: print the account's session cap.

Size an Airflow pool to it in one command (deferred tasks hold sessions too, hence
``--include-deferred``)::

    airflow pools set browser_use "$(python -m airflow_provider_browseruse concurrent-session-limit)" \\
        "Browser Use concurrent sessions" --include-deferred
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_browseruse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    limit = commands.add_parser("concurrent-session-limit", help="print how many sessions may be active at once")
    limit.add_argument("--conn-id", default="browser_use_default", help="the Browser Use connection")
    args = parser.parse_args(argv)

    with _stdout_to_stderr():  # Airflow may log to stdout, and `$(...)` must read only the number
        from airflow_provider_browseruse.hooks.browser_use import BrowserUseHook

        found = BrowserUseHook(args.conn_id).concurrent_session_limit()
    if found is None:
        print("The API does not say how many sessions this account may run at once.", file=sys.stderr)
        return 1
    print(found)
    return 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout, by Python or at the file descriptor, to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
