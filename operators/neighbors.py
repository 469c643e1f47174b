"""Every row's k nearest neighbours by dot product (cosine on the stored unit vectors): the k-NN graph
recommenders and dedup reviewers use, and the operators `embedlake neighbors` runs in Ray workers.

- `ExactNeighbors`: a block of query rows against the whole column held in memory (small tables); the
  row itself is excluded and ties are broken by id, as `embedlake search` does, so the graph equals a
  brute-force top-k.
- `AnnNeighbors`: a block of query rows through the table's ANN index (LanceDB, several queries per call),
  each candidate rescored exactly from its stored vector, the row itself dropped.
- `SampleTopK`: exact top-k of a few sampled rows against one block of the table, the partial results the
  recall check merges; `recall_at_k` compares the graph with it.
Plain numpy and LanceDB, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from operators.schema import ID
from operators.search.dense import select_topn
from operators.vectors import as_matrix

NEIGHBOR = "neighbor"
RANK = "rank"
SCORE = "score"
QUERY = "query"
QUERY_BLOCK = 1024  # query rows scored together: a (1024 x rows) float32 block of scores
ANN_QUERIES_PER_CALL = 256  # queries per LanceDB search call (run concurrently inside Lance)

NEIGHBORS_SCHEMA = pa.schema([
    pa.field(ID, pa.string(), nullable=False),
    pa.field(NEIGHBOR, pa.string(), nullable=False),
    pa.field(RANK, pa.int32(), nullable=False),  # 1 = nearest
    pa.field(SCORE, pa.float32()),  # dot product = cosine similarity on unit vectors
])


def neighbors_table_name(table: str) -> str:
    return f"{table}_neighbors"


def id_ranks(ids: np.ndarray) -> np.ndarray:
    """Each row's position in id order: ties in score are broken by the smaller id."""
    order = np.argsort(ids.astype(str), kind="stable")
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[order] = np.arange(len(ids))
    return ranks


