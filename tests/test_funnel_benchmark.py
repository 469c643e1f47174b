"""The funnel benchmark at a reduced size (slow: run with `pytest -m slow`; `make bench` runs it at 1M)."""

from __future__ import annotations

import pytest

from benchmarks.funnel import parse_args, run


@pytest.mark.slow
def test_funnel_keeps_exact_top10_and_is_faster():
    result = run(parse_args(["--rows", "200000", "--queries", "100", "--shortlists", "200,400", "--repeats", "2"]))
    assert result["best"] is not None, result["funnel"]
    assert result["best"]["recall@10_vs_exact"] >= 0.99
    assert result["best"]["speedup"] > 1.5
    assert result["recall@10_small_alone"] < result["best"]["recall@10_vs_exact"]  # re-ranking matters
