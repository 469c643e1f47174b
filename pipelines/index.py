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
from operators.search.index_plan import MIN_ROWS, IndexType, plan_index
from operators.search.sparse_index import open_sparse_index
from operators.search.store import TableStore
from operators.serving import advance_serving
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
    latest = store.ref.dataset().version
    if latest != store.version:
        msg = (f"table {job.table!r} has versions after its serving version {store.version} (latest {latest}: an "
               "unfinished run, or one rolled back): indexes are built for the serving version only when it is the "
               "latest; re-run the embed command, which finishes or sets them aside and keeps ANN indexes current")
        raise ValueError(msg)
    rows = store.rows
    chosen = list(job.columns) or store.dense_columns()
    for column in chosen:
        store.require(column)
        if column not in store.dense_columns():
            msg = f"{column!r} is not a dense vector column; ANN indexes cover dense and dense_<d>"
            raise ValueError(msg)
    result: dict = {"table": job.table, "rows": rows, "columns": {}}
    plans = []
    writable = store.ref.open()  # the latest version: each index is a new one
    for column in chosen:
        if rows < job.min_rows:
            result["columns"][column] = {
                "skipped": f"{rows} rows < {job.min_rows}: exact search is fast at this size and IVF training "
                           "needs more rows; use --min-rows to force an index"}
            continue
        plan = plan_index(column, rows, store.dim(column), job.index_type)
        seconds = create_index(writable, plan)
        log.info("%s on %s built in %.1f s", plan.index_type, column, seconds)
        result["columns"][column] = {
            **{key: value for key, value in asdict(plan).items() if value is not None and key != "column"},
            "build_seconds": round(seconds, 3)}
        plans.append(plan)
    if plans:  # readers switch to the version that has the indexes (same rows)
        advance_serving(store.ref, store.version)
    indexed = TableStore(job.uri, job.table, job.storage) if plans else store  # the version with the indexes
    for plan in plans:
        result["columns"][plan.column].update(measure_recall(indexed, plan, job.sample, job.k))
    if job.sparse and indexed.has(SPARSE):
        index, action = open_sparse_index(indexed)
        result["sparse_index"] = {"action": action, "version": index.version, "rows": index.rows,
                                  "terms": int(index.terms.size), "postings": int(index.docs.size),
                                  "uri": indexed.sparse_index_uri()}
    return result
