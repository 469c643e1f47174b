"""BGE-M3's relevance scores, as FlagEmbedding defines them, and their fusion, in numpy.

- dense:   q . p (both unit length, so cosine)
- sparse:  sum over token ids present in both of w_q[t] * w_p[t] (lexical matching); a text's lexical
           weights hold one weight per token id, the max when an id repeats (FlagEmbedding's
           `_process_token_weights`), whatever form they come in
- colbert: for each query vector the max dot product over the passage's vectors, summed, divided by the
           number of query vectors (MaxSim averaged over query tokens)
- hybrid:  (w1*dense + w2*sparse + w3*colbert) / (w1 + w2 + w3), or reciprocal-rank fusion (Cormack et al.
           2009): sum over modes of w_m / (60 + rank_m), rank_m counted from 1 within the candidates by that
           mode's score; a candidate sharing no token with the query has no sparse rank.

Every function takes the query first, then the passages (FlagEmbedding's `compute_score(q, p)` order).
The many-passage variants work on the flat buffers of the Arrow columns the encoder writes (`sparse`
struct<indices, values>, `colbert` list<fixed_size_list<float16>>), so scoring a shortlist of thousands of
passages is a few numpy calls, not a Python loop per passage. Rankings break ties by id, so every result
is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa

from operators.errors import UsageError
from operators.schema import COLBERT, DENSE, SPARSE
from operators.vectors import ragged_lengths, sparse_children

DENSE_MODE, SPARSE_MODE, COLBERT_MODE = DENSE, SPARSE, COLBERT
MODES = (DENSE_MODE, SPARSE_MODE, COLBERT_MODE)  # BGE-M3's weight order
# What `search --mode hybrid` and `evaluate` weigh the modes by: FlagEmbedding README's example. (Its
# `compute_score` defaults to (1, 1, 1); pass that explicitly for its numbers.)
DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)
RRF_K = 60


class Fusion(StrEnum):
    WEIGHTED = "weighted"  # BGE-M3's weighted sum
    RRF = "rrf"  # reciprocal-rank fusion


# One text's lexical weights: {token id (int or str, as FlagEmbedding returns): weight},
# {"indices": [...], "values": [...]} (a row of our `sparse` column), an (indices, values) pair, a
# SparseVector or a pyarrow scalar of the `sparse` column.
LexicalWeights = Mapping[Any, float] | tuple[Sequence[int], Sequence[float]]


@dataclass
class SparseVector:
    """Lexical weights of one text: sorted unique token ids, the max weight kept for an id that repeats."""

    indices: np.ndarray  # int64, sorted, unique
    values: np.ndarray  # float32

    @classmethod
    def from_pairs(cls, indices, values) -> SparseVector:
        indices = np.asarray(indices, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        if indices.shape != values.shape:
            msg = f"lexical weights need as many values as ids, got {indices.shape} and {values.shape}"
            raise ValueError(msg)
        if indices.size == 0:
            return cls(indices, values)
        order = np.lexsort((-values, indices))  # by id, highest weight first within an id
        indices, values = indices[order], values[order]
        first = np.ones(indices.size, dtype=bool)
        first[1:] = indices[1:] != indices[:-1]
        return cls(indices[first], values[first])

    @classmethod
    def of(cls, weights: LexicalWeights | SparseVector | pa.Scalar | None) -> SparseVector:
        """Any accepted form of one text's lexical weights (None or a null scalar: no weights)."""
        if isinstance(weights, SparseVector):
            return weights
        if isinstance(weights, pa.Scalar):
            weights = weights.as_py()
        if weights is None:
            return cls.from_pairs([], [])
        if isinstance(weights, Mapping) and set(weights) == {"indices", "values"}:
            return cls.from_pairs(weights["indices"], weights["values"])
        if isinstance(weights, Mapping):
            return cls.from_pairs([int(key) for key in weights], list(weights.values()))
        return cls.from_pairs(*weights)

    def __len__(self) -> int:
        return int(self.indices.size)


@dataclass
class QueryVectors:
    """One encoded query: a vector per dense column, lexical weights, ColBERT vectors (what the model gives)."""

    dense: dict[str, np.ndarray] = field(default_factory=dict)
    sparse: SparseVector | None = None
    colbert: np.ndarray | None = None  # (tokens, D) float32


