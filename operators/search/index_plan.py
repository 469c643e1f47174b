"""ANN index parameters for a dense column, chosen from the table's size, and how each kind is searched.

Choices (LanceDB's guidance, made explicit so the report can show them):
- Below `MIN_ROWS` rows an index is skipped: an exact scan is fast and exact, and IVF training needs
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

Pure arithmetic, so both the builder (ann.py) and the reader that searches an existing index (store.py)
use it without depending on each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

MIN_ROWS = 10_000
DIMS_PER_SUB_VECTOR = 8
HNSW_PARTITION_ROWS = 1_000_000
DEFAULT_REFINE = 10
INDEX_METRIC = "l2"


class IndexType(StrEnum):
    AUTO = "auto"
    IVF_PQ = "IVF_PQ"
    IVF_HNSW_SQ = "IVF_HNSW_SQ"


@dataclass
class IndexPlan:
    column: str
    index_type: IndexType
    num_partitions: int
    num_sub_vectors: int | None = None
    nprobes: int = 20
    refine_factor: int | None = None


def plan_index(column: str, rows: int, dim: int, index_type: str = IndexType.AUTO) -> IndexPlan:
    """Index parameters for a column of `rows` vectors of `dim` dims."""
    if index_type not in list(IndexType):
        msg = f"unknown index type {index_type!r} (choose from {', '.join(IndexType)})"
        raise ValueError(msg)
    if index_type == IndexType.IVF_PQ:
        partitions = max(1, min(round(math.sqrt(rows)), rows // 256))
        sub_vectors = _sub_vectors(dim)
        nprobes = min(partitions, max(20, math.ceil(partitions * 0.1)))
        return IndexPlan(column, IndexType.IVF_PQ, partitions, sub_vectors, nprobes, DEFAULT_REFINE)
    partitions = max(1, math.ceil(rows / HNSW_PARTITION_ROWS))
    return IndexPlan(column, IndexType.IVF_HNSW_SQ, partitions, None, max(1, min(partitions, 20)), DEFAULT_REFINE)


def plan_type(lance_index_type: str) -> IndexType:
    """Our plan's index type for LanceDB's name of an existing index (unknown kinds get IVF_PQ's search
    parameters: more probes and a refine step do no harm)."""
    hnsw = lance_index_type.upper().replace("_", "") in ("IVFHNSWSQ", "HNSWSQ")
    return IndexType.IVF_HNSW_SQ if hnsw else IndexType.IVF_PQ


def _sub_vectors(dim: int) -> int:
    """The largest divisor of dim not above dim / 8 (PQ needs sub-vectors that split the vector evenly)."""
    target = max(1, dim // DIMS_PER_SUB_VECTOR)
    return max(d for d in range(1, target + 1) if dim % d == 0)
