"""Retrieval quality metrics: Recall@k, MRR@k and nDCG@k, as the textbooks and trec_eval define them.

Conventions (each chosen so our numbers compare with published ones):

- **Ranking.** A run gives each query a list of (doc_id, score). Documents are ranked by score, highest first;
  ties are broken by doc id (ascending string order), so a run always yields one ranking, whatever order it
  came in. Only the first k ranks count.
- **Relevance.** A qrels entry with relevance > 0 is relevant; 0 or negative is judged non-relevant.
- **Recall@k** = |relevant docs in the top k| / |relevant docs| (all judged relevant docs, retrieved or not).
- **MRR@k** = 1 / rank of the first relevant doc in the top k, 0 when none is there (reciprocal rank, averaged).
- **nDCG@k** (Järvelin & Kekäläinen 2002; trec_eval `ndcg_cut`, pytrec_eval, BEIR, MTEB and BGE-M3's paper):
  DCG@k = sum over ranks i = 1..k of gain(rel_i) / log2(i + 1), with linear gain rel_i (graded relevance);
  IDCG@k = the DCG@k of the judged relevant docs sorted by relevance; nDCG@k = DCG@k / IDCG@k.
  `gain="exponential"` gives Burges et al.'s 2^rel - 1 instead (same value when relevance is binary).
- **Queries without relevant docs** cannot be scored (recall and nDCG are 0/0). They are left out of the means
  and counted (`queries_without_relevant`), like trec_eval, which evaluates only queries that have judgments.
  A query that has relevant docs but no results scores 0 on every metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Ranking = Sequence[tuple[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

RECALL = "recall"
MRR = "mrr"
NDCG = "ndcg"
METRICS = (RECALL, MRR, NDCG)


def metric_name(metric: str, k: int) -> str:
    return f"{metric}@{k}"


def rank(results: Iterable[tuple[str, float]]) -> list[str]:
    """Doc ids ordered by score (highest first), ties broken by doc id."""
    return [doc for doc, _score in sorted(results, key=lambda pair: (-pair[1], pair[0]))]


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    relevant = {doc for doc, rel in relevance.items() if rel > 0}
    if not relevant:
        return math.nan
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    if not any(rel > 0 for rel in relevance.values()):
        return math.nan
    for position, doc in enumerate(ranked[:k], start=1):
        if relevance.get(doc, 0) > 0:
            return 1.0 / position
    return 0.0


def _gain(rel: int, gain: str) -> float:
    if rel <= 0:
        return 0.0
    if gain == "linear":
        return float(rel)
    if gain == "exponential":
        return 2.0**rel - 1.0
    msg = f"unknown gain {gain!r} (linear or exponential)"
    raise ValueError(msg)


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(position + 1) for position, g in enumerate(gains, start=1))


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int, gain: str = "linear") -> float:
    ideal = sorted((_gain(rel, gain) for rel in relevance.values() if rel > 0), reverse=True)[:k]
    if not ideal:
        return math.nan
    actual = [_gain(relevance.get(doc, 0), gain) for doc in ranked[:k]]
    return dcg(actual) / dcg(ideal)


@dataclass
class Evaluation:
    """Mean metrics over the queries that have relevant docs, and how many had none."""

    k: int
    means: dict[str, float]
    queries: int
    queries_without_relevant: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.means)


def evaluate_run(
    run: Mapping[str, Iterable[tuple[str, float]]],
    qrels: Qrels,
    query_ids: Iterable[str],
    k: int,
    gain: str = "linear",
) -> Evaluation:
    """Mean Recall@k, MRR@k and nDCG@k of a run over `query_ids` (missing run entries = no results)."""
    if k < 1:
        msg = f"k must be at least 1, got {k}"
        raise ValueError(msg)
    totals = dict.fromkeys(METRICS, 0.0)
    scored = 0
    without = 0
    for query_id in query_ids:
        relevance = qrels.get(query_id, {})
        if not any(rel > 0 for rel in relevance.values()):
            without += 1
            continue
        ranked = rank(run.get(query_id, ()))
        totals[RECALL] += recall_at_k(ranked, relevance, k)
        totals[MRR] += mrr_at_k(ranked, relevance, k)
        totals[NDCG] += ndcg_at_k(ranked, relevance, k, gain)
        scored += 1
    means = {metric_name(m, k): (totals[m] / scored if scored else math.nan) for m in METRICS}
    return Evaluation(k=k, means=means, queries=scored, queries_without_relevant=without)


def qrels_from_rows(query_ids: Iterable[str], doc_ids: Iterable[str], relevance: Iterable[int]) -> dict:
    """qrels as {query_id: {doc_id: relevance}}; a repeated pair keeps its highest grade."""
    qrels: dict[str, dict[str, int]] = {}
    for query_id, doc_id, rel in zip(query_ids, doc_ids, relevance, strict=True):
        judged = qrels.setdefault(str(query_id), {})
        judged[str(doc_id)] = max(int(rel), judged.get(str(doc_id), int(rel)))
    return qrels


def json_safe(value: object) -> object:
    """`value` with every NaN or infinite float (an undefined mean: no query to average) as None, so that
    reports and --json lines are valid JSON (`null`), which `NaN` is not."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