# -- the three scores ----------------------------------------------------------------------------
def dense_scores(q: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """Inner products: q (D,) -> (N,); q (Q, D) -> (Q, N)."""
    return np.asarray(q, dtype=np.float32) @ np.asarray(passages, dtype=np.float32).T


def _match(q_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each id in `ids`: whether the query has it, and where (q_ids sorted)."""
    if len(q_ids) == 0:
        return np.zeros(len(ids), dtype=bool), np.zeros(len(ids), dtype=np.int64)
    position = np.minimum(np.searchsorted(q_ids, ids), len(q_ids) - 1)
    return q_ids[position] == ids, position


def sparse_score(q_weights: LexicalWeights | SparseVector, p_weights: LexicalWeights | SparseVector) -> float:
    """Lexical matching score of one query and one passage."""
    query, passage = SparseVector.of(q_weights), SparseVector.of(p_weights)
    hit, position = _match(query.indices, passage.indices)
    return float(np.dot(query.values[position[hit]], passage.values[hit]))


def sparse_scores(
    q_weights: LexicalWeights | SparseVector, passages: pa.Array | pa.ChunkedArray | Iterable
) -> np.ndarray:
    """Lexical matching score of one query against many passages -> (N,) float32 (0 for null rows).

    `passages`: our `sparse` Arrow column (struct<indices, values>), or a list of any per-text form.
    """
    query = SparseVector.of(q_weights)
    if isinstance(passages, pa.ChunkedArray):
        passages = passages.combine_chunks()
    if isinstance(passages, pa.StructArray):
        # The struct's nulls fold into its children, and ListArray.flatten() skips null lists, so a null
        # row contributes no entries and scores 0.
        indices, values = sparse_children(passages)
        lengths = ragged_lengths(indices)
        ids = indices.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        weights = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if len(ids) != lengths.sum() or len(weights) != len(ids):
            msg = "sparse column rows need as many values as indices"
            raise ValueError(msg)
        owner = np.repeat(np.arange(len(lengths)), lengths)
        owner, ids, weights = _max_per_id(owner, ids, weights)
    else:
        rows = [SparseVector.of(item) for item in passages]
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        ids = np.concatenate([row.indices for row in rows]) if rows else np.zeros(0, np.int64)
        weights = np.concatenate([row.values for row in rows]) if rows else np.zeros(0, np.float32)
        owner = np.repeat(np.arange(len(lengths)), lengths)
    hit, position = _match(query.indices, ids)
    products = query.values[position[hit]].astype(np.float64) * weights[hit]
    return np.bincount(owner[hit], weights=products, minlength=len(lengths)).astype(np.float32)


def _max_per_id(owner: np.ndarray, ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """One (row, token id) entry each, with the max weight, as SparseVector keeps per text. Rows written by
    our encoder hold strictly ascending ids, which one comparison confirms without sorting."""
    same_row = owner[1:] == owner[:-1]
    if not (ids[1:][same_row] <= ids[:-1][same_row]).any():
        return owner, ids, weights
    order = np.lexsort((-weights, ids, owner))
    owner, ids, weights = owner[order], ids[order], weights[order]
    first = np.ones(ids.size, dtype=bool)
    first[1:] = (owner[1:] != owner[:-1]) | (ids[1:] != ids[:-1])
    return owner[first], ids[first], weights[first]


def colbert_score(q_vecs: np.ndarray, p_vecs: np.ndarray) -> float:
    """MaxSim averaged over query vectors, for one query (Q, D) and one passage (P, D)."""
    q = np.asarray(q_vecs, dtype=np.float32)
    p = np.asarray(p_vecs, dtype=np.float32)
    if len(q) == 0 or len(p) == 0:
        return 0.0
    return float((q @ p.T).max(axis=1).sum() / len(q))


def colbert_scores(
    q_vecs: np.ndarray, passages: pa.Array | pa.ChunkedArray | Sequence[np.ndarray],
    scales: pa.Array | pa.ChunkedArray | None = None,
) -> np.ndarray:
    """MaxSim score of one query (Q, D) against many passages -> (N,) float32.

    `passages`: our `colbert` Arrow column (list<fixed_size_list<float16|int8|uint8>[D]>, the stored
    precisions of operators/colbert_codec.py; `scales`: its per-token scales when int8) or a list of
    (P_i, D) arrays. All passage vectors are scored in one matrix product, then max-reduced per passage.
    A passage without vectors scores 0.
    """
    from operators.colbert_codec import flat_tokens

    q = np.asarray(q_vecs, dtype=np.float32)
    if isinstance(passages, pa.ListArray | pa.LargeListArray | pa.ChunkedArray):
        flat, lengths = flat_tokens(passages, scales)
    else:
        rows = [np.asarray(row, dtype=np.float32).reshape(-1, q.shape[-1]) for row in passages]
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        flat = np.concatenate(rows) if rows else np.zeros((0, q.shape[-1]), np.float32)
    scores = np.zeros(len(lengths), dtype=np.float32)
    present = lengths > 0
    if len(q) == 0 or not present.any():
        return scores
    similarities = flat @ q.T  # (all passage vectors, Q)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[present]
    best = np.maximum.reduceat(similarities, starts, axis=0)  # (present passages, Q)
    scores[present] = best.sum(axis=1) / len(q)
    return scores


# -- fusion --------------------------------------------------------------------------------------
def hybrid_scores(
    dense: np.ndarray | float | None,
    sparse: np.ndarray | float | None,
    colbert: np.ndarray | float | None,
    weights: Sequence[float],
) -> np.ndarray:
    """(w1*dense + w2*sparse + w3*colbert) / (w1 + w2 + w3); a mode given as None must have weight 0."""
    if len(weights) != 3:
        msg = f"hybrid weights are (dense, sparse, colbert), got {list(weights)}"
        raise ValueError(msg)
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        msg = f"hybrid weights must be >= 0 with a positive sum, got {list(weights)}"
        raise ValueError(msg)
    combined: np.ndarray | float = 0.0
    for name, scores, weight in zip(MODES, (dense, sparse, colbert), weights, strict=True):
        if weight == 0:
            continue
        if scores is None:
            msg = f"hybrid weight for {name} is {weight} but no {name} scores were given"
            raise ValueError(msg)
        combined = combined + weight * np.asarray(scores, dtype=np.float64)
    return (np.asarray(combined) / total).astype(np.float32)


def parse_weights(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """`0.4,0.2,0.4` -> (0.4, 0.2, 0.4): dense, sparse, colbert (the last may be left out)."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        weights = tuple(float(part) for part in parts)
    except ValueError as error:
        msg = f"--weights must be 2 or 3 numbers (dense,sparse[,colbert]), got {text!r}"
        raise UsageError(msg) from error
    if len(weights) not in (2, 3) or any(w < 0 for w in weights) or sum(weights) <= 0:
        msg = f"--weights must be 2 or 3 non-negative numbers, sum > 0 (dense,sparse[,colbert]), got {text!r}"
        raise UsageError(msg)
    return weights


def mode_weights(weights: Sequence[float] | None, available: Sequence[str]) -> dict[str, float]:
    """Weights of the modes the table has (BGE-M3 order), defaults filled in; errors when all are zero."""
    chosen = tuple(weights) if weights is not None else DEFAULT_WEIGHTS
    chosen = chosen + (0.0,) * (len(MODES) - len(chosen))
    result = {mode: float(w) for mode, w in zip(MODES, chosen, strict=True) if mode in available}
    if sum(result.values()) <= 0:
        msg = f"hybrid weights {list(chosen)} give no weight to the modes this table has ({', '.join(available)})"
        raise ValueError(msg)
    return result


def weighted_scores(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """BGE-M3's hybrid score over the modes `weights` names; modes without weight may be absent."""
    per_mode = [scores.get(mode) if weights.get(mode, 0.0) > 0 else None for mode in MODES]
    return hybrid_scores(*per_mode, weights=[weights.get(mode, 0.0) for mode in MODES])


def rrf_scores(ids: np.ndarray, scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
               k: int = RRF_K) -> np.ndarray:
    fused = np.zeros(len(ids), dtype=np.float64)
    for mode, weight in weights.items():
        if weight == 0:
            continue
        values = np.asarray(scores[mode])
        contribution = weight / (k + ranks(ids, values))
        if mode == SPARSE_MODE:
            contribution = np.where(values > 0, contribution, 0.0)
        fused += contribution
    return fused


def fuse(ids: np.ndarray, scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
         fusion: str = Fusion.WEIGHTED) -> np.ndarray:
    if fusion == Fusion.WEIGHTED:
        return weighted_scores(scores, weights)
    if fusion == Fusion.RRF:
        return rrf_scores(ids, scores, weights)
    msg = f"unknown fusion {fusion!r} (choose from {', '.join(Fusion)})"
    raise ValueError(msg)


def weight_grid(modes: Sequence[str], step: float = 0.1) -> list[dict[str, float]]:
    """Every weight vector on the simplex with the given step (scale does not change the ranking)."""
    steps = round(1 / step)
    grid = []

    def fill(prefix: list[int], left: int, slots: int) -> None:
        if slots == 1:
            grid.append([*prefix, left])
            return
        for value in range(left + 1):
            fill([*prefix, value], left - value, slots - 1)

    fill([], steps, len(modes))
    return [{mode: count / steps for mode, count in zip(modes, row, strict=True)} for row in grid if sum(row) > 0]


# -- rankings ------------------------------------------------------------------------------------
def by_score(ids: Sequence | np.ndarray, scores: np.ndarray, positions: Iterable[int] | None = None) -> list[int]:
    """Positions (all, or those given) ordered by score, highest first, ties broken by id."""
    chosen = range(len(scores)) if positions is None else positions
    return sorted(chosen, key=lambda i: (-float(scores[i]), str(ids[i])))


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
    return np.asarray(by_score(ids, scores, keep.tolist())[:k], dtype=np.int64)


def ranks(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1-based rank of each candidate by score (highest first, ties by id)."""
    result = np.empty(len(ids), dtype=np.int64)
    result[by_score(ids, scores)] = np.arange(1, len(ids) + 1)
    return result
