"""Dense retrieval: exact top-n by dot product over in-memory matrices or a table scan, and the
Matryoshka funnel (shortlist with a small nested size, re-rank the shortlist with the full vector).

Vectors are unit length, so dot product is cosine similarity. These are the exact paths: evaluation,
the benchmark and the tests use them; `Retriever` uses LanceDB's vector search (ANN when indexed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from operators.search.store import TableStore

QUERY_BLOCK = 256  # queries scored together: bounds the (queries x rows) score block in memory
CONVERT_BLOCK_ROWS = 32768  # rows of an int8 matrix converted to float32 at a time (50 MB at 384 dims)
# A first stage: (matrix, float queries, n) -> (positions, scores), best first, higher scores better.
TopN = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _merge_topn(
    best_pos: np.ndarray, best_scores: np.ndarray, positions: np.ndarray, scores: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the n highest of the union, per query row (arrays are (queries, m))."""
    pos = np.concatenate([best_pos, positions], axis=1)
    sco = np.concatenate([best_scores, scores], axis=1)
    if sco.shape[1] <= n:
        return pos, sco
    keep = np.argpartition(-sco, n - 1, axis=1)[:, :n]
    return np.take_along_axis(pos, keep, axis=1), np.take_along_axis(sco, keep, axis=1)


def _sorted(positions: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(positions, order, axis=1), np.take_along_axis(scores, order, axis=1)


def select_topn(scores: np.ndarray, n: int, sample_factor: int = 8) -> np.ndarray:
    """Column indices of the n largest scores of each row (unordered), exactly.

    `argpartition` over every score costs ~10 ns per element and dominates a small-vector scan. Instead,
    a per-row threshold from a strided sample (its value expected to have ~1.5n scores above it) lets one
    vectorised comparison discard nearly everything; rows where the threshold keeps fewer than n scores
    fall back to the full argpartition, so the result is always the exact top n."""
    rows, width = scores.shape
    if width <= sample_factor * n * 4:
        return np.argpartition(-scores, n - 1, axis=1)[:, :n]
    step = max(1, width // (sample_factor * n))
    sample = scores[:, ::step]
    rank = min(sample.shape[1] - 1, int(1.5 * n / step) + 2)
    threshold = -np.partition(-sample, rank, axis=1)[:, rank]
    mask = scores >= threshold[:, None]
    counts = mask.sum(axis=1)
    result = np.empty((rows, n), dtype=np.int64)
    _rows, cols = np.nonzero(mask)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for row in range(rows):
        if counts[row] < n:
            result[row] = np.argpartition(-scores[row], n - 1)[:n]
            continue
        candidates = cols[bounds[row]:bounds[row + 1]]
        keep = np.argpartition(-scores[row, candidates], n - 1)[:n]
        result[row] = candidates[keep]
    return result


def exact_topn(matrix: np.ndarray, queries: np.ndarray, n: int, block_rows: int = 262144) -> tuple[
    np.ndarray, np.ndarray
]:
    """Exact top-n rows of `matrix` for each query by dot product: (positions, scores), best first.
    An integer matrix (int8 codes) is converted to float32 a block of rows at a time."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n = min(n, matrix.shape[0])
    if matrix.dtype != np.float32:
        block_rows = min(block_rows, CONVERT_BLOCK_ROWS)
    best_pos = np.zeros((queries.shape[0], 0), dtype=np.int64)
    best_scores = np.zeros((queries.shape[0], 0), dtype=np.float32)
    for start in range(0, matrix.shape[0], block_rows):
        block = np.asarray(matrix[start:start + block_rows], dtype=np.float32)
        scores = queries @ block.T
        part = select_topn(scores, min(n, block.shape[0]))
        best_pos, best_scores = _merge_topn(
            best_pos, best_scores, part + start, np.take_along_axis(scores, part, axis=1), n
        )
    return _sorted(best_pos, best_scores)


def rescore_topn(candidates: np.ndarray, vectors: np.ndarray, queries: np.ndarray, n: int) -> tuple[
    np.ndarray, np.ndarray
]:
    """The n best of each query's candidate positions by dot product with `vectors` (float, or int8 codes
    scored with int8 query weights): (positions, scores), best first."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    rescored = np.einsum("qd,qsd->qs", queries, np.asarray(vectors[candidates], dtype=np.float32))
    n = min(n, candidates.shape[1])
    keep = np.argpartition(-rescored, n - 1, axis=1)[:, :n]
    return _sorted(np.take_along_axis(candidates, keep, axis=1), np.take_along_axis(rescored, keep, axis=1))


def funnel_topn(
    small: np.ndarray, full: np.ndarray, q_small: np.ndarray, q_full: np.ndarray, n: int, shortlist: int,
    first_stage: TopN = exact_topn,
) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive retrieval: exact top-`shortlist` on the small vectors (nested, or quantised with the
    matching `first_stage`), then exact full-size scores on the shortlist only. Returns (positions,
    full-size scores), best first."""
    candidates, _ = first_stage(small, q_small, max(shortlist, n))
    return rescore_topn(candidates, full, q_full, n)


def scan_topn(store: TableStore, column: str, queries: np.ndarray, n: int, search: TopN = exact_topn) -> tuple[
    np.ndarray, np.ndarray
]:
    """Exact top-n over a table column for many queries at once, streaming the column in batches:
    memory stays at one batch plus (queries x n), whatever the table size. `search` ranks one batch's
    matrix (as stored: float32, int8 or packed bits) for the queries, higher scores first."""
    from operators.quantize import vector_matrix

    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    best_pos = np.zeros((queries.shape[0], 0), dtype=np.int64)
    best_scores = np.zeros((queries.shape[0], 0), dtype=np.float32)
    start = 0
    for batch in store.scan([column]):
        vectors = batch.column(0)
        if vectors.null_count:
            msg = "vector column has null rows; re-embed those rows"
            raise ValueError(msg)
        matrix = vector_matrix(vectors, vectors.type.value_type.to_pandas_dtype())
        for first in range(0, queries.shape[0], QUERY_BLOCK):
            block = slice(first, first + QUERY_BLOCK)
            positions, scores = search(matrix, queries[block], n)
            merged = _merge_topn(best_pos[block], best_scores[block], positions + start, scores, n)
            if first == 0:
                new_pos = np.zeros((queries.shape[0], merged[0].shape[1]), dtype=np.int64)
                new_scores = np.zeros((queries.shape[0], merged[0].shape[1]), dtype=np.float32)
            new_pos[block], new_scores[block] = merged
        best_pos, best_scores = new_pos, new_scores
        start += matrix.shape[0]
    return _sorted(best_pos, best_scores)
