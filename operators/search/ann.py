"""ANN indexes for a table's dense columns, with parameters chosen from its size, and their measured recall.

Choices (LanceDB's guidance, made explicit so the report can show them):
- Below `min_rows` rows an index is skipped: an exact scan is fast and exact, and IVF training needs
  enough rows per partition (PQ codebooks train on 256 vectors per sub-space).
- auto = IVF_HNSW_SQ: 8-bit scalar codes (4x smaller than float32) and an HNSW graph per partition,
  num_partitions = ceil(rows / 1M) (LanceDB's target partition size for HNSW), nprobes = all of them up
  to 20.
- IVF_PQ (`--index-type IVF_PQ`, for tables too big to keep SQ codes in memory): num_partitions ~ sqrt(rows),
  num_sub_vectors ~ dim / 8 (1-byte code per 8 dims, 32x smaller than float32), nprobes = 10% of the
  partitions (at least 20).
- Both are searched with refine_factor 10: the index proposes 10 k rows, re-ranked on the stored float
  vectors. The codes alone cap recall (20k clustered 128-d vectors: HNSW_SQ recall@10 0.91 without
  refinement, 1.0 with it; IVF_PQ 0.41 -> 0.95).
- Metric: l2. Vectors are unit length, so l2, cosine and dot rank identically (and search reports exact dot
  scores anyway), but Lance's IVF training under "dot" partitions badly: IVF_PQ recall@10 0.40 with dot vs
  0.95 with l2 or cosine on the same data, and l2 builds fastest.

Recall is measured leave-one-out: sampled rows' own vectors are the queries, each query's own row is
dropped from both result lists, recall@k = |ANN top-k ∩ exact top-k| / k averaged over the sample.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from operators.schema import ID
from operators.search.scores import fixed_vectors
from operators.search.store import TableStore

log = logging.getLogger(__name__)

MIN_ROWS = 10_000
IVF_PQ = "IVF_PQ"
IVF_HNSW_SQ = "IVF_HNSW_SQ"
INDEX_TYPES = ("auto", IVF_PQ, IVF_HNSW_SQ)
DIMS_PER_SUB_VECTOR = 8
HNSW_PARTITION_ROWS = 1_000_000
DEFAULT_REFINE = 10
INDEX_METRIC = "l2"


@dataclass
class IndexPlan:
    column: str
    index_type: str
    num_partitions: int
    num_sub_vectors: int | None = None
    nprobes: int = 20
    refine_factor: int | None = None


def plan_index(column: str, rows: int, dim: int, index_type: str = "auto") -> IndexPlan:
    """Index parameters for a column of `rows` vectors of `dim` dims."""
    if index_type not in INDEX_TYPES:
        msg = f"unknown index type {index_type!r} (choose from {', '.join(INDEX_TYPES)})"
        raise ValueError(msg)
    if index_type == "auto":
        index_type = IVF_HNSW_SQ
    if index_type == IVF_PQ:
        partitions = max(1, min(round(math.sqrt(rows)), rows // 256))
        sub_vectors = _sub_vectors(dim)
        nprobes = min(partitions, max(20, math.ceil(partitions * 0.1)))
        return IndexPlan(column, IVF_PQ, partitions, sub_vectors, nprobes, DEFAULT_REFINE)
    partitions = max(1, math.ceil(rows / HNSW_PARTITION_ROWS))
    return IndexPlan(column, IVF_HNSW_SQ, partitions, None, max(1, min(partitions, 20)), DEFAULT_REFINE)


def plan_type(lance_index_type: str) -> str:
    """Our plan's index type for LanceDB's name of an existing index (unknown kinds get IVF_PQ's search
    parameters: more probes and a refine step do no harm)."""
    return IVF_HNSW_SQ if lance_index_type.upper().replace("_", "") in ("IVFHNSWSQ", "HNSWSQ") else IVF_PQ


def _sub_vectors(dim: int) -> int:
    """The largest divisor of dim not above dim / 8 (PQ needs sub-vectors that split the vector evenly)."""
    target = max(1, dim // DIMS_PER_SUB_VECTOR)
    return max(d for d in range(1, target + 1) if dim % d == 0)


def create_index(store: TableStore, plan: IndexPlan) -> float:
    """Build (or replace) the index; returns seconds taken."""
    from lancedb.index import HnswSq, IvfPq

    if plan.index_type == IVF_PQ:
        config = IvfPq(distance_type=INDEX_METRIC, num_partitions=plan.num_partitions,
                       num_sub_vectors=plan.num_sub_vectors)
    else:
        config = HnswSq(distance_type=INDEX_METRIC, num_partitions=plan.num_partitions)
    started = time.perf_counter()
    store.table.create_index(plan.column, config=config, replace=True)
    store.forget_indexes()
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
    index_type: str = "auto",
    min_rows: int = MIN_ROWS,
    sample: int = 100,
    k: int = 10,
    sparse: bool = True,
    storage: dict | None = None,
) -> dict:
    """Python API behind `embedlake index`: an ANN index per dense column (or a note why not), the recall
    of each against exact search, and the sparse inverted index refreshed."""
    from operators.schema import SPARSE
    from operators.search.sparse_index import open_sparse_index

    store = TableStore(uri, table, storage)
    rows = store.rows
    chosen = columns or store.dense_columns()
    for column in chosen:
        store.require(column)
        if column not in store.dense_columns():
            msg = f"{column!r} is not a dense vector column; ANN indexes cover dense and dense_<d>"
            raise ValueError(msg)
    store.table.checkout_latest()  # create_index writes a new version
    result: dict = {"table": table, "rows": rows, "columns": {}}
    for column in chosen:
        if rows < min_rows:
            result["columns"][column] = {
                "skipped": f"{rows} rows < {min_rows}: exact search is fast at this size and IVF training needs "
                           "more rows; use --min-rows to force an index"}
            continue
        plan = plan_index(column, rows, store.dim(column), index_type)
        seconds = create_index(store, plan)
        log.info("%s on %s built in %.1f s", plan.index_type, column, seconds)
        entry = {**{key: value for key, value in asdict(plan).items() if value is not None and key != "column"},
                 "build_seconds": round(seconds, 3)}
        entry.update(measure_recall(store, plan, sample, k))
        result["columns"][column] = entry
    if sparse and store.has(SPARSE):
        reopened = TableStore(uri, table, storage)
        index, action = open_sparse_index(reopened)
        result["sparse_index"] = {"action": action, "version": index.version, "rows": index.rows,
                                  "terms": int(index.terms.size), "postings": int(index.docs.size),
                                  "uri": reopened.sparse_index_uri()}
    return result
