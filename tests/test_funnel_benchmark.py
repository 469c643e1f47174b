"""The funnel and quantised-search benchmarks at a reduced size (slow: run with `pytest -m slow`;
`make bench-search` and `make bench-quantize` run them at 1M)."""

from __future__ import annotations

import pytest

from benchmarks.funnel import parse_args, run


@pytest.mark.slow
def test_funnel_keeps_exact_top10_and_is_faster():
    result = run(parse_args(["--rows", "200000", "--queries", "100", "--shortlists", "200,400", "--repeats", "2",
                             "--single-queries", "5"]))
    best = result["best_batch"]
    assert best is not None, result["batch"]
    assert best["recall@10_vs_exact"] >= 0.99
    assert best["speedup"] > 1.2
    assert result["batch"]["recall@10_small_alone"] < best["recall@10_vs_exact"]  # re-ranking matters
    assert all(entry["speedup"] > 1.5 for entry in result["single_query"]["funnel"])


@pytest.mark.slow
def test_quantised_funnels_keep_exact_top10():
    from benchmarks.quantize import parse_args as quantize_args
    from benchmarks.quantize import run as run_quantize

    result = run_quantize(quantize_args(["--rows", "100000", "--queries", "50", "--repeats", "1",
                                         "--single-queries", "3", "--binary-multipliers", "100,200",
                                         "--int8-multipliers", "4"]))
    assert result["targets"]["binary_float_recall_0.99"] is not None, result["batch"]
    assert result["targets"]["int8_float_recall_0.995"] is not None, result["batch"]
    assert result["float32_over_binary"] == 32
    assert result["batch"]["binary_alone"]["recall@10_vs_exact"] < 0.9  # the float re-ranking is what recovers
