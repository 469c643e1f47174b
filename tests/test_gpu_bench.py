"""`make bench-gpu` (benchmarks/gpu.py) on the CPU: its checks catch what they are for, its tokenizer
asset is the packaged MiniLM's, and the whole script runs end to end in smoke mode (slow)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from benchmarks.corpus import long_documents, sample_texts
from benchmarks.encoders import variant
from benchmarks.gpu_checks import COSINE_BOUND, agreement, oom_split_check, threads_check
from operators.encoders.base import EncodedBatch, EncoderSpec
from operators.encoders.loader import load_encoder


@pytest.fixture(scope="module")
def bge_m3(tiny_bge_m3_path):
    return load_encoder(EncoderSpec(model=tiny_bge_m3_path, device="cpu", max_length=512))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sample_texts(60)


def _reordered(encoded: EncodedBatch, order: list[int]) -> EncodedBatch:
    return EncodedBatch({name: column.take(pa.array(order)) for name, column in encoded.columns.items()},
                        encoded.token_counts[order], encoded.truncated[order])


def test_agreement_is_one_for_the_same_vectors_and_catches_swapped_rows(bge_m3, texts):
    encoded = bge_m3.encode(texts[:6])
    assert all(value == pytest.approx(1.0) for value in agreement(encoded, encoded).values())
    swapped = agreement(_reordered(encoded, [1, 0, 2, 3, 4, 5]), encoded)
    assert swapped["token_counts"] == 0.0 or swapped["colbert"] == 0.0
    assert swapped["dense"] < 1.0 and swapped["sparse"] < COSINE_BOUND


def test_oom_split_is_forced_and_gives_the_same_vectors(bge_m3, texts):
    check = oom_split_check(bge_m3, long_documents(texts, 4, 300), "tiny")
    assert check.passed is True, check.detail
    assert "split(s)" in check.detail and "simulated" in check.detail


def test_two_threads_get_their_own_rows(bge_m3, texts):
    small = variant(bge_m3, max_tokens=256)  # several batches per call, so the two calls interleave
    check = threads_check(small, texts[:8], texts[8:18][::-1], "tiny", timeout_s=60)
    assert check.passed is True, check.detail


def test_variant_shares_the_model_and_changes_only_the_limits(bge_m3):
    other = variant(bge_m3, max_length=64, max_tokens=4096)
    assert other.model is bge_m3.model and other.max_length == 64 and other.limits.max_tokens == 4096
    assert bge_m3.max_length == 512 and bge_m3.limits.max_tokens != 4096


def test_wordpiece_asset_tokenizes_like_the_packaged_minilm(minilm_path, texts, tmp_path):
    from transformers import AutoTokenizer

    from benchmarks.models import copy_tokenizer

    copy_tokenizer(str(tmp_path))
    ours = AutoTokenizer.from_pretrained(str(tmp_path))(texts, truncation=True, max_length=512)["input_ids"]
    packaged = AutoTokenizer.from_pretrained(minilm_path)(texts, truncation=True, max_length=512)["input_ids"]
    assert ours == packaged


def test_tokenizer_threads_variant_gives_the_same_tokens(bge_m3, texts):
    from benchmarks.gpu import with_tokenizer_threads

    threaded = with_tokenizer_threads(bge_m3)
    ids, truncated = threaded.tokenize_flat(texts)
    expected, expected_truncated = bge_m3.tokenize_flat(texts)
    assert np.array_equal(ids.ids, expected.ids) and np.array_equal(truncated, expected_truncated)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_only_the_smoke_sizes_run_unless_the_cpu_is_asked_for():
    from benchmarks.gpu import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--no-results-dir"])
    assert parse_args(["--smoke", "--no-results-dir"]).device.type == "cpu"
    assert parse_args(["--device", "cpu", "--no-results-dir"]).device.type == "cpu"


def test_parts_without_time_left_are_skipped_and_the_files_still_written(tmp_path):
    from benchmarks.gpu import PARTS, main

    assert main(["--device", "cpu", "--smoke", "--budget", "1", "--no-results-dir", "--out", str(tmp_path)]) == 1
    payload = json.loads((tmp_path / "bench_gpu_cpu-smoke.json").read_text())
    statuses = {part["part"]: part["status"] for part in payload["parts"]}
    assert statuses == {"machine": "ok", **dict.fromkeys(PARTS, "skipped")}
    assert "| bge_m3_8k | skipped |" in (tmp_path / "bench_gpu_cpu-smoke.md").read_text()


def test_smoke_parts_write_the_table_they_would_commit(tmp_path, capsys):
    """The suite's cheap end-to-end run (the whole smoke run is `make bench-gpu-smoke`, and the slow test
    below): two measured parts on the CPU, the JSON and the markdown section in the format a GPU run commits."""
    from benchmarks.gpu import main

    argv = ["--device", "cpu", "--smoke", "--parts", "bge_m3_8k,minilm", "--no-results-dir", "--out", str(tmp_path)]
    assert main(argv) == 0
    payload = json.loads((tmp_path / "bench_gpu_cpu-smoke.json").read_text())
    assert [(part["part"], part["status"]) for part in payload["parts"]] == [
        ("machine", "ok"), ("bge_m3_8k", "ok"), ("minilm", "ok")]
    assert payload["checks"] and all(check["passed"] for check in payload["checks"])
    for group in ("long docs <=300 tok: ours", "MiniLM-L6-shaped encoder, short texts: sentence-transformers"):
        assert any(group in result["case"] for result in payload["results"]), group
    assert all(result["tokens_per_s"] > 0 for result in payload["results"])
    markdown = (tmp_path / "bench_gpu_cpu-smoke.md").read_text()
    assert markdown.startswith("## ") and "make bench-gpu on CPU" in markdown
    for section in ("Correctness:", "Throughput:", "Targets (issue 18):", "Parts:",
                    "| case | docs/s | tokens/s | padding waste | MFU | peak memory | vs ST | runs | cosine |"):
        assert section in markdown, section
    assert markdown in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_run_writes_every_part_and_passes_every_check(tmp_path, capsys):
    from benchmarks.gpu import PARTS, main

    assert main(["--device", "cpu", "--smoke", "--no-results-dir", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "bench_gpu_cpu-smoke.json").read_text())
    assert [part["part"] for part in payload["parts"]] == ["machine", *PARTS]
    assert all(part["status"] == "ok" for part in payload["parts"]), payload["parts"]
    assert payload["checks"] and all(check["passed"] for check in payload["checks"])
    cases = [result["case"] for result in payload["results"]]
    for group in ("<=512 tok: sentence-transformers", "long docs <=300 tok: ours", "MiniLM-L6-shaped encoder",
                  "tokenizer threads", "backbone alone", "torch.compile(dynamic=True, backend=eager)"):
        assert any(group in case for case in cases), group
    assert all(result["tokens_per_s"] > 0 and result["padding_waste"] is not None for result in payload["results"])
    markdown = (tmp_path / "bench_gpu_cpu-smoke.md").read_text()
    assert "Correctness:" in markdown and "Targets (issue 18):" in markdown
    assert "make bench-gpu on CPU" in capsys.readouterr().out
