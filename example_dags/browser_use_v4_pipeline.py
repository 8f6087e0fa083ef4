"""API v4 (the vendor's current agent): a price check from an input file, with a follow-up turn.

``price_check`` uploads ``data/wanted_books.csv`` to the run's workspace, attaches it, and asks
for the prices as JSON in the shape of ``PRICES`` (sent as ``outputSchema`` and checked again
here; an answer out of shape gets one repair turn). Its session's browser is kept alive for the
follow-up turn ``cheapest``, which continues the same conversation (it remembers the prices).
``end_session`` is the teardown: whatever happened upstream, it cancels what still runs, stops
the browser (a kept-alive browser bills until it stops) and records the session's cost.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag, task

from airflow_provider_browseruse.operators import EndAgentSessionOperator, RunAgentOperator

WANTED = Path(__file__).parent / "data" / "wanted_books.csv"
PRICES = {
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
SESSION = "{{ ti.xcom_pull(task_ids='price_check', key='session_id') }}"


@dag(schedule=None, catchup=False, default_args={"retries": 1}, tags=["browser_use", "example", "v4"], doc_md=__doc__)
def browser_use_v4_pipeline() -> None:
    price_check = RunAgentOperator(
        task_id="price_check",
        task="On https://books.toscrape.com find the price in GBP of each title in the attached wanted_books.csv.",
        input_files=[str(WANTED)],
        structured_output=PRICES,
        keep_alive=300,  # the follow-up below reuses the browser; end_session stops it
        max_cost_usd=1.00,
        session_max_cost_usd=3.00,
        poll_interval=1,
        timeout=900,
    )
    cheapest = RunAgentOperator(
        task_id="cheapest",
        task="Of the books you just priced, which is the cheapest? Answer with its title only.",
        session_id=SESSION,
        max_cost_usd=0.50,
        poll_interval=1,
        timeout=600,
    )

    @task
    def report(prices: dict, cheapest_title: str) -> dict:
        return {"priced": len(prices["books"]), "cheapest": cheapest_title.strip()}

    end_session = EndAgentSessionOperator(task_id="end_session", session_id=SESSION, missing_ok=True)
    summary = report(price_check.output, cheapest.output)
    price_check >> cheapest >> summary >> end_session.as_teardown(setups=price_check)


browser_use_v4_pipeline()
