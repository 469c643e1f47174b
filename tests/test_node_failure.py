"""A worker node removed mid-run (ray.cluster_utils.Cluster, in its own process): the run completes
with every row exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


def test_run_survives_losing_a_worker_node(sample_dir, tmp_path):
    table = ds.dataset(str(sample_dir)).to_table(columns=["id", "text"]).slice(800, 160)
    lake = tmp_path / "lake"
    lake.mkdir()
    for shard in range(4):
        pq.write_table(table.slice(shard * 40, 40), lake / f"part-{shard}.parquet")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "node_failure.py"), str(lake), str(tmp_path / "out"),
         str(tmp_path / "report.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["removed"], "no node was removed (the run finished first)"
    assert sorted(report["ids"]) == sorted(table.column("id").to_pylist())
    summary = report["summary"]
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]
