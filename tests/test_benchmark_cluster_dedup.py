"""The scale benchmark runs end to end at a small size (slow: two commands, each starting its own Ray)."""

from __future__ import annotations

import pytest

from benchmarks.cluster_dedup import main

pytestmark = pytest.mark.slow


def test_benchmark_small(tmp_path, capsys):
    out = tmp_path / "figures.json"
    (record,) = main(
        ["--rows", "20000", "--dim", "64", "--k", "20", "--workdir", str(tmp_path), "--out", str(out)]
    )
    assert out.exists()
    assert "| 20,000 | cluster k=20 |" in capsys.readouterr().out
    dedup = record["dedup"]
    assert dedup["recall_exact"] == 1.0
    assert dedup["recall_near"] > 0.97 and dedup["precision"] > 0.99
    assert record["cluster"]["nmi"] > 0.5
    assert record["cluster"]["peak_tree_pss_mb"] > 0 and record["dedup"]["peak_driver_rss_mb"] > 0
