"""BGE-M3's relevance scores over candidate rows read from a table, and the query-side containers.

Every search mode ends here, so what a search returns carries the same score FlagEmbedding's
`compute_score` would give the pair (up to float16 storage of ColBERT vectors). The definitions live
once, in `operators.scoring`; this module adapts them to candidate rows and queries:
- dense: q . p
- sparse: sum over token ids in both of w_q[t] * w_p[t]
- colbert: mean over query vectors of the max dot product over the passage's vectors (MaxSim)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from operators import scoring


@dataclass
class SparseVector:
    """Lexical weights of one text: sorted unique token ids (the max weight kept for repeats)."""

    indices: np.ndarray  # int64, sorted, unique
    values: np.ndarray  # float32

    @classmethod
    def from_pairs(cls, indices, values) -> SparseVector:
        indices = np.asarray(indices, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        if indices.size == 0:
            return cls(indices, values)
        order = np.lexsort((-values, indices))  # by id, highest weight first within an id
        indices, values = indices[order], values[order]
        first = np.ones(indices.size, dtype=bool)
        first[1:] = indices[1:] != indices[:-1]
        return cls(indices[first], values[first])

    def __len__(self) -> int:
        return int(self.indices.size)


@dataclass
class QueryVectors:
    """One encoded query: a vector per dense column, lexical weights, ColBERT vectors (what the model gives)."""

    dense: dict[str, np.ndarray] = field(default_factory=dict)
    sparse: SparseVector | None = None
    colbert: np.ndarray | None = None  # (tokens, D) float32


def _column(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def fixed_vectors(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list<float> column as a (rows, dim) float32 matrix (nulls are not allowed)."""
    array = _column(values)
    if array.null_count:
        msg = "vector column has null rows; re-embed those rows"
        raise ValueError(msg)
    dim = array.type.list_size
    return np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def ragged_lengths(array: pa.Array) -> np.ndarray:
    """Items per row of a list column, 0 for null rows."""
    return np.asarray(array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)


def dense_scores(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    return scoring.dense_scores(query, matrix)


def sparse_scores(column: pa.Array | pa.ChunkedArray, query: SparseVector) -> np.ndarray:
    """Lexical-matching score of the query against each row of a `sparse` struct column (0 for null rows)."""
    return scoring.sparse_scores((query.indices, query.values), column)


def sparse_children(array: pa.StructArray) -> tuple[pa.Array, pa.Array]:
    """The indices and values lists of a sparse struct column, with null rows as null lists."""
    children = array.flatten()  # merges the struct's validity into its children
    names = [array.type.field(i).name for i in range(array.type.num_fields)]
    return children[names.index("indices")], children[names.index("values")]


def colbert_scores(column: pa.Array | pa.ChunkedArray, query: np.ndarray,
                   scales: pa.Array | pa.ChunkedArray | None = None) -> np.ndarray:
    """MaxSim of the query's vectors against each row's ColBERT vectors (any stored precision; `scales`
    for int8), averaged over query vectors (one matrix product over all candidate tokens; a row without
    vectors scores 0)."""
    return scoring.colbert_scores(np.asarray(query, dtype=np.float32), column, scales)


def top_k(ids: np.ndarray | list[str], scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, highest first, ties broken by id, so results are reproducible."""
    scores = np.asarray(scores)
    if scores.size == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    if scores.size > k:
        kth = np.partition(-scores, k - 1)[k - 1]
        keep = np.flatnonzero(-scores <= kth)  # everything tied with the k-th too, for the id tie-break
    else:
        keep = np.arange(scores.size)
    order = sorted(keep.tolist(), key=lambda i: (-float(scores[i]), str(ids[i])))[:k]
    return np.asarray(order, dtype=np.int64)
