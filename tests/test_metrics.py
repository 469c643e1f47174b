"""Recall@k, MRR@k and nDCG@k against cases worked out by hand, and nDCG against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from operators.metrics import evaluate_run, mrr_at_k, ndcg_at_k, qrels_from_rows, rank, recall_at_k


def test_one_relevant_doc_at_rank_three():
    ranked = ["x", "y", "a", "z"]
    relevance = {"a": 1}
    assert recall_at_k(ranked, relevance, 10) == 1.0
    assert recall_at_k(ranked, relevance, 2) == 0.0
    assert mrr_at_k(ranked, relevance, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, relevance, 2) == 0.0
    # DCG = 1/log2(3+1) = 0.5; IDCG = 1/log2(2) = 1
    assert ndcg_at_k(ranked, relevance, 10) == pytest.approx(0.5)


def test_several_graded_relevant_docs():
    ranked = ["x", "b", "a", "y", "c"]
    relevance = {"a": 3, "b": 2, "c": 1, "y": 0}
    assert recall_at_k(ranked, relevance, 5) == 1.0
    assert recall_at_k(ranked, relevance, 3) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, relevance, 5) == pytest.approx(1 / 2)
    # linear gain: DCG = 0 + 2/log2(3) + 3/log2(4) + 0 + 1/log2(6); IDCG = 3/1 + 2/log2(3) + 1/log2(4)
    dcg = 2 / math.log2(3) + 3 / 2 + 1 / math.log2(6)
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg_at_k(ranked, relevance, 5) == pytest.approx(dcg / idcg)
    assert dcg / idcg == pytest.approx(3.148712 / 4.761860, abs=1e-6)  # 0.661236
    # exponential gain 2^rel - 1: gains 7, 3, 1
    dcg_exp = 3 / math.log2(3) + 7 / 2 + 1 / math.log2(6)
    idcg_exp = 7 + 3 / math.log2(3) + 1 / 2
    assert ndcg_at_k(ranked, relevance, 5, gain="exponential") == pytest.approx(dcg_exp / idcg_exp)
    # the cut-off applies to the ideal ranking too: at k=2, IDCG = 3 + 2/log2(3)
    assert ndcg_at_k(ranked, relevance, 2) == pytest.approx((2 / math.log2(3)) / (3 + 2 / math.log2(3)))


def test_relevant_docs_never_retrieved_count_against_recall():
    ranked = ["a", "x"]
    relevance = {"a": 1, "b": 1, "c": 1, "d": 1}
    assert recall_at_k(ranked, relevance, 10) == pytest.approx(1 / 4)
    assert mrr_at_k(ranked, relevance, 10) == 1.0
    # DCG = 1; IDCG = 1 + 1/log2(3) + 1/2 + 1/log2(5)
    assert ndcg_at_k(ranked, relevance, 10) == pytest.approx(1 / (1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(5)))


def test_ties_in_score_are_broken_by_doc_id():
    run = [("b", 0.5), ("c", 0.9), ("a", 0.5), ("d", 0.1)]
    assert rank(run) == ["c", "a", "b", "d"]
    # b is relevant: its tie with a puts it third, whatever order the run listed them in
    result = evaluate_run({"q": run}, {"q": {"b": 1}}, ["q"], k=10)
    assert result.means["mrr@10"] == pytest.approx(1 / 3)
    assert result.means["ndcg@10"] == pytest.approx(0.5)
    reversed_run = list(reversed(run))
    assert evaluate_run({"q": reversed_run}, {"q": {"b": 1}}, ["q"], k=10).means == result.means


def test_queries_without_relevant_docs_are_excluded_and_counted():
    run = {"q1": [("a", 1.0)], "q2": [("a", 1.0)], "q3": [("b", 1.0)], "q4": []}
    qrels = {"q1": {"a": 1}, "q2": {"a": 0}, "q4": {"c": 2}}  # q2 judged non-relevant only, q3 not judged
    result = evaluate_run(run, qrels, ["q1", "q2", "q3", "q4"], k=5)
    assert result.queries == 2  # q1 and q4
    assert result.queries_without_relevant == 2  # q2 and q3
    # q1 is perfect, q4 has no results (scores 0)
    assert result.means == {"recall@5": 0.5, "mrr@5": 0.5, "ndcg@5": 0.5}


def test_a_query_missing_from_the_run_scores_zero():
    result = evaluate_run({}, {"q": {"a": 1}}, ["q"], k=3)
    assert result.queries == 1
    assert result.means == {"recall@3": 0.0, "mrr@3": 0.0, "ndcg@3": 0.0}


def test_no_scorable_queries_gives_nan_not_an_error():
    result = evaluate_run({"q": [("a", 1.0)]}, {}, ["q"], k=3)
    assert result.queries == 0 and result.queries_without_relevant == 1
    assert all(math.isnan(value) for value in result.means.values())


def test_ndcg_matches_scikit_learn_on_graded_random_cases():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        k = int(rng.integers(1, n + 1))
        grades = rng.integers(0, 4, size=n)
        if grades.sum() == 0:
            grades[0] = 2
        scores = rng.permutation(n).astype(float)  # distinct: sklearn averages over ties, we break them by id
        docs = [f"d{i:02d}" for i in range(n)]
        run = list(zip(docs, scores, strict=True))
        relevance = dict(zip(docs, grades.tolist(), strict=True))
        ours = ndcg_at_k(rank(run), relevance, k)
        assert ours == pytest.approx(ndcg_score([grades], [scores], k=k), abs=1e-12)


def test_mean_over_queries_and_bad_k():
    run = {"q1": [("a", 0.9), ("b", 0.8)], "q2": [("c", 0.9), ("d", 0.8)]}
    qrels = qrels_from_rows(["q1", "q2", "q2"], ["a", "d", "d"], [1, 1, 2])
    assert qrels == {"q1": {"a": 1}, "q2": {"d": 2}}
    result = evaluate_run(run, qrels, ["q1", "q2"], k=2)
    assert result.means["mrr@2"] == pytest.approx((1 + 1 / 2) / 2)
    assert result.means["recall@2"] == 1.0
    assert result.means["ndcg@2"] == pytest.approx((1 + (2 / math.log2(3)) / 2) / 2)
    with pytest.raises(ValueError, match="k must be"):
        evaluate_run(run, qrels, ["q1"], k=0)
