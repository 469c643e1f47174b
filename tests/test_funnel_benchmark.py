"""The funnel benchmark at a reduced size (slow: run with `pytest -m slow`; `make bench` runs it at 1M)."""

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
