"""The index job: an ANN index per dense column with parameters from the table's size (index_plan.py), each
index's recall against exact search (ann.py), and the sparse inverted index brought up to date.

Indexes are written through a writable handle on the latest version, which must be the serving one; the
`serving` tag then moves to the version that holds the indexes (same rows), and recall is measured on a store
opened afterwards, so every read sees that version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from operators.errors import check_range
from operators.schema import SPARSE
from operators.search.ann import create_index, measure_recall
from operators.search.index_plan import MIN_ROWS, IndexPlan, IndexType, plan_index
from operators.search.sparse_index import open_sparse_index
from operators.search.store import TableStore
from operators.serving import advance_serving, same_rows
from operators.tables import check_table_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexJob:
    """One index run's options (pipelines/commands/index.py says what each means)."""

    uri: str
    table: str = "docs"
    columns: Sequence[str] = ()  # dense columns; every one when empty
    index_type: IndexType = IndexType.AUTO
    min_rows: int = MIN_ROWS
    sample: int = 100
    k: int = 10
    sparse: bool = True
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)
        check_range("min_rows", self.min_rows, 0)
        check_range("sample", self.sample, 1)
        check_range("k", self.k, 1)


def run_index(job: IndexJob) -> dict:
    """Build the indexes and report them: {"table", "rows", "columns": {column: plan, build_seconds, recall@k,
    ...} or {"skipped": why}, "sparse_index": {...}}."""
    store = TableStore(job.uri, job.table, job.storage)
    require_serving_latest(store)
    rows = store.rows
    chosen = list(job.columns) or store.dense_columns()
    for column in chosen:
        store.require(column)
        if column not in store.dense_columns():
            msg = f"{column!r} is not a dense vector column; ANN indexes cover dense and dense_<d>"
            raise ValueError(msg)
    result: dict = {"table": job.table, "rows": rows, "columns": {}}
    plans = []
    for column in chosen:
        if rows < job.min_rows:
            result["columns"][column] = {
                "skipped": f"{rows} rows < {job.min_rows}: exact search is fast at this size and IVF training "
                           "needs more rows; use --min-rows to force an index"}
            continue
        plans.append(plan_index(column, rows, store.dim(column), job.index_type))
    indexed, seconds = build_for_serving(store, plans)
    for plan in plans:
        result["columns"][plan.column] = {
            **{key: value for key, value in asdict(plan).items() if value is not None and key != "column"},
            "build_seconds": round(seconds[plan.column], 3),
            **measure_recall(indexed, plan, job.sample, job.k)}
    if job.sparse and indexed.has(SPARSE):
        index, action = open_sparse_index(indexed)
        result["sparse_index"] = {"action": action, "version": index.version, "rows": index.rows,
                                  "terms": int(index.terms.size), "postings": int(index.docs.size),
                                  "uri": indexed.sparse_index_uri()}
    return result


def require_serving_latest(store: TableStore, context: str = "", alternative: str = "") -> None:
    """Indexes are built on the latest version and published by moving `serving` to the version holding them,
    so the serving version must be the latest: an index built on top of an unfinished run would belong to a
    version readers do not read (and publishing it would publish the run). The error starts with `context` and
    ends with `alternative` (the caller's other way out)."""
    latest = store.ref.dataset().version
    if latest != store.version:
        msg = (f"{context}table {store.name!r} has versions after its serving version {store.version} (latest "
               f"{latest}: an unfinished run, or one rolled back): indexes are built for the serving version only "
               "when it is the latest; re-run the embed command, which finishes or sets them aside and keeps ANN "
               f"indexes current{alternative}")
        raise ValueError(msg)


def build_for_serving(store: TableStore, plans: Sequence[IndexPlan]) -> tuple[TableStore, dict[str, float]]:
    """Build `plans` for the serving version `store` reads (the latest: `require_serving_latest`) and move
    `serving` to the version that holds them (same rows), so readers get the indexes with the vectors they
    index. Returns a store opened at that version and each column's build seconds."""
    if not plans:
        return store, {}
    require_serving_latest(store)
    writable = store.ref.open()  # the latest version: each index is a new one
    seconds = {}
    for plan in plans:
        seconds[plan.column] = create_index(writable, plan)
        log.info("%s on %s.%s built in %.1f s", plan.index_type, store.name, plan.column, seconds[plan.column])
    if not same_rows(store.ref, store.version):  # an embed run began meanwhile: its rows must not be published
        msg = (f"table {store.name!r}: rows were committed while the indexes were built (an embed run began); "
               f"readers stay on version {store.version}, and that run publishes its rows with their indexes")
        raise ValueError(msg)
    advance_serving(store.ref, store.version)
    return TableStore(store.uri, store.name, store.storage), seconds
