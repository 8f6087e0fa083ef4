"""Run a DAG in-process, as ``dag.test()`` does, and read back what it did.

``dag.test()`` on Airflow 3 needs a migrated metadata database, the DAG bundles synced, and the
DAG serialized to the database first; :func:`run_dag` does all three, then runs the DAG and
returns its state, task states and XComs in plain dicts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The bundle ``dag.test()`` runs DAGs from (Airflow's default bundle of the dags folder).
BUNDLE_NAME = "dags-folder"

_database_ready = False


@dataclass(frozen=True)
class DagRunResult:
    """What a DAG run did.

    :param state: the run's state: ``"success"`` or ``"failed"``.
    :param task_states: each task instance's state by task id; a mapped task's instances as
        ``"task_id[0]"``, ``"task_id[1]"``...
    :param xcoms: every XCom value by ``(task_id, map_index, key)`` (``map_index`` -1 unless mapped).
    :param dag_run: Airflow's own DagRun, for anything else.
    """

    state: str
    task_states: dict[str, str]
    xcoms: dict[tuple[str, int, str], Any] = field(repr=False)
    dag_run: Any = field(repr=False)

    def xcom(self, task_id: str, key: str = "return_value", map_index: int | None = None) -> Any:
        """One task's XCom value; for a mapped task without ``map_index``, the list of its instances' values.

        :raises KeyError: the task pushed nothing under ``key`` (the message lists what it pushed).
        """
        values = {
            index: value
            for (task, index, name), value in self.xcoms.items()
            if task == task_id and name == key and map_index in (None, index)
        }
        if not values:
            pushed = sorted({name for task, _, name in self.xcoms if task == task_id})
            raise KeyError(f"{task_id} pushed no XCom {key!r} (it pushed: {', '.join(pushed) or 'nothing'})")
        if map_index is not None:
            return values[map_index]
        return values[-1] if -1 in values else [values[index] for index in sorted(values)]


def run_dag(
    dag: Any,
    *,
    dag_id: str | None = None,
    conf: Mapping[str, Any] | None = None,
    other_dags: Sequence[Any] = (),
) -> DagRunResult:
    """Run a DAG once, in this process, and return what it did; a failed run returns, it does not raise.

    :param dag: a DAG object, or the path of a DAG file.
    :param dag_id: which DAG of the file, when it defines several.
    :param conf: the run's ``conf`` (``params`` are checked against it).
    :param other_dags: DAG objects to serialize beside it, not run: those scheduled on its assets,
        so that its asset events queue their runs.
    :raises ValueError: the file does not import, or ``dag_id`` does not name one of its DAGs.
    """
    bag = _bag_of(dag)
    chosen = _choose(bag, dag_id)
    for other in other_dags:
        bag.bag_dag(other)
    _prepare_database()
    _serialize(bag)
    dag_run = chosen.test(run_conf=dict(conf) if conf is not None else None)
    return _result(dag_run)


def _prepare_database() -> None:
    """Create or migrate the metadata database and sync the DAG bundles, once per process."""
    global _database_ready
    if _database_ready:
        return
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.utils.db import initdb

    initdb()
    DagBundlesManager().sync_bundles_to_db()
    _database_ready = True


def _bag_of(dag: Any) -> Any:
    from airflow.models import DagBag

    if isinstance(dag, (str, os.PathLike)):
        path = Path(dag).resolve()
        if not path.is_file():
            raise ValueError(f"dag must be a DAG object or the path of a DAG file; {path} is not a file")
        bag = DagBag(dag_folder=str(path))
        if bag.import_errors:
            errors = "\n".join(f"{where}: {error}" for where, error in bag.import_errors.items())
            raise ValueError(f"{path} does not import:\n{errors}")
        return bag
    if not hasattr(dag, "test") or not hasattr(dag, "dag_id"):
        raise ValueError(f"dag must be a DAG object or the path of a DAG file, got {dag!r}")
    bag = DagBag(dag_folder=dag.fileloc, collect_dags=False)
    bag.bag_dag(dag)
    return bag


def _choose(bag: Any, dag_id: str | None) -> Any:
    ids = sorted(bag.dags)
    if dag_id is None and len(ids) == 1:
        return bag.dags[ids[0]]
    if dag_id is None or dag_id not in bag.dags:
        asked = "give dag_id, one of" if dag_id is None else f"dag_id={dag_id!r} is not among"
        raise ValueError(f"{asked}: {', '.join(ids) or '(no DAGs)'}")
    return bag.dags[dag_id]


def _serialize(bag: Any) -> None:
    try:  # Airflow 3.2+
        from airflow.dag_processing.dagbag import sync_bag_to_db
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import sync_bag_to_db  # type: ignore[no-redef,attr-defined]

    sync_bag_to_db(bag, BUNDLE_NAME, None)


def _result(dag_run: Any) -> DagRunResult:
    from airflow.models.xcom import XComModel
    from airflow.sdk.bases.xcom import BaseXCom
    from airflow.utils.session import create_session

    task_states = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.task_id, ti.map_index)):
        name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        task_states[name] = str(ti.state)
    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .all()
        )
        # Read as a downstream task would: XComModel.deserialize_value turns the text "20" into 20.
        xcoms = {(row.task_id, row.map_index, row.key): BaseXCom.deserialize_value(row) for row in rows}
    return DagRunResult(state=str(dag_run.state), task_states=task_states, xcoms=xcoms, dag_run=dag_run)
