"""A scraping pipeline: a session, an agent task with a structured-output schema, a step that
acts on the parsed output, and the session stopped as a teardown whatever happened.

``make demo`` runs this DAG against the local emulator (or the real API with
``BROWSER_USE_API_KEY`` set).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_browseruse.operators import (
    CreateSessionOperator,
    RunTaskOperator,
    StopSessionOperator,
)

BOOKS_SCHEMA = {
    "type": "object",
    "properties": {
        "books": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "price_gbp": {"type": "number"}},
                "required": ["title", "price_gbp"],
            },
        }
    },
    "required": ["books"],
}

with DAG(
    dag_id="browser_use_scrape",
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
    tags=["browser_use", "example"],
    doc_md=__doc__,
):
    session = CreateSessionOperator(task_id="create_session", keep_alive=True)

    scrape = RunTaskOperator(
        task_id="scrape_books",
        session_id=session.output,
        task=(
            "Open https://books.toscrape.com and return the title and the price in GBP "
            "of the first three books on the page."
        ),
        structured_output=BOOKS_SCHEMA,
        max_steps=25,
        poll_interval=2,
        timeout=900,
    )

    @task
    def cheapest_book(result: dict[str, Any]) -> dict[str, Any]:
        """Act on the parsed output: pick the cheapest book."""
        books = result["books"]
        if not books:
            raise ValueError("the agent found no books")
        cheapest = min(books, key=lambda book: book["price_gbp"])
        print(f"{len(books)} books scraped; the cheapest is {cheapest['title']!r} at £{cheapest['price_gbp']}")
        return cheapest

    stop = StopSessionOperator(task_id="stop_session", session_id=session.output)

    session >> scrape >> cheapest_book(scrape.output) >> stop.as_teardown(setups=session)
