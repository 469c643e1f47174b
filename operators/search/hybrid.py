"""Fusing BGE-M3's three scores: its weighted sum, or reciprocal-rank fusion.

Weighted (BGE-M3, FlagEmbedding `compute_score`): (w1*dense + w2*sparse + w3*colbert) / (w1 + w2 + w3).
With no ColBERT column the third term drops out, which is FlagEmbedding's "sparse+dense" score.
RRF (Cormack et al. 2009): sum over modes of w_m / (60 + rank_m), rank_m counted from 1 within the
candidates by that mode's score; a candidate sharing no token with the query has no sparse rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from operators.errors import UsageError

DENSE_MODE = "dense"
SPARSE_MODE = "sparse"
COLBERT_MODE = "colbert"
MODES = (DENSE_MODE, SPARSE_MODE, COLBERT_MODE)  # BGE-M3's weight order
DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)  # FlagEmbedding README's example
RRF_K = 60
WEIGHTED = "weighted"
RRF = "rrf"
FUSIONS = (WEIGHTED, RRF)


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
    """BGE-M3's hybrid score (operators.scoring.hybrid_scores); modes without weight may be absent."""
    from operators import scoring

    per_mode = [scores.get(mode) if weights.get(mode, 0.0) > 0 else None for mode in MODES]
    return scoring.hybrid_scores(*per_mode, weights=[weights.get(mode, 0.0) for mode in MODES])


def ranks(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1-based rank of each candidate by score (highest first, ties by id)."""
    order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), str(ids[i])))
    result = np.empty(len(ids), dtype=np.int64)
    result[order] = np.arange(1, len(ids) + 1)
    return result


def rrf_scores(ids: np.ndarray, scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
               k: int = RRF_K) -> np.ndarray:
    fused = np.zeros(len(ids), dtype=np.float64)
    for mode, weight in weights.items():
        if weight == 0:
            continue
        values = np.asarray(scores[mode])
        ranked = ranks(ids, values)
        contribution = weight / (k + ranked)
        if mode == SPARSE_MODE:
            contribution = np.where(values > 0, contribution, 0.0)
        fused += contribution
    return fused


def fuse(ids: np.ndarray, scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
         fusion: str = WEIGHTED) -> np.ndarray:
    if fusion == WEIGHTED:
        return weighted_scores(scores, weights)
    if fusion == RRF:
        return rrf_scores(ids, scores, weights)
    msg = f"unknown fusion {fusion!r} (choose from {', '.join(FUSIONS)})"
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
