"""Semantic textual similarity (the STS protocol): does the similarity of two texts' vectors order pairs
the way people scored them, at every nested size?

Pairs (text_a, text_b, score) come from Parquet; both texts are encoded by the table's encoder with the
same prompt (the query prompt: E5-style models ask for "query: " on both sides of a symmetric task; a
model without prompts encodes them plainly). For each dense column (`dense` and every `dense_<d>`, the
first d dims re-normalised, as the table stores them) the cosine of each pair is compared with the human
scores by Spearman's rank correlation (STS's headline figure, MTEB's `cosine_spearman`) and Pearson's
linear correlation, both from `scipy.stats`. Tables with BGE-M3's sparse and ColBERT outputs also get
those similarities (lexical matching, MaxSim), computed as FlagEmbedding does (operators/scoring.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from operators import scoring
from operators.figures import save_figure
from operators.schema import COLBERT, DENSE, SPARSE, nested_dim, require_columns
from operators.scoring import QueryVectors

TEXT_A = "text_a"
TEXT_B = "text_b"
SCORE = "score"
SPEARMAN = "spearman"
PEARSON = "pearson"


@dataclass
class ScoredPairs:
    text_a: list[str]
    text_b: list[str]
    scores: np.ndarray


def load_pairs(path: str) -> ScoredPairs:
    """(text_a, text_b, score) rows; a one-line error for missing columns, empty texts or scores."""
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:
        msg = f"cannot read {path}: {error}"
        raise ValueError(msg) from error
    require_columns(table.schema, [TEXT_A, TEXT_B, SCORE], path, "--pairs needs text_a, text_b, score")
    text_a, text_b = table.column(TEXT_A).to_pylist(), table.column(TEXT_B).to_pylist()
    raw = table.column(SCORE).to_pylist()
    for name, values in ((TEXT_A, text_a), (TEXT_B, text_b)):
        if any(not isinstance(value, str) or not value.strip() for value in values):
            msg = f"{path}: some {name} values are null, empty or not text"
            raise ValueError(msg)
    try:
        scores = np.asarray([float(value) for value in raw], dtype=np.float64)
    except (TypeError, ValueError) as error:
        msg = f"{path}: every score must be a number"
        raise ValueError(msg) from error
    if not np.isfinite(scores).all():
        msg = f"{path}: some scores are not finite"
        raise ValueError(msg)
    if len(scores) < 3:
        msg = f"{path} has {len(scores)} pairs; a correlation needs at least 3"
        raise ValueError(msg)
    return ScoredPairs(text_a, text_b, scores)


def pair_similarities(left: Sequence[QueryVectors], right: Sequence[QueryVectors]) -> dict[str, np.ndarray]:
    """Each pair's similarity under every representation both sides have: cosine per dense column
    (vectors are unit length), lexical matching for sparse, MaxSim for ColBERT."""
    similarities: dict[str, np.ndarray] = {}
    if not left:
        return similarities
    for column in left[0].dense:
        a = np.stack([vectors.dense[column] for vectors in left]).astype(np.float64)  # no float32 rounding in
        b = np.stack([vectors.dense[column] for vectors in right]).astype(np.float64)  # the ranks of near ties
        similarities[column] = np.einsum("ij,ij->i", a, b)
    if left[0].sparse is not None:
        similarities[SPARSE] = np.asarray([
            scoring.sparse_score((a.sparse.indices, a.sparse.values), (b.sparse.indices, b.sparse.values))
            for a, b in zip(left, right, strict=True)])
    if left[0].colbert is not None:
        similarities[COLBERT] = np.asarray([scoring.colbert_score(a.colbert, b.colbert)
                                            for a, b in zip(left, right, strict=True)])
    return similarities


def correlations(similarities: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Spearman and Pearson correlation of similarities with human scores (None when undefined: a
    constant input has no correlation)."""
    from scipy.stats import pearsonr, spearmanr

    if np.ptp(similarities) == 0 or np.ptp(scores) == 0:
        return {SPEARMAN: None, PEARSON: None}
    return {SPEARMAN: _finite(spearmanr(similarities, scores).statistic),
            PEARSON: _finite(pearsonr(similarities, scores).statistic)}


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate_pairs(encode, pairs: ScoredPairs) -> dict:
    """{"pairs": n, "<column>": {"spearman", "pearson"}, ...} for every representation the encoder gives.
    `encode(texts) -> list[QueryVectors]` is the table's encoder (Retriever.encode)."""
    left, right = encode(pairs.text_a), encode(pairs.text_b)
    result: dict = {"pairs": len(pairs.scores), "dims": {name: int(len(vector))
                                                          for name, vector in left[0].dense.items()}}
    for column, values in pair_similarities(left, right).items():
        result[column] = correlations(values, pairs.scores)
    return result


def plot_sts(result: dict, path: str, title: str = "") -> str:
    """Spearman and Pearson against nested size (dense_<d> and dense), other representations as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = sorted((nested_dim(name) or _full_dim(result), name) for name in result
                   if isinstance(result[name], dict) and (name == DENSE or nested_dim(name) is not None))
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    if dense:
        sizes = [size for size, _ in dense]
        for metric in (SPEARMAN, PEARSON):
            values = [result[name][metric] for _, name in dense]
            axis.plot(sizes, [np.nan if v is None else v for v in values], marker="o", label=metric)
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(size) for size in sizes])
    for offset, name in enumerate(name for name in (SPARSE, COLBERT) if isinstance(result.get(name), dict)):
        value = result[name][SPEARMAN]
        if value is not None:
            axis.axhline(value, linestyle=":", color=f"C{offset + 2}", label=f"{SPEARMAN}, {name}")
    axis.set_xlabel("nested size d (dense_<d>; rightmost = dense)")
    axis.set_ylabel("correlation with human scores")
    axis.set_title(f"STS ({result.get('pairs', 0)} pairs){': ' + title if title else ''}")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def _full_dim(result: dict) -> int:
    """Where `dense` sits on the size axis: its own dimension when the report has it, else above the
    largest nested size."""
    if isinstance(result.get("dims"), dict) and DENSE in result["dims"]:
        return int(result["dims"][DENSE])
    nested = [nested_dim(name) for name in result if nested_dim(name) is not None]
    return 2 * max(nested) if nested else 1


def sts_report(retriever, pairs_path: str, plot_path: str | None = None, title: str = "") -> dict:
    """`evaluate --pairs`: the STS figures of every representation the table's encoder gives, and the plot."""
    result = evaluate_pairs(retriever.encode, load_pairs(pairs_path))
    result["source"] = pairs_path
    if plot_path:
        result["plot"] = plot_sts(result, plot_path, title)
    return result
