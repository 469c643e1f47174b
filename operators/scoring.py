"""BGE-M3 relevance scores between a query and passages, as FlagEmbedding defines them, in numpy.

- dense:   q . p (both unit length, so cosine)
- sparse:  sum over token ids present in both of w_q[t] * w_p[t] (lexical matching)
- colbert: for each query vector the max dot product over the passage's vectors, summed, divided by the
           number of query vectors (MaxSim averaged over query tokens)
- hybrid:  (w1*dense + w2*sparse + w3*colbert) / (w1 + w2 + w3)

The many-passage variants work on the flat buffers of the Arrow columns the encoder writes
(`sparse` struct<indices, values>, `colbert` list<fixed_size_list<float16>>), so scoring a shortlist
of thousands of passages is a few numpy calls, not a Python loop per passage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

# One text's lexical weights: {token id (int or str, as FlagEmbedding returns): weight},
# {"indices": [...], "values": [...]} (a row of our `sparse` column), or an (indices, values) pair.
LexicalWeights = Mapping[Any, float] | tuple[Sequence[int], Sequence[float]]
DEFAULT_WEIGHTS = (1.0, 1.0, 1.0)  # FlagEmbedding's default; its README's example is (0.4, 0.2, 0.4)


def dense_scores(q: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """Inner products: q (D,) -> (N,); q (Q, D) -> (Q, N)."""
    return np.asarray(q, dtype=np.float32) @ np.asarray(passages, dtype=np.float32).T


def _lexical_arrays(weights: LexicalWeights | pa.Scalar) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 sorted unique, weights float32) from any accepted form of one text's lexical weights."""
    if isinstance(weights, pa.Scalar):
        weights = weights.as_py() or {"indices": [], "values": []}
    if isinstance(weights, Mapping) and set(weights) == {"indices", "values"}:
        ids, values = weights["indices"], weights["values"]
    elif isinstance(weights, Mapping):
        ids, values = [int(key) for key in weights], list(weights.values())
    else:
        ids, values = weights
    ids = np.asarray(ids, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    if ids.shape != values.shape:
        msg = f"lexical weights need as many values as ids, got {ids.shape} and {values.shape}"
        raise ValueError(msg)
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    if len(ids) > 1 and (np.diff(ids) == 0).any():
        msg = "lexical weights repeat a token id; BGE-M3 keeps one (max) weight per id"
        raise ValueError(msg)
    return ids, values


def _match(q_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each id in `ids`: whether the query has it, and where (q_ids sorted)."""
    if len(q_ids) == 0:
        return np.zeros(len(ids), dtype=bool), np.zeros(len(ids), dtype=np.int64)
    position = np.minimum(np.searchsorted(q_ids, ids), len(q_ids) - 1)
    return q_ids[position] == ids, position


def sparse_score(q_weights: LexicalWeights, p_weights: LexicalWeights) -> float:
    """Lexical matching score of one query and one passage."""
    q_ids, q_values = _lexical_arrays(q_weights)
    p_ids, p_values = _lexical_arrays(p_weights)
    hit, position = _match(q_ids, p_ids)
    return float(np.dot(q_values[position[hit]], p_values[hit]))


def sparse_scores(q_weights: LexicalWeights, passages: pa.Array | pa.ChunkedArray | Iterable) -> np.ndarray:
    """Lexical matching score of one query against many passages -> (N,) float32.

    `passages`: our `sparse` Arrow column (struct<indices, values>), or a list of any per-text form.
    """
    q_ids, q_values = _lexical_arrays(q_weights)
    if isinstance(passages, pa.ChunkedArray):
        passages = passages.combine_chunks()
    if isinstance(passages, pa.StructArray):
        # StructArray.flatten() folds the struct's nulls into its children, and ListArray.flatten()
        # skips null lists, so a null row contributes no entries and scores 0.
        indices, values = passages.flatten()
        lengths = indices.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        ids = indices.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        weights = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if len(ids) != lengths.sum() or len(weights) != len(ids):
            msg = "sparse column rows need as many values as indices"
            raise ValueError(msg)
    else:
        parts = [_lexical_arrays(item) for item in passages]
        lengths = np.array([len(part[0]) for part in parts], dtype=np.int64)
        ids = np.concatenate([part[0] for part in parts]) if parts else np.zeros(0, np.int64)
        weights = np.concatenate([part[1] for part in parts]) if parts else np.zeros(0, np.float32)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    hit, position = _match(q_ids, ids)
    products = q_values[position[hit]].astype(np.float64) * weights[hit]
    return np.bincount(owner[hit], weights=products, minlength=len(lengths)).astype(np.float32)


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


def hybrid_scores(
    dense: np.ndarray | float | None,
    sparse: np.ndarray | float | None,
    colbert: np.ndarray | float | None,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
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
    for name, scores, weight in zip(
        ("dense", "sparse", "colbert"), (dense, sparse, colbert), weights, strict=True
    ):
        if weight == 0:
            continue
        if scores is None:
            msg = f"hybrid weight for {name} is {weight} but no {name} scores were given"
            raise ValueError(msg)
        combined = combined + weight * np.asarray(scores, dtype=np.float64)
    return (np.asarray(combined) / total).astype(np.float32)
