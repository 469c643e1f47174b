"""`embedlake search`, `evaluate` and `index` on a table written by `embedlake embed` (real MiniLM vectors),
checked against brute force over the stored vectors with queries encoded independently."""

from __future__ import annotations

import io
import json
import os

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from operators.encoders.base import EncoderSpec
from operators.metrics import evaluate_run, qrels_from_rows
from operators.schema import DENSE, ID
from operators.vectors import as_matrix
from tests.cli_runs import cli_error, cli_result, run_cli

pytestmark = pytest.mark.ray

DOCS = 50
DIMS = "128,64"


@pytest.fixture(scope="module")
def corpus(sample_dir) -> pa.Table:
    return ds.dataset(str(sample_dir)).to_table(columns=["id", "text", "title"]).slice(0, DOCS)


@pytest.fixture(scope="module")
def embedded(ray_session, corpus, tmp_path_factory) -> str:
    """The corpus embedded by the real pipeline into a fresh lake."""
    source = tmp_path_factory.mktemp("source")
    pq.write_table(corpus, source / "part-0.parquet")
    output = str(tmp_path_factory.mktemp("lake"))
    cli_result("embed", str(source), output, "--table", "docs", "--dims", DIMS, "--actors", "1",
               "--threads-per-actor", "2", "--no-progress", "--json")
    return output


@pytest.fixture(scope="module")
def stored(embedded) -> dict:
    table = lancedb.connect(embedded).open_table("docs").to_arrow()
    return {"ids": np.array(table.column(ID).to_pylist(), dtype=object),
            **{name: as_matrix(table.column(name)) for name in (DENSE, "dense_128", "dense_64")}}


@pytest.fixture(scope="module")
def query_encoder():
    from operators.encoders.loader import load_encoder

    return load_encoder(EncoderSpec(model="minilm", dims=[128, 64]))


@pytest.fixture(scope="module")
def labelled(corpus, tmp_path_factory) -> tuple[str, str, list[str], list[str]]:
    """Queries = titles of 30 corpus docs (relevant: that doc) plus one query whose doc is absent and
    one query with no judgments."""
    folder = tmp_path_factory.mktemp("eval")
    titles = corpus.column("title").to_pylist()[:30]
    ids = corpus.column("id").to_pylist()[:30]
    query_ids = [f"q{i:02d}" for i in range(30)] + ["q-absent", "q-unjudged"]
    texts = titles + ["an image viewer for the terminal", "anything"]
    pq.write_table(pa.table({"query_id": query_ids, "text": texts}), folder / "queries.parquet")
    qrels = pa.table({"query_id": query_ids[:31], "doc_id": ids + ["no-such-package"],
                      "relevance": pa.array([1] * 31, type=pa.int32())})
    pq.write_table(qrels, folder / "qrels.parquet")
    return str(folder / "queries.parquet"), str(folder / "qrels.parquet"), query_ids, texts


def brute(stored, query_vector, column, k):
    scores = stored[column] @ query_vector
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], stored["ids"][i]))[:k]
    return [(stored["ids"][i], float(scores[i])) for i in order]


@pytest.mark.parametrize("column", [None, "dense_128", "dense_64"])
def test_search_cli_equals_brute_force(embedded, stored, query_encoder, column):
    query = "command line tool to compress files"
    column_args = ["--column", column] if column else []
    code, hits, err = run_cli("search", embedded, "--table", "docs", "--query", query, "--k", "5",
                              *column_args, "--json")
    assert code == 0, err
    name = column or DENSE
    vector = query_encoder.encode([query], prompt_name="query").columns[name]
    expected = brute(stored, as_matrix(vector)[0], name, 5)
    assert [hit["id"] for hit in hits] == [doc for doc, _ in expected]
    np.testing.assert_allclose([hit["score"] for hit in hits], [s for _, s in expected], atol=1e-5)


def test_search_cli_funnel_and_text_output(embedded, stored):
    funnel = cli_result("search", embedded, "--table", "docs", "--query", "music player",
                        "--funnel", "64", "--funnel-shortlist", str(DOCS), "--k", "3", "--json")
    exact = cli_result("search", embedded, "--table", "docs", "--query", "music player", "--k", "3", "--json")
    # a shortlist covering the table re-ranks everything: same ids, same scores (to float rounding)
    assert [hit["id"] for hit in funnel] == [hit["id"] for hit in exact]
    np.testing.assert_allclose([h["score"] for h in funnel], [h["score"] for h in exact], atol=1e-6)
    out = io.StringIO()
    assert run_cli("search", embedded, "--table", "docs", "--query", "music player", "--k", "2", stdout=out).code == 0
    lines = out.getvalue().strip().splitlines()
    # rank, score with 3 decimals, id (and the kept title when the table keeps one), aligned (issue 22)
    assert len(lines) == 2 and [line.split()[0] for line in lines] == ["1", "2"]
    assert lines[0].split()[2] == exact[0]["id"] and lines[0].split()[1] == f"{exact[0]['score']:.3f}"


