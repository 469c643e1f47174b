"""Retrieval quality of a model on held-out pairs, at every nested size, the way embedlake will use it.

Anchors are queries (query prompt), the distinct positives the corpus (document prompt); each anchor's
own positives are its relevant documents. Vectors come from our MatryoshkaEncoder, the encoder `embed`
and `search` use, so the figures are those of the stored columns; metrics are operators/metrics.py's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from operators.metrics import evaluate_run
from operators.schema import DENSE
from operators.scoring import top_k
from operators.training.pairs import ANCHOR, POSITIVE
from operators.vectors import as_matrix

K = 10
MAX_HOLDOUT_EVAL = 10_000  # held-out pairs scored (the first ones, in file order): bounded report cost
QUERY_BATCH = 1024


def holdout_qrels(pairs: pa.Table) -> tuple[list[str], list[str], list[str], dict[str, dict[str, int]]]:
    """(query ids, query texts, document texts, qrels): one query per distinct anchor, one document per
    distinct positive; document ids are positions in the document list."""
    anchors, positives = pairs[ANCHOR].to_pylist(), pairs[POSITIVE].to_pylist()
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for anchor, positive in zip(anchors, positives, strict=True):
        doc = doc_ids.setdefault(positive, str(len(doc_ids)))
        query = query_ids.setdefault(anchor, f"q{len(query_ids)}")
        qrels.setdefault(query, {})[doc] = 1
    return list(query_ids.values()), list(query_ids), list(doc_ids), qrels


def evaluate_model(folder: str, pairs: pa.Table, dims: Sequence[int], max_length: int | None = None,
                   k: int = K) -> dict[str, dict[str, float]]:
    """{"dense": {recall@k, mrr@k, ndcg@k}, "dense_<d>": {...}, ...} of one model on the pairs."""
    from operators.encoders.mrl import MatryoshkaEncoder

    query_ids, queries, documents, qrels = holdout_qrels(pairs)
    encoder = MatryoshkaEncoder(folder, dims=list(dims), max_length=max_length)
    query_columns = encoder.encode(queries, prompt_name="query").columns
    doc_columns = encoder.encode(documents, prompt_name="document").columns
    results = {}
    for column in [DENSE, *[f"{DENSE}_{d}" for d in encoder.dims]]:
        run = ranked(as_matrix(query_columns[column]), as_matrix(doc_columns[column]), query_ids, k)
        results[column] = evaluate_run(run, qrels, query_ids, k).as_dict()
    return results


def ranked(queries: np.ndarray, documents: np.ndarray, query_ids: list[str], k: int) -> dict:
    """Exact top-k by dot product (unit vectors), ties broken by document id as search does."""
    run = {}
    doc_ids = [str(i) for i in range(documents.shape[0])]
    for start in range(0, len(query_ids), QUERY_BATCH):
        scores = queries[start:start + QUERY_BATCH] @ documents.T
        for row, query_scores in enumerate(scores):
            run[query_ids[start + row]] = [(doc_ids[i], float(query_scores[i]))
                                           for i in top_k(doc_ids, query_scores, k)]
    return run
