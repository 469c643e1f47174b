"""Dedup operators: blockwise SemDeDup equals brute force, groups and keep policies, exact dedup, and the
planted near-duplicates of real texts found without flagging unrelated ones."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import operators.dedup as dedup
from operators.cluster import KMeansConfig, assign, fit_spherical_kmeans
from operators.dedup import (
    SemDedupConfig,
    earlier_matches,
    exact_duplicates,
    rank_order,
    resolve_exact,
    semdedup,
    semdedup_cluster,
)
from operators.minhash import minhash_duplicates, signatures
from operators.schema import DUPLICATE_OF, ID, SIMILARITY, TEXT_HASH
from operators.vectors import normalize_rows
from tests.corpus import build_corpus, check_found_and_nothing_unrelated, column, groups_of

# The eps documented for catching single small edits (case, punctuation, a swapped word pair) with MiniLM;
# see docs/cluster_and_dedup.md for the measurement behind it.
SMALL_EDIT_EPS = 0.03


@pytest.fixture(scope="module")
def corpus(sample_dir, minilm_path):
    return build_corpus(str(sample_dir), minilm_path)


def near_copies(n: int, dim: int, copies: int, noise: float, seed: int) -> np.ndarray:
    """n random unit vectors, the first `copies` of them followed by a slightly perturbed copy."""
    rng = np.random.default_rng(seed)
    x = normalize_rows(rng.normal(size=(n, dim)))
    twins = normalize_rows(x[:copies] + noise * rng.normal(size=(copies, dim)))
    return normalize_rows(rng.permutation(np.vstack([x, twins])))


def brute_force(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    sims = x @ x.T
    score = np.full(len(x), -np.inf, dtype=np.float32)
    match = np.full(len(x), -1)
    for j in range(1, len(x)):
        score[j] = sims[:j, j].max()
        hits = np.flatnonzero(sims[:j, j] >= threshold)
        match[j] = hits[0] if len(hits) else -1
    return score, match


@pytest.mark.parametrize("block", [1, 3, 16, 64, 1000])
def test_blockwise_equals_brute_force(block):
    x = near_copies(90, 24, copies=20, noise=0.03, seed=block)
    expected_score, expected_match = brute_force(x, 0.97)
    score, match = earlier_matches(x, 0.97, block)
    np.testing.assert_allclose(score, expected_score, atol=1e-5)
    np.testing.assert_array_equal(match, expected_match)
    assert (match >= 0).sum() >= 15  # the planted twins are there to be found


def test_block_narrows_for_large_clusters(monkeypatch):
    """A cluster too big for block x n cells in memory narrows its blocks; results do not change."""
    x = near_copies(70, 16, copies=10, noise=0.05, seed=1)
    expected = earlier_matches(x, 0.97, 64)
    monkeypatch.setattr(dedup, "MAX_BLOCK_CELLS", 80 * 5)
    narrowed = earlier_matches(x, 0.97, 64)
    np.testing.assert_array_equal(narrowed[1], expected[1])
    np.testing.assert_allclose(narrowed[0], expected[0], atol=1e-6)


def test_removed_rows_are_those_reaching_threshold_with_an_earlier_row():
    """SemDeDup's rule as NeMo applies it: an item goes when its best earlier-ranked match is >= 1 - eps,
    whatever the keep policy (the policy changes which member of a group stays, not how many go)."""
    x = near_copies(120, 16, copies=40, noise=0.06, seed=2)
    ids = np.array([f"doc{i:03d}" for i in range(len(x))], dtype=object)
    distances = np.random.default_rng(0).random(len(x))
    lengths = np.random.default_rng(1).integers(10, 500, len(x))
    first = semdedup_cluster(ids, x, distances, SemDedupConfig(eps=0.03), lengths)
    order = rank_order(ids, distances, "hard", 0)
    score, _ = brute_force(x[order], 0.97)
    assert set(first.duplicates.column(ID).to_pylist()) == set(ids[order][score >= 0.97])
    for keep in ("min-id", "longest"):
        other = semdedup_cluster(ids, x, distances, SemDedupConfig(eps=0.03, keep=keep), lengths)
        assert other.duplicates.num_rows == first.duplicates.num_rows
        assert set(other.duplicates.column(ID).to_pylist()) != set(first.duplicates.column(ID).to_pylist())


def chain() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a ~ b ~ c with a and c not close enough: one group of three through the chain. d stands alone."""
    angles = np.array([0.0, 0.2, 0.4, 1.5])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ids = np.array(["c", "a", "b", "d"], dtype=object)
    return ids, x, np.array([0.3, 0.2, 0.1, 0.0])  # distances: "hard" ranks c, a, b, d


