"""Search, evaluate and index on a table written by `embedlake embed` with BGE-M3 (the tiny random
checkpoint): every mode's scores equal FlagEmbedding's `compute_score` on the same (query, passage) pairs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main

pytestmark = pytest.mark.ray

DOCS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "Embedding models turn text into vectors that capture meaning for search and clustering.",
    "Sparse lexical weights reward exact term matches; dense vectors capture paraphrases.",
    "A long document about rivers, mountains, forests and the animals that live there.",
    "Machine learning pipelines read Parquet files, batch texts by length and write tables.",
    "Der schnelle braune Fuchs springt über den faulen Hund, während die Katze schläft.",
    "Die Einbettungsmodelle verwandeln Texte in Vektoren für die Suche und das Clustern.",
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


def run_cli(capsys, *argv: str) -> tuple[int, object, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and lines else None), captured.err


@pytest.fixture(scope="module")
def bge_lake(ray_session, tiny_bge_m3_path, tmp_path_factory) -> str:
    source = tmp_path_factory.mktemp("bge_source")
    pq.write_table(pa.table({"id": IDS, "text": DOCS}), source / "part-0.parquet")
    output = str(tmp_path_factory.mktemp("bge_lake"))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["embed", str(source), output, "--table", "docs", "--model", tiny_bge_m3_path, "--outputs",
                     "dense,sparse,colbert", "--actors", "1", "--threads-per-actor", "2", "--no-progress", "--json"])
    assert code == 0
    return output


def _stub_attn_mask_utils() -> types.ModuleType:
    """FlagEmbedding 1.4.2 imports transformers.modeling_attn_mask_utils (gone in transformers 5) for its
    rerankers; the embedder never calls it."""
    stub = types.ModuleType("transformers.modeling_attn_mask_utils")

    def unavailable(*args, **kwargs):
        msg = "stub: transformers 5 has no modeling_attn_mask_utils"
        raise NotImplementedError(msg)

    stub.AttentionMaskConverter = unavailable
    for name in ("_prepare_4d_attention_mask", "_prepare_4d_causal_attention_mask",
                 "_prepare_4d_causal_attention_mask_for_sdpa"):
        setattr(stub, name, unavailable)
    return stub


@pytest.fixture(scope="module")
def flag_model(tiny_bge_m3_path):
    if importlib.util.find_spec("FlagEmbedding") is None:
        pytest.skip("FlagEmbedding is not installed (pip install -e .[test])")
    with pytest.MonkeyPatch.context() as patch:
        if importlib.util.find_spec("transformers.modeling_attn_mask_utils") is None:
            patch.setitem(sys.modules, "transformers.modeling_attn_mask_utils", _stub_attn_mask_utils())
        from FlagEmbedding import BGEM3FlagModel

        return BGEM3FlagModel(tiny_bge_m3_path, use_fp16=False, devices="cpu")


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert", "hybrid"])
def test_search_scores_equal_compute_score(bge_lake, flag_model, capsys, mode):
    texts = dict(zip(IDS, DOCS, strict=True))
    checked = 0
    for query in QUERIES:
        code, hits, err = run_cli(capsys, "search", bge_lake, "--table", "docs", "--query", query, "--mode", mode,
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


def test_hybrid_ranks_every_document_like_compute_score(bge_lake, flag_model, capsys):
    """With a shortlist covering the table, hybrid search is the exact ranking by compute_score."""
    for query in QUERIES[:3]:
        code, hits, _ = run_cli(capsys, "search", bge_lake, "--table", "docs", "--query", query, "--mode",
                                "hybrid", "--k", "5", "--shortlist", "100", "--json")
        assert code == 0
        reference = flag_model.compute_score([(query, doc) for doc in DOCS], weights_for_different_modes=WEIGHTS)
        order = np.argsort(-np.asarray(reference["colbert+sparse+dense"]), kind="stable")[:5]
        expected = [reference["colbert+sparse+dense"][i] for i in order]
        np.testing.assert_allclose([hit["score"] for hit in hits], expected, atol=2e-3)
        top = {IDS[i] for i, score in zip(order, expected, strict=True) if score > expected[-1] + 5e-3}
        assert top <= {hit["id"] for hit in hits}


def test_evaluate_and_index_on_a_bge_m3_table(bge_lake, capsys, tmp_path):
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(len(QUERIES))], "text": QUERIES}),
                   tmp_path / "q.parquet")
    relevant = ["d00", "d01", "d05", "d07", "d03"]
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(len(QUERIES))], "doc_id": relevant,
                             "relevance": pa.array([1] * len(QUERIES), pa.int32())}), tmp_path / "r.parquet")
    code, result, err = run_cli(capsys, "evaluate", bge_lake, "--table", "docs", "--queries",
                                str(tmp_path / "q.parquet"), "--qrels", str(tmp_path / "r.parquet"), "--k", "3",
                                "--tune-weights", "--report", str(tmp_path / "eval.json"), "--json")
    assert code == 0, err
    for entry in ("dense", "sparse", "colbert", "hybrid", "hybrid_rrf", "hybrid_tuned"):
        assert 0.0 <= result[entry]["ndcg@3"] <= 1.0, entry
    assert result["queries"] == len(QUERIES)
    code, result, err = run_cli(capsys, "index", bge_lake, "--table", "docs", "--json")
    assert code == 0, err
    assert result["sparse_index"]["rows"] == len(DOCS)
    assert "skipped" in result["columns"]["dense"]
