"""TaskFlow: ``@task.browser_use`` mapped over a list of URLs, then one task that sums them up.

The decorated function returns the prompt; the task returns the agent's output, here validated
against a pydantic model (named by the return annotation) and handed on as a dict. Each mapped
instance is labelled in the UI by its prompt, runs in the ``browser_use`` pool sized to the
account's session cap, and is stopped if it costs more than $0.50. Without ``session_id``
every URL gets a one-off session that closes when its task ends, so nothing is left running.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from pydantic import BaseModel

URLS = [
    "https://books.toscrape.com/catalogue/category/books/travel_2/index.html",
    "https://books.toscrape.com/catalogue/category/books/mystery_3/index.html",
    "https://books.toscrape.com/catalogue/category/books/poetry_23/index.html",
]


class Shelf(BaseModel):
    category: str
    books: int
    cheapest_gbp: float


@dag(schedule=None, catchup=False, default_args={"retries": 0}, tags=["browser_use", "example"], doc_md=__doc__)
def browser_use_taskflow() -> None:
    # The pool holds as many slots as the account may run sessions (README: "Fan-out at the
    # session cap"): the mapped instances queue in Airflow instead of on the API's 429s.
    @task.browser_use(poll_interval=1, timeout=600, max_steps=15, max_cost_usd=0.50, pool="browser_use")
    def read_shelf(url: str) -> Shelf:
        return f"Open {url}. Give the category name, how many books it lists and the cheapest price in GBP."

    @task
    def summary(shelves: list[dict]) -> dict:
        cheapest = min(shelves, key=lambda shelf: shelf["cheapest_gbp"])
        return {"books": sum(shelf["books"] for shelf in shelves), "cheapest_category": cheapest["category"]}

    summary(read_shelf.expand(url=URLS))


browser_use_taskflow()