def ordered_topk(scores: np.ndarray, ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column positions of the k best scores of each row, best first, equal scores by `ranks` (id order):
    (positions, scores). Exact even when ties straddle the k-th place. Scores of -inf never qualify."""
    rows, width = scores.shape
    k = min(k, width)
    if k == 0 or rows == 0:
        return np.zeros((rows, 0), dtype=np.int64), np.zeros((rows, 0), dtype=np.float32)
    picked = select_topn(scores, k)
    picked_scores = np.take_along_axis(scores, picked, axis=1)
    kth = picked_scores.min(axis=1)
    # rows where a score equal to the k-th best was left out: the id decides who gets in
    crowded = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
    for row in crowded:
        candidates = np.flatnonzero(scores[row] >= kth[row])
        order = np.lexsort((ranks[candidates], -scores[row, candidates]))[:k]
        picked[row] = candidates[order]
        picked_scores[row] = scores[row, picked[row]]
    order = np.lexsort((ranks[picked], -picked_scores), axis=-1)
    positions = np.take_along_axis(picked, order, axis=1)
    return positions, np.take_along_axis(picked_scores, order, axis=1)


def graph_rows(query_ids: Sequence[str], neighbor_ids: np.ndarray, scores: np.ndarray,
               valid: np.ndarray | None = None) -> pa.Table:
    """(id, neighbor, rank, score) rows from per-query neighbour lists (rows of equal length; `valid`
    marks the entries that exist when some queries found fewer than k)."""
    counts = neighbor_ids.shape[1] if neighbor_ids.ndim == 2 else 0
    valid = np.ones(neighbor_ids.shape, dtype=bool) if valid is None else valid
    ranks = np.cumsum(valid, axis=1)
    rows = np.repeat(np.arange(len(query_ids)), counts).reshape(neighbor_ids.shape)
    keep = valid.reshape(-1)
    return pa.table({
        ID: pa.array(np.asarray(query_ids, dtype=object)[rows.reshape(-1)[keep]], type=pa.string()),
        NEIGHBOR: pa.array(neighbor_ids.reshape(-1)[keep], type=pa.string()),
        RANK: pa.array(ranks.reshape(-1)[keep], type=pa.int32()),
        SCORE: pa.array(scores.reshape(-1)[keep], type=pa.float32()),
    }, schema=NEIGHBORS_SCHEMA)


class ExactNeighbors:
    """Exact top-k of query rows against every row of an in-memory (rows, dim) matrix, self excluded."""

    def __init__(self, matrix: np.ndarray, ids: np.ndarray, k: int) -> None:
        if k < 1:
            msg = f"--k must be at least 1, got {k}"
            raise ValueError(msg)
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.ids = np.asarray(ids, dtype=object)
        self.ranks = id_ranks(self.ids)
        self.position = {doc: i for i, doc in enumerate(self.ids.tolist())}
        self.k = k

    def search(self, queries: np.ndarray, query_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour positions, scores), (queries, min(k, rows - 1)), best first, ties by id."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        own = np.asarray([self.position.get(doc, -1) for doc in query_ids], dtype=np.int64)
        k = min(self.k, max(len(self.ids) - 1, 0))
        positions = np.zeros((len(queries), k), dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        for start in range(0, len(queries), QUERY_BLOCK):
            block = slice(start, start + QUERY_BLOCK)
            block_scores = queries[block] @ self.matrix.T
            rows = np.flatnonzero(own[block] >= 0)
            block_scores[rows, own[block][rows]] = -np.inf
            positions[block], scores[block] = ordered_topk(block_scores, self.ranks, k)
        return positions, scores

    def __call__(self, batch: pa.Table, column: str) -> pa.Table:
        query_ids = batch.column(ID).to_pylist()
        positions, scores = self.search(as_matrix(batch.column(column)), query_ids)
        return graph_rows(query_ids, self.ids[positions], scores)


@dataclass
class AnnNeighbors:
    """Top-k of query rows through a LanceDB table's ANN index on `column`, self excluded, scores exact.

    The index proposes `k + 1` rows per query (one may be the query itself) with its search parameters
    (nprobes, refine_factor from operators/search/index_plan.py); each is rescored by the dot product of
    the stored vectors, then ordered by score and id."""

    table: object  # a LanceDB table, checked out at the version being read
    column: str
    k: int
    metric: str  # the index's distance type: it ranks unit vectors as the dot product does
    nprobes: int | None = None
    refine_factor: int | None = None
    queries_per_call: int = ANN_QUERIES_PER_CALL

    def candidates(self, queries: np.ndarray) -> pa.Table:
        """(query index, id, vector) of the index's k + 1 proposals for each query."""
        builder = (self.table.search(list(queries), vector_column_name=self.column)
                   .distance_type(self.metric).limit(self.k + 1).select([ID, self.column, "_distance"]))
        if self.nprobes:
            builder = builder.nprobes(self.nprobes)
        if self.refine_factor:
            builder = builder.refine_factor(self.refine_factor)
        found = builder.to_arrow()
        if "query_index" not in found.column_names:  # a single query comes back without the index column
            found = found.append_column("query_index", pa.array(np.zeros(found.num_rows, dtype=np.int64)))
        return found

    def __call__(self, batch: pa.Table, column: str | None = None) -> pa.Table:
        query_ids = np.asarray(batch.column(ID).to_pylist(), dtype=object)
        queries = as_matrix(batch.column(self.column))
        parts = []
        for start in range(0, len(queries), self.queries_per_call):
            block = slice(start, start + self.queries_per_call)
            parts.append(self._block(queries[block], query_ids[block]))
        if not parts:
            return NEIGHBORS_SCHEMA.empty_table()
        return pa.concat_tables(parts)

    def _block(self, queries: np.ndarray, query_ids: np.ndarray) -> pa.Table:
        found = self.candidates(queries)
        which = np.asarray(found.column("query_index").to_numpy(), dtype=np.int64)
        ids = np.asarray(found.column(ID).to_pylist(), dtype=object)
        vectors = as_matrix(found.column(self.column))
        scores = np.einsum("ij,ij->i", vectors, queries[which])
        keep = ids != query_ids[which]
        which, ids, scores = which[keep], ids[keep], scores[keep]
        order = np.lexsort((ids.astype(str), -scores, which))  # by query, best first, then id
        which, ids, scores = which[order], ids[order], scores[order]
        starts = np.searchsorted(which, np.arange(len(queries)))
        rank = np.arange(len(which)) - starts[which] + 1
        keep = rank <= self.k
        return pa.table({
            ID: pa.array(query_ids[which[keep]], type=pa.string()),
            NEIGHBOR: pa.array(ids[keep], type=pa.string()),
            RANK: pa.array(rank[keep], type=pa.int32()),
            SCORE: pa.array(scores[keep], type=pa.float32()),
        }, schema=NEIGHBORS_SCHEMA)


class SampleTopK:
    """Exact top-k of a few sampled rows against one batch of the table (self excluded): the batch's
    (query, id, score) candidates, at most k per sample row; the best k of every batch's candidates
    (`best_of`) are each sample row's true neighbours. Scores a chunk of rows at a time, so memory is
    (sample x chunk) whatever the batch size."""

    def __init__(self, vectors: np.ndarray, ids: Sequence[str], column: str, k: int,
                 chunk_rows: int = 65536) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.ids = list(ids)
        self.column = column
        self.k = k
        self.chunk_rows = chunk_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        step = self.chunk_rows
        parts = [self._chunk(batch.slice(start, step)) for start in range(0, batch.num_rows, step)]
        return best_of(parts, self.k) if parts else best_of([self._chunk(batch)], self.k)

    def _chunk(self, batch: pa.Table) -> pa.Table:
        block_ids = np.asarray(batch.column(ID).to_pylist(), dtype=object)
        scores = self.vectors @ as_matrix(batch.column(self.column)).T
        own = {doc: i for i, doc in enumerate(block_ids.tolist())}
        for q, doc in enumerate(self.ids):
            if doc in own:
                scores[q, own[doc]] = -np.inf
        positions, best = ordered_topk(scores, id_ranks(block_ids), self.k)
        finite = np.isfinite(best)
        query = np.repeat(np.arange(len(self.ids)), positions.shape[1]).reshape(positions.shape)
        return pa.table({QUERY: pa.array(query[finite], type=pa.int32()),
                         ID: pa.array(block_ids[positions[finite]], type=pa.string()),
                         SCORE: pa.array(best[finite], type=pa.float32())})


def best_of(parts: Sequence[pa.Table], k: int) -> pa.Table:
    """The k best (query, id, score) rows of each query over several candidate tables, best first, ties by id."""
    rows = pa.concat_tables(parts)
    query = rows.column(QUERY).to_numpy()
    ids = np.asarray(rows.column(ID).to_pylist(), dtype=str)
    order = np.lexsort((ids, -rows.column(SCORE).to_numpy(), query))
    query = query[order]
    starts = np.searchsorted(query, query, side="left")
    keep = order[np.arange(len(order)) - starts < k]
    return rows.take(pa.array(keep))


def recall_at_k(found: dict[str, list[str]], truth: dict[str, list[str]], k: int) -> float:
    """Mean over sampled rows of |graph's top-k ∩ exact top-k| / |exact top-k|."""
    values = [len(set(found.get(doc, [])[:k]) & set(exact[:k])) / len(exact[:k])
              for doc, exact in truth.items() if exact]
    return float(np.mean(values)) if values else float("nan")
