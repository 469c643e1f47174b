"""Search, evaluate and index on a table written by `embedlake embed` with BGE-M3 (the tiny random
checkpoint): every mode's scores equal FlagEmbedding's `compute_score` on the same (query, passage) pairs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.bge_m3_checkpoint import CORPUS
from tests.cli_runs import cli_result, run_cli

pytestmark = pytest.mark.ray

DOCS = [
    *CORPUS[:7],  # the checkpoint's tokenizer was trained on these
    "北京是中国的首都，上海是最大的城市。长江是中国最长的河流。",
    "Москва является столицей России, а Волга самая длинная река в Европе.",
    "Le renard brun rapide saute par-dessus le chien paresseux pendant que le chat dort.",
    "El rápido zorro marrón salta sobre el perro perezoso mientras el gato duerme.",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 and symbols , . ; : ! ? ( ) - / %",
    "the fox and the dog are friends; the cat watches the river",
    "search engines rank documents by dense, sparse and multi-vector scores",
]
IDS = [f"d{i:02d}" for i in range(len(DOCS))]
QUERIES = ["fox jumps over the dog", "vectors for search", "Hund Fuchs Katze", "北京 首都", "river mountains"]
WEIGHTS = [0.4, 0.2, 0.4]
MODE_KEYS = {"dense": "dense", "sparse": "sparse", "colbert": "colbert", "hybrid": "colbert+sparse+dense"}


@pytest.fixture(scope="module")
def bge_lake(ray_session, tiny_bge_m3_path, tmp_path_factory) -> str:
    source = tmp_path_factory.mktemp("bge_source")
    pq.write_table(pa.table({"id": IDS, "text": DOCS}), source / "part-0.parquet")
    output = str(tmp_path_factory.mktemp("bge_lake"))
    cli_result("embed", str(source), output, "--table", "docs", "--model", tiny_bge_m3_path, "--outputs",
               "dense,sparse,colbert", "--actors", "1", "--threads-per-actor", "2", "--no-progress", "--json")
    return output


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert", "hybrid"])
def test_search_scores_equal_compute_score(bge_lake, flag_model, mode):
    texts = dict(zip(IDS, DOCS, strict=True))
    checked = 0
    for query in QUERIES:
        code, hits, err = run_cli("search", bge_lake, "--table", "docs", "--query", query, "--mode", mode,
                                  "--k", str(len(DOCS)), "--weights", ",".join(map(str, WEIGHTS)), "--json")
        assert code == 0, err
        if not hits:
            continue
        reference = flag_model.compute_score([(query, texts[hit["id"]]) for hit in hits], max_query_length=512,
                                             max_passage_length=512, weights_for_different_modes=WEIGHTS)
        expected = np.asarray(reference[MODE_KEYS[mode]])
        # ColBERT vectors are stored in float16: MaxSim moves by ~1e-3 at most
        np.testing.assert_allclose([hit["score"] for hit in hits], expected, atol=2e-3)
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True)
        checked += len(hits)
    assert checked >= len(QUERIES)


def test_hybrid_ranks_every_document_like_compute_score(bge_lake, flag_model):
    """With a shortlist covering the table, hybrid search is the exact ranking by compute_score."""
    for query in QUERIES[:3]:
        hits = cli_result("search", bge_lake, "--table", "docs", "--query", query, "--mode", "hybrid", "--k", "5",
                          "--shortlist", "100", "--json")
        reference = flag_model.compute_score([(query, doc) for doc in DOCS], weights_for_different_modes=WEIGHTS)
        order = np.argsort(-np.asarray(reference["colbert+sparse+dense"]), kind="stable")[:5]
        expected = [reference["colbert+sparse+dense"][i] for i in order]
        np.testing.assert_allclose([hit["score"] for hit in hits], expected, atol=2e-3)
        top = {IDS[i] for i, score in zip(order, expected, strict=True) if score > expected[-1] + 5e-3}
        assert top <= {hit["id"] for hit in hits}


def test_evaluate_and_index_on_a_bge_m3_table(bge_lake, tmp_path):
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(len(QUERIES))], "text": QUERIES}),
                   tmp_path / "q.parquet")
    relevant = ["d00", "d01", "d05", "d07", "d03"]
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(len(QUERIES))], "doc_id": relevant,
                             "relevance": pa.array([1] * len(QUERIES), pa.int32())}), tmp_path / "r.parquet")
    result = cli_result("evaluate", bge_lake, "--table", "docs", "--queries", str(tmp_path / "q.parquet"),
                        "--qrels", str(tmp_path / "r.parquet"), "--k", "3", "--tune-weights",
                        "--report", str(tmp_path / "eval.json"), "--json")
    for entry in ("dense", "sparse", "colbert", "hybrid", "hybrid_rrf", "hybrid_tuned"):
        assert 0.0 <= result[entry]["ndcg@3"] <= 1.0, entry
    assert result["queries"] == len(QUERIES)
    result = cli_result("index", bge_lake, "--table", "docs", "--json")
    assert result["sparse_index"]["rows"] == len(DOCS)
    assert "skipped" in result["columns"]["dense"]


def test_mode_auto_on_a_bge_m3_table(bge_lake, tmp_path):
    """Without a rule, auto is the default hybrid; after evaluate --tune-routing, the route the stored rule picks,
    exactly as that mode given by hand (queries encoded by the real encoder, features from its sparse weights)."""
    for query in QUERIES[:2]:
        auto = cli_result("search", bge_lake, "--table", "docs", "--query", query, "--mode", "auto", "--k", "5",
                          "--json")
        assert auto == cli_result("search", bge_lake, "--table", "docs", "--query", query, "--mode", "hybrid",
                                  "--k", "5", "--json")
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(len(QUERIES))], "text": QUERIES}),
                   tmp_path / "q.parquet")
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(len(QUERIES))],
                             "doc_id": ["d00", "d01", "d05", "d07", "d03"], "relevance": [1] * len(QUERIES)}),
                   tmp_path / "r.parquet")
    report = cli_result("evaluate", bge_lake, "--table", "docs", "--queries", str(tmp_path / "q.parquet"), "--qrels",
                        str(tmp_path / "r.parquet"), "--k", "3", "--tune-routing", "--report",
                        str(tmp_path / "eval.json"), "--json")
    routing = report["routing"]
    assert routing["stored"] is True and len(routing["routes"]) == 7  # 3 modes, 4 hybrids
    from operators.search.retriever import Retriever

    retriever = Retriever(bge_lake, "docs")
    assert retriever.routing_rule().to_dict() == routing["rule_json"]
    for query in QUERIES:
        route = retriever.route(query)
        by_hand = ["--weights", ",".join(map(str, route.weights))] if route.weights else []
        assert cli_result("search", bge_lake, "--table", "docs", "--query", query, "--mode", "auto", "--k", "5",
                          "--json") == cli_result("search", bge_lake, "--table", "docs", "--query", query, "--mode",
                                                  route.mode, *by_hand, "--k", "5", "--json")
