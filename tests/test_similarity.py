"""STS (`evaluate --pairs`): correlations equal scipy's on the cosines of the encoded pairs at every nested
size; sparse and ColBERT similarities are FlagEmbedding's; bad pair files fail in one line."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import pearsonr, spearmanr

from operators import scoring
from operators.schema import COLBERT, DENSE, SPARSE
from operators.scoring import QueryVectors, SparseVector
from operators.similarity import correlations, evaluate_pairs, load_pairs, pair_similarities, sts_report
from operators.vectors import normalize_rows
from pipelines.evaluate import EvaluateJob, run_evaluate

PAIRS = 40


def fake_vectors(text: str) -> QueryVectors:
    """Deterministic vectors per text: a 16-d vector and its first 8 dims re-normalised, as MRL stores them,
    plus lexical weights and a few ColBERT vectors."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    full = normalize_rows(rng.standard_normal((1, 16)).astype(np.float32))[0]
    ids = rng.choice(50, size=4, replace=False)
    return QueryVectors(
        dense={DENSE: full, "dense_8": normalize_rows(full[None, :8])[0]},
        sparse=SparseVector.from_pairs(ids.tolist(), rng.random(4).astype(np.float32).tolist()),
        colbert=normalize_rows(rng.standard_normal((3, 6)).astype(np.float32)),
    )


def encode(texts):
    return [fake_vectors(text) for text in texts]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> str:
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("sts") / "pairs.parquet"
    scores = rng.integers(0, 6, PAIRS).astype(float)  # ties, as STS's 0-5 scale has
    pq.write_table(pa.table({"text_a": [f"a {i}" for i in range(PAIRS)], "text_b": [f"b {i}" for i in range(PAIRS)],
                             "score": scores}), path)
    return str(path)


def test_correlations_equal_scipy_at_every_nested_size_and_mode(pairs_file):
    pairs = load_pairs(pairs_file)
    result = evaluate_pairs(encode, pairs)
    left, right = encode(pairs.text_a), encode(pairs.text_b)
    assert result["pairs"] == PAIRS and result["dims"] == {DENSE: 16, "dense_8": 8}
    for column in (DENSE, "dense_8"):
        cosines = [float(a.dense[column].astype(float) @ b.dense[column].astype(float))
                   for a, b in zip(left, right, strict=True)]
        assert result[column]["spearman"] == pytest.approx(spearmanr(cosines, pairs.scores).statistic, abs=1e-12)
        assert result[column]["pearson"] == pytest.approx(pearsonr(cosines, pairs.scores).statistic, abs=1e-12)
    lexical = [scoring.sparse_score((a.sparse.indices, a.sparse.values), (b.sparse.indices, b.sparse.values))
               for a, b in zip(left, right, strict=True)]
    maxsim = [scoring.colbert_score(a.colbert, b.colbert) for a, b in zip(left, right, strict=True)]
    assert result[SPARSE]["spearman"] == pytest.approx(spearmanr(lexical, pairs.scores).statistic, abs=1e-12)
    assert result[COLBERT]["spearman"] == pytest.approx(spearmanr(maxsim, pairs.scores).statistic, abs=1e-12)


def test_pair_similarities_are_cosines_of_unit_vectors():
    left, right = encode(["x", "y"]), encode(["y", "y"])
    found = pair_similarities(left, right)
    assert found[DENSE][0] == pytest.approx(float(left[0].dense[DENSE] @ right[0].dense[DENSE]))
    assert found[DENSE][1] == pytest.approx(1.0, abs=1e-6)  # "y" against itself


def test_constant_inputs_have_no_correlation():
    assert correlations(np.ones(5), np.arange(5.0)) == {"spearman": None, "pearson": None}


@pytest.mark.parametrize(("columns", "message"), [
    ({"text_a": ["a"] * 3, "text_b": ["b"] * 3}, "--pairs needs text_a, text_b, score"),
    ({"text_a": ["a", "", "c"], "text_b": ["b"] * 3, "score": [1.0, 2.0, 3.0]}, "text_a values are null, empty"),
    ({"text_a": ["a"] * 3, "text_b": ["b"] * 3, "score": [1.0, float("nan"), 3.0]}, "scores are not finite"),
    ({"text_a": ["a"] * 2, "text_b": ["b"] * 2, "score": [1.0, 2.0]}, "needs at least 3"),
])
def test_bad_pair_files_fail_in_one_line(tmp_path, columns, message):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(ValueError, match=message):
        load_pairs(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        load_pairs(str(tmp_path / "missing.parquet"))


def test_report_has_a_plot(pairs_file, tmp_path):
    class Encoder:
        encode = staticmethod(encode)

    result = sts_report(Encoder, pairs_file, str(tmp_path / "sts.png"), "t")
    assert result["source"] == pairs_file and (tmp_path / "sts.png").stat().st_size > 5000


def test_evaluate_with_pairs_only_writes_the_sts_report(pairs_file, tmp_path, monkeypatch):
    import lancedb

    from operators.search import retriever

    lancedb.connect(str(tmp_path / "lake")).create_table("docs", pa.table({"id": ["x"], "text": ["x"]}))
    monkeypatch.setattr(retriever.Retriever, "encode", lambda self, texts: encode(texts))
    report = str(tmp_path / "report.json")
    result = run_evaluate(EvaluateJob(str(tmp_path / "lake"), pairs=pairs_file, report=report))
    expected = evaluate_pairs(encode, load_pairs(pairs_file))
    assert result["sts"][DENSE] == expected[DENSE] and result["sts"]["dense_8"] == expected["dense_8"]
    with open(report) as handle:
        assert json.load(handle)["sts"]["dense_8"] == expected["dense_8"]
    with pytest.raises(ValueError, match="--queries with --qrels"):
        run_evaluate(EvaluateJob(str(tmp_path / "lake"), report=report))
