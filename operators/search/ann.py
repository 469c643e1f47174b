"""Building ANN indexes on a table's dense columns (parameters: index_plan.py) and measuring their recall.

Recall is measured leave-one-out: sampled rows' own vectors are the queries, each query's own row is
dropped from both result lists, recall@k = |ANN top-k ∩ exact top-k| / k averaged over the sample.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict

import numpy as np

from operators.schema import ID
from operators.search.index_plan import INDEX_METRIC, MIN_ROWS, IndexPlan, IndexType, plan_index
from operators.search.scores import fixed_vectors
from operators.search.store import TableStore

log = logging.getLogger(__name__)


def create_index(table, plan: IndexPlan) -> float:
    """Build (or replace) the index on a LanceDB table opened for writing (a new version); returns seconds."""
    from lancedb.index import HnswSq, IvfPq

    if plan.index_type == IndexType.IVF_PQ:
        config = IvfPq(distance_type=INDEX_METRIC, num_partitions=plan.num_partitions,
                       num_sub_vectors=plan.num_sub_vectors)
    else:
        config = HnswSq(distance_type=INDEX_METRIC, num_partitions=plan.num_partitions)
    started = time.perf_counter()
    table.create_index(plan.column, config=config, replace=True)
    return time.perf_counter() - started


def measure_recall(store: TableStore, plan: IndexPlan, sample: int = 100, k: int = 10, seed: int = 0) -> dict:
    """Leave-one-out recall@k of the index against exact search, and mean latency of each, per query."""
    rows = store.rows
    positions = np.sort(np.random.default_rng(seed).choice(rows, size=min(sample, rows), replace=False))
    taken = store.take(positions, [ID, plan.column])
    queries = fixed_vectors(taken.column(plan.column))
    own_ids = taken.column(ID).to_pylist()
    recalls, exact_seconds, ann_seconds = [], 0.0, 0.0
    for query, own in zip(queries, own_ids, strict=True):
        started = time.perf_counter()
        exact = store.vector_search(plan.column, query, k + 1, [ID], exact=True)
        exact_seconds += time.perf_counter() - started
        started = time.perf_counter()
        approximate = store.vector_search(plan.column, query, k + 1, [ID], nprobes=plan.nprobes,
                                          refine_factor=plan.refine_factor)
        ann_seconds += time.perf_counter() - started
        truth = [doc for doc in exact.column(ID).to_pylist() if doc != own][:k]
        found = [doc for doc in approximate.column(ID).to_pylist() if doc != own][:k]
        recalls.append(len(set(truth) & set(found)) / max(len(truth), 1))
    count = max(len(recalls), 1)
    return {
        f"recall@{k}": float(np.mean(recalls)) if recalls else math.nan,
        "queries": len(recalls),
        "exact_ms": 1000 * exact_seconds / count,
        "ann_ms": 1000 * ann_seconds / count,
    }


def build_indexes(
    uri: str,
    table: str,
    columns: list[str] | None = None,
    index_type: str = IndexType.AUTO,
    min_rows: int = MIN_ROWS,
    sample: int = 100,
    k: int = 10,
    sparse: bool = True,
    storage: dict | None = None,
) -> dict:
    """Python API behind `embedlake index`: an ANN index per dense column (or a note why not), the recall
    of each against exact search, and the sparse inverted index refreshed."""
    from operators.errors import check_range
    from operators.schema import SPARSE
    from operators.search.sparse_index import open_sparse_index

    check_range("min_rows", min_rows, 0)
    check_range("sample", sample, 1)
    check_range("k", k, 1)

    store = TableStore(uri, table, storage)
    rows = store.rows
    chosen = columns or store.dense_columns()
    for column in chosen:
        store.require(column)
        if column not in store.dense_columns():
            msg = f"{column!r} is not a dense vector column; ANN indexes cover dense and dense_<d>"
            raise ValueError(msg)
    result: dict = {"table": table, "rows": rows, "columns": {}}
    plans = []
    writable = store.ref.open()  # the latest version: each index is a new one
    for column in chosen:
        if rows < min_rows:
            result["columns"][column] = {
                "skipped": f"{rows} rows < {min_rows}: exact search is fast at this size and IVF training needs "
                           "more rows; use --min-rows to force an index"}
            continue
        plan = plan_index(column, rows, store.dim(column), index_type)
        seconds = create_index(writable, plan)
        log.info("%s on %s built in %.1f s", plan.index_type, column, seconds)
        result["columns"][column] = {
            **{key: value for key, value in asdict(plan).items() if value is not None and key != "column"},
            "build_seconds": round(seconds, 3)}
        plans.append(plan)
    indexed = TableStore(uri, table, storage) if plans else store  # the version that has the indexes
    for plan in plans:
        result["columns"][plan.column].update(measure_recall(indexed, plan, sample, k))
    if sparse and indexed.has(SPARSE):
        index, action = open_sparse_index(indexed)
        result["sparse_index"] = {"action": action, "version": index.version, "rows": index.rows,
                                  "terms": int(index.terms.size), "postings": int(index.docs.size),
                                  "uri": indexed.sparse_index_uri()}
    return result
