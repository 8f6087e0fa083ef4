"""The Airflow UI as a user sees it, in Debian's headless Chromium driven by Playwright for Python:
the "Browser Use" connection form, a connection saved through it, and the "Browser Use session"
link on a finished task instance of each operator (the runs of test_distributed.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_browseruse.testing import BrowserUseEmulator
from deploy.cluster import Cluster
from deploy.conftest import API_KEY, ROOT, SUMMARIES, Rest, Scoreboard
from deploy.test_distributed import xcom

#: Written by every run; the CI log names them. README shows copies from docs/images/.
SCREENSHOTS = ROOT / ".deploy" / "screenshots"
#: Chromium as root, on a machine with no network but loopback: no sandbox, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: A finished instance of each operator and sensor that works with one session, and where its
#: session id comes from: (dag, task) -> (task, XCom key).
LINKED = {
    ("browser_use_scrape", "create_session"): ("create_session", "return_value"),  # CreateSessionOperator
    ("browser_use_scrape", "scrape_books"): ("create_session", "return_value"),  # RunTaskOperator
    ("browser_use_scrape", "stop_session"): ("create_session", "return_value"),  # StopSessionOperator
    ("browser_use_one_off", "stop_task"): ("start_task", "session_id"),  # StopTaskOperator
    ("browser_use_one_off", "wait_for_task"): ("start_task", "session_id"),  # TaskCompletedSensor
    ("browser_use_one_off", "wait_for_session"): ("start_task", "session_id"),  # SessionStoppedSensor
    ("browser_use_v4_pipeline", "price_check"): ("price_check", "session_id"),  # RunAgentOperator
    ("browser_use_v4_pipeline", "end_session"): ("price_check", "session_id"),  # EndAgentSessionOperator
}
RUN_ID = "examples"


@pytest.fixture(scope="module")
def page(cluster: Cluster) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: scripts/deploy-prerequisites.sh installs it"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    SUMMARIES.append(f"deploy: screenshot {path}")
    return path


def test_the_connection_form_relabels_and_hides_fields_and_what_it_saves_works(
    cluster: Cluster, page: Any, emulator: BrowserUseEmulator, scoreboard: Scoreboard
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{cluster.api_url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    page.get_by_label("Connection ID").fill("browser_use_from_the_form")
    page.get_by_role("combobox").click(force=True)
    page.keyboard.type("Browser Use")
    page.keyboard.press("Enter")
    base_url, api_key = page.get_by_label("Base URL"), page.get_by_label("API Key")
    expect(base_url).to_have_attribute("placeholder", "https://api.browser-use.com/api/v2")
    expect(api_key).to_have_attribute("placeholder", "bu_...")
    expect(api_key).to_have_attribute("type", "password")
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Description", exact=True)).to_have_count(1)  # the same locator finds a shown field
    for hidden in ("Host", "Password", "Login", "Port", "Schema"):
        expect(dialog.get_by_text(hidden, exact=True)).to_have_count(0)
    base_url.fill(emulator.base_url)
    api_key.fill(API_KEY)
    screenshot(page, "connection-form")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0, timeout=30_000)

    rest = Rest(cluster)
    saved = rest.call("GET", "/connections/browser_use_from_the_form")
    assert saved["conn_type"] == "browser_use" and saved["host"].startswith("http://127.0.0.1:")
    tested = cluster.cli("connections", "test", "browser_use_from_the_form")
    assert "Connected to Browser Use: project" in tested and "Connection success!" in tested
    assert API_KEY not in tested
    scoreboard.tasks = 0


def test_each_operator_links_to_its_session_in_the_browser_use_web_app(
    cluster: Cluster, page: Any, scoreboard: Scoreboard
) -> None:
    from playwright.sync_api import expect

    rest = Rest(cluster)
    seen = {}
    for (dag_id, task_id), (source_task, source_key) in LINKED.items():
        session_id = xcom(cluster, dag_id, RUN_ID, source_task, source_key)
        expected = f"https://cloud.browser-use.com/sessions/{session_id}"  # README: the link's target
        api = rest.call("GET", f"/dags/{dag_id}/dagRuns/{RUN_ID}/taskInstances/{task_id}/links")
        assert api["extra_links"] == {"Browser Use session": expected}, (dag_id, task_id, api)
        page.goto(f"{cluster.api_url}/dags/{dag_id}/runs/{RUN_ID}/tasks/{task_id}/details")
        link = page.get_by_role("link", name="Browser Use session")
        expect(link).to_have_attribute("href", expected, timeout=30_000)
        if task_id == "scrape_books":
            link.scroll_into_view_if_needed()
            screenshot(page, "extra-link")
        seen[(dag_id, task_id)] = expected
    assert len(seen) == len(LINKED)
    scoreboard.tasks = len(seen)
