"""The benchmark's own arithmetic and plumbing; the timed runs themselves are marked slow."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks.encoders import st_padded_tokens
from benchmarks.flops import encoder_flops
from benchmarks.report import Result, table


def test_flops_per_token_match_the_anchor_for_bge_m3():
    # docs/encoders.md: ~0.6 GFLOP per token (24 layers x 12 x 1024^2 x 2) plus attention
    per_token = encoder_flops(1024, 4096, 24, np.array([1])) / 1
    assert per_token == pytest.approx(24 * 12 * 1024**2 * 2, rel=1e-3)
    assert encoder_flops(1024, 4096, 24, np.array([100, 100])) > 200 * per_token  # attention grows with length


def test_sentence_transformers_padding_follows_its_character_sort():
    texts = ["aaaa", "a", "aaa", "aa"]
    lengths = np.array([4, 1, 3, 2])
    assert st_padded_tokens(texts, lengths, batch_size=2) == 2 * 4 + 2 * 2
    assert st_padded_tokens(texts, lengths, batch_size=4) == 16


def test_table_reports_ratio_against_the_peer_and_padding():
    peer = Result("st", docs=100, tokens=1000, seconds=[2.0, 4.0, 3.0], padded_tokens=1250)
    ours = Result("ours", docs=100, tokens=1000, seconds=[1.0, 1.5, 2.0], padded_tokens=1000, peer=peer,
                  cosine=0.99995, cosine_to="ST")
    assert ours.ratio == pytest.approx(2.0)
    assert peer.padding_waste == pytest.approx(0.2)
    text = table([peer, ours], peak_flops=None)
    assert "| ours | 66.7 |" in text and "2.00x" in text and "(peer)" in text and "0.99995 vs ST" in text


def test_replicated_input_has_unique_ids_and_the_asked_row_count(tmp_path):
    from benchmarks.pipeline import make_input

    folder, texts = make_input(tmp_path / "in", rows=5000, max_chars=50)
    ids = [i for path in sorted(folder.glob("*.parquet")) for i in pq.read_table(path).column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == len(texts) == 5000
    assert max(len(text) for text in texts) <= 50


@pytest.mark.slow
def test_encoder_benchmark_runs_end_to_end(capsys):
    from benchmarks.run import main

    assert main(["--only", "encoders", "--device", "cpu", "--texts", "24", "--precisions", "auto,int8",
                 "--bge-m3-size", "tiny", "--bge-m3-texts", "12", "--repeats", "1", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "MiniLM-L6 encoder: ours, int8" in out and "BGE-M3-shaped (tiny" in out


@pytest.mark.slow
def test_pipeline_benchmark_runs_in_its_own_driver_with_a_random_model(capsys):
    from benchmarks.run import main

    assert main(["--only", "pipeline", "--device", "cpu", "--pipeline-model", "tiny", "--rows", "300",
                 "--max-chars", "80", "--no-peer", "--repeats", "1", "--precision", "auto",
                 "--object-store-memory", "256MiB", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "pipeline, 300 rows of <= 80 chars, random BGE-M3-shaped tiny" in out and "MiB PSS" in out


def test_graded_pairs_for_bench_uses(tmp_path):
    import pyarrow.dataset as ds

    from benchmarks.uses import SAMPLE_DIR, graded_pairs

    assert graded_pairs(str(tmp_path / "pairs.parquet"), synopses=20) == 60
    pairs = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    sample = ds.dataset(SAMPLE_DIR).to_table(columns=["title", "text", "section"]).to_pylist()
    section_of_title = {row["title"]: row["section"] for row in sample}
    section_of_text = {row["text"]: row["section"] for row in sample}
    own = {row["title"]: row["text"] for row in sample}
    for pair in pairs:
        same = section_of_title[pair["text_a"]] == section_of_text[pair["text_b"]]
        assert {2.0: own[pair["text_a"]] == pair["text_b"], 1.0: same and own[pair["text_a"]] != pair["text_b"],
                0.0: not same}[pair["score"]]


def test_bm25_weights_of_bench_routing_score_as_textbook_bm25():
    """benchmarks/routing.py's stand-in sparse column: the product's lexical score of its query and document
    weights is the BM25 score (Robertson's idf, k1 0.9, b 0.4), over the table's largest weight and the query's
    distinct terms."""
    import math
    import re

    from benchmarks.routing import K1, B, Bm25
    from operators.scoring import sparse_scores

    docs = ["The cat sat on the mat, the cat.", "Dogs and cats are friends", "the dog sat", "a mat is a mat"]
    bm25 = Bm25(docs)
    query = "cat sat mat"
    ours = sparse_scores(bm25.query_rows([query])[0], bm25.document_rows())
    tokens = [re.findall(r"(?u)\b\w\w+\b", doc.lower()) for doc in docs]
    average = sum(map(len, tokens)) / len(tokens)
    terms = sorted(set(re.findall(r"(?u)\b\w\w+\b", query)))
    for doc, score in zip(tokens, ours, strict=True):
        expected = 0.0
        for term in terms:
            df = sum(term in other for other in tokens)
            tf = doc.count(term)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            expected += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(doc) / average)) if tf else 0.0
        assert score == pytest.approx(expected / bm25.scale / len(terms), rel=1e-5)


def test_overhead_lake_rounds_and_stage_profile(tmp_path):
    """benchmarks/overhead.py's plumbing on a small lake: unique ids, A-B-B-A order, and a stage profile
    (no Ray) that times every stage, its re-run finding every row unchanged."""
    from benchmarks.overhead import STAGES, abba, build_model, make_lake, report, stage_profile

    texts = make_lake(tmp_path / "lake", 300, 3)
    table = pq.read_table(tmp_path / "lake")
    assert table.num_rows == len(texts) == 300 and len(set(table.column("id").to_pylist())) == 300
    assert abba(["a", "b"], 2) == ["a", "b", "b", "a"]
    seconds = stage_profile(tmp_path / "lake", build_model(tmp_path), 128, tmp_path)
    assert set(seconds) == set(STAGES) and all(value >= 0 for value in seconds.values())
    text = report({"rows": 300, "shards": 3, "model": "tiny", "cpus": 2, "load_before": [1.0], "load_after": [1.0],
                   "stages_us_per_row": dict.fromkeys(STAGES, 1.0), "run_us_per_row": {"prepare": 2.0},
                   "encoder_docs_per_s": 10.0, "pipeline_docs_per_s": 8.0, "pipeline_vs_encoder": 0.8,
                   "whole_command_docs_per_s": 5.0, "whole_command_vs_encoder": 0.5, "seconds": {},
                   "pipeline_vs_sentence_transformers": 1.5, "rows_per_call": 256, "rows_per_write": 1024,
                   "cpu_us_per_row": {}}, "title")
    assert "| prepare | 2.0 |" in text and "0.80x" in text


def test_overhead_peers_census_finds_every_descendant_and_reports(tmp_path):
    """benchmarks/overhead_peers.py's plumbing: the process census counts a command's grandchildren with their CPU,
    the sample lakes hold unique ids, and the report names every part's ratio."""
    import sys

    from benchmarks.overhead_peers import census, report, sample_lake

    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; t = time.process_time(); [0 for _ in iter(lambda: time.process_time() - t < 0.3, False)]; "
            "time.sleep(0.3)'])")
    wall, rows = census([sys.executable, "-c", code], tmp_path, {})
    assert len(rows) == 2 and wall >= 0.3
    assert rows[1]["cpu_s"] >= 0.2 and rows[1]["start_s"] >= rows[0]["start_s"]
    texts = sample_lake(tmp_path / "lake", "title", 50, 2)
    table = pq.read_table(tmp_path / "lake")
    assert table.num_rows == len(texts) == 50 and len(set(table.column("id").to_pylist())) == 50
    text = report({"date": "d", "cpus": 2, "load_before": [1.0], "load_after": [1.0],
                   "tiny": {"rows": 10, "encoder_docs_per_s": 5.0, "embedlake": {
                       "docs_per_s": 4.0, "pipeline_vs_encoder": 0.8, "whole_command_docs_per_s": 2.0,
                       "whole_command_vs_encoder": 0.4, "daft_over_embedlake_wall": 0.7}},
                   "minilm": {"synopses": {"rows": 10, "mean_characters": 40.0, "docs_per_s": 3.0,
                                           "pipeline_vs_st": 1.5, "st_docs_per_s": 2.0, "whole_command_vs_st": 0.5,
                                           "daft_over_embedlake_wall": 0.9}},
                   "census": {"after": {"processes": 19, "cpu_s": 46.0, "wall_s": 35.0}},
                   "shared_ray": {"daft_over_embedlake_wall": 1.5, "rows": 10}})
    assert "0.80x the encoder" in text and "1.50x sentence-transformers" in text and "19, 46.0 CPU s" in text
    assert "`embedlake embed --address` 1.50" in text