def test_search_cli_errors_are_one_line(embedded):
    search = ("search", embedded, "--query", "x")
    assert "sparse search needs column(s) sparse" in cli_error(*search, "--table", "docs", "--mode", "sparse",
                                                              alone=True)
    assert "no table 'nope'" in cli_error(*search, "--table", "nope")
    assert "no column 'dense_32'" in cli_error(*search, "--table", "docs", "--column", "dense_32")


def test_evaluate_cli_matches_metrics_over_brute_force(embedded, stored, query_encoder, labelled, tmp_path):
    queries, qrels, query_ids, texts = labelled
    report = str(tmp_path / "report" / "eval.json")
    code, result, err = run_cli("evaluate", embedded, "--table", "docs", "--queries", queries, "--qrels",
                                qrels, "--k", "5", "--report", report, "--tune-weights", "--json")
    assert code == 0, err
    assert {"dense", "dense_128", "dense_64", "funnel_128", "funnel_64"} <= set(result)
    assert "hybrid" not in result and "sparse" not in result
    assert result["queries"] == 31 and result["queries_without_relevant"] == 1
    assert result["report"] == report and os.path.isfile(report)
    assert result["plot"] == str(tmp_path / "report" / "eval.png") and os.path.getsize(result["plot"]) > 10_000
    with open(report) as handle:
        assert json.load(handle)["dense"] == result["dense"]
    table = pq.read_table(qrels)
    judged = qrels_from_rows(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(),
                             table.column("relevance").to_pylist())
    encoded = query_encoder.encode(texts, prompt_name="query").columns
    for column in ("dense", "dense_128", "dense_64"):
        vectors = as_matrix(encoded[column])
        run = {qid: brute(stored, vector, column, 5) for qid, vector in zip(query_ids, vectors, strict=True)}
        expected = evaluate_run(run, judged, query_ids, 5).means
        for name, value in expected.items():
            assert result[column][name] == pytest.approx(value, abs=1e-9), (column, name)
        assert result[column]["bytes_per_vector"] == 4 * vectors.shape[1]
    # titles find their own package description most of the time with the full vector
    assert result["dense"]["recall@5"] > 0.6


def test_index_cli_on_a_small_table_reports_the_skip(embedded):
    result = cli_result("index", embedded, "--table", "docs", "--json")
    assert set(result["columns"]) == {"dense", "dense_128", "dense_64"}
    assert all("skipped" in entry for entry in result["columns"].values())


@pytest.mark.parametrize("column", [None, "dense_64"])
def test_search_like_cli_equals_brute_force_without_the_item(embedded, stored, column):
    item = 7
    column_args = ["--column", column] if column else []
    hits = cli_result("search", embedded, "--table", "docs", "--like", stored["ids"][item], "--k", "5",
                      *column_args, "--json")
    name = column or DENSE
    others = {key: np.delete(values, item, axis=0) for key, values in stored.items()}
    expected = brute(others, stored[name][item], name, 5)
    assert [hit["id"] for hit in hits] == [doc for doc, _ in expected]
    np.testing.assert_allclose([hit["score"] for hit in hits], [s for _, s in expected], atol=1e-5)
    assert "no row with id 'no-such-id'" in cli_error("search", embedded, "--table", "docs", "--like", "no-such-id")


def test_evaluate_pairs_cli_equals_scipy_at_every_nested_size(embedded, corpus, query_encoder, tmp_path):
    from scipy.stats import pearsonr, spearmanr

    titles, texts = corpus.column("title").to_pylist()[:12], corpus.column("text").to_pylist()[:12]
    # each title against its own description (high score) and against the next one's (low score)
    text_a = titles + titles
    text_b = [text[:300] for text in texts] + [text[:300] for text in texts[1:] + texts[:1]]
    scores = [5.0] * 12 + [float(i % 3) for i in range(12)]
    pq.write_table(pa.table({"text_a": text_a, "text_b": text_b, "score": scores}), tmp_path / "pairs.parquet")
    report = str(tmp_path / "sts.json")
    result = cli_result("evaluate", embedded, "--table", "docs", "--pairs", str(tmp_path / "pairs.parquet"),
                        "--report", report, "--json")
    sts = result["sts"]
    assert sts["pairs"] == 24 and os.path.getsize(sts["plot"]) > 5000
    left = query_encoder.encode(text_a, prompt_name="query").columns
    right = query_encoder.encode(text_b, prompt_name="query").columns
    for column in ("dense", "dense_128", "dense_64"):
        cosines = np.einsum("ij,ij->i", as_matrix(left[column]).astype(float),
                            as_matrix(right[column]).astype(float))
        assert sts[column]["spearman"] == pytest.approx(spearmanr(cosines, scores).statistic, abs=1e-6)
        assert sts[column]["pearson"] == pytest.approx(pearsonr(cosines, scores).statistic, abs=1e-6)
    assert sts["dense"]["spearman"] > 0.5  # a title is closer to its own description
    assert "--queries with --qrels" in cli_error("evaluate", embedded, "--table", "docs", "--queries", report,
                                                  status=2)
