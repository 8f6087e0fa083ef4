"""An agent that logs in: the password comes from an Airflow Variable through ``secrets``.

``secrets`` values are rendered when the task runs (Jinja works) but are not a template field,
so they are never stored as rendered values or shown in the UI; each value is masked in the
logs and none is logged or pushed to XCom. ``allowed_domains`` keeps the agent on the shop.
"""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_provider_browseruse.operators import RunTaskOperator

with DAG(
    dag_id="browser_use_login",
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
    tags=["browser_use", "example"],
    doc_md=__doc__,
):
    RunTaskOperator(
        task_id="last_order",
        task="Log in to https://shop.example.com as {{ var.value.get('shop_user', 'demo') }} and report my last order.",
        secrets={"password": "{{ var.value.shop_password }}"},
        allowed_domains=["shop.example.com"],
        poll_interval=2,
        timeout=900,
        deferrable=True,
    )
