"""Building ANN indexes on a table's dense columns (parameters: index_plan.py) and measuring their recall.

Recall is measured leave-one-out: sampled rows' own vectors are the queries, each query's own row is
dropped from both result lists, recall@k = |ANN top-k ∩ exact top-k| / k averaged over the sample.
"""

from __future__ import annotations

import math
import time

import numpy as np

from operators.schema import ID
from operators.search.index_plan import INDEX_METRIC, IndexPlan, IndexType
from operators.search.store import TableStore
from operators.vectors import as_matrix


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
    queries = as_matrix(taken.column(plan.column))
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