def test_chain_forms_one_group_kept_by_policy():
    ids, x, distances = chain()
    eps = 1 - np.cos(0.25)  # neighbours (0.2 apart) are duplicates, a and c (0.4 apart) are not
    rows = semdedup_cluster(ids, x, distances, SemDedupConfig(eps=eps)).duplicates.to_pylist()
    assert {r[ID]: r[DUPLICATE_OF] for r in rows} == {"a": "c", "b": "c"}
    by_id = semdedup_cluster(ids, x, distances, SemDedupConfig(eps=eps, keep="min-id")).duplicates
    assert groups_of(by_id) == {"b": "a", "c": "a"}
    similarity = {r[ID]: r[SIMILARITY] for r in rows}
    assert similarity["b"] == pytest.approx(np.cos(0.4), abs=1e-6)  # to the keeper, below 1 - eps


def test_rankings():
    ids = np.array(["b", "a", "c"], dtype=object)
    distances = np.array([0.5, 0.5, 0.9])
    assert ids[rank_order(ids, distances, "hard", 0)].tolist() == ["c", "a", "b"]
    assert ids[rank_order(ids, distances, "easy", 0)].tolist() == ["a", "b", "c"]
    assert sorted(rank_order(ids, distances, "random", 0).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="rank must be one of"):
        SemDedupConfig(rank="farthest")


def test_exact_duplicates_point_at_the_smallest_id():
    ids = pa.array(["d", "b", "a", "c", "e", "f"])
    hashes = pa.array(["h1", "h1", "h2", "h1", None, None])
    rows = exact_duplicates(ids, hashes).to_pylist()
    assert rows == [
        {ID: "c", DUPLICATE_OF: "b", SIMILARITY: 1.0},
        {ID: "d", DUPLICATE_OF: "b", SIMILARITY: 1.0},
    ]


def test_exact_copies_follow_their_keeper_to_its_semantic_group():
    exact = dedup.duplicates_table(np.array(["b2"], dtype=object), np.array(["b"]), np.array([1.0]))
    near = dedup.duplicates_table(np.array(["b"], dtype=object), np.array(["a"]), np.array([0.995]))
    rows = resolve_exact(exact, near).to_pylist()
    assert [(r[ID], r[DUPLICATE_OF]) for r in rows] == [("b", "a"), ("b2", "a")]
    assert rows[1][SIMILARITY] == pytest.approx(0.995)


def semantic_run(corpus, eps: float, k: int = 4) -> pa.Table:
    """Exact copies by text hash, SemDeDup over k spherical k-means clusters of the rest."""
    table = corpus.table
    exact = exact_duplicates(table.column(ID), table.column(TEXT_HASH))
    copies = np.isin(column(table, ID), column(exact, ID))
    x = corpus.vectors[~copies]
    ids = np.asarray(column(table, ID), dtype=object)[~copies]
    clusters, distances = assign(x, fit_spherical_kmeans(x, KMeansConfig(k=k)))
    near = semdedup(ids, x, clusters, distances, SemDedupConfig(eps=eps)).duplicates
    return resolve_exact(exact, near)


def test_planted_small_edits_all_found_at_documented_eps(corpus):
    duplicates = semantic_run(corpus, SMALL_EDIT_EPS)
    expected = {**corpus.planted, **corpus.exact}
    assert check_found_and_nothing_unrelated(corpus, duplicates, expected) == len(expected)
    assert duplicates.num_rows <= len(expected) + 5  # a few natural package-variant pairs, no more


def test_default_eps_finds_exact_and_case_copies(corpus):
    """At the default eps = 0.01 (cosine >= 0.99) copies and case changes are always found and most other
    small edits too; nothing unrelated is flagged."""
    duplicates = semantic_run(corpus, dedup.DEFAULT_EPS)
    must = {**corpus.exact, **{p: o for p, o in corpus.planted.items() if p.endswith("~case")}}
    assert check_found_and_nothing_unrelated(corpus, duplicates, must) == len(must)
    planted = {**corpus.planted, **corpus.exact}
    assert check_found_and_nothing_unrelated(corpus, duplicates, planted) >= 0.9 * len(planted)


def test_minhash_finds_planted_edits(corpus):
    table = corpus.table
    texts = table.column("text").to_pylist()
    ids = table.column(ID).to_numpy(zero_copy_only=False)
    duplicates = minhash_duplicates(ids, signatures(texts, 128, 5), threshold=0.8)
    expected = {**corpus.planted, **corpus.exact}
    assert check_found_and_nothing_unrelated(corpus, duplicates, expected) == len(expected)


def test_minhash_keep_longest():
    text = "the quick brown fox jumps over the lazy dog " * 3
    texts = [text, text + "!"]
    ids = np.array(["a", "b"], dtype=object)
    sigs = signatures(texts, 64, 5)
    assert groups_of(minhash_duplicates(ids, sigs, 0.8)) == {"b": "a"}
    lengths = np.array([len(t) for t in texts])
    assert groups_of(minhash_duplicates(ids, sigs, 0.8, keep="longest", lengths=lengths)) == {"a": "b"}
