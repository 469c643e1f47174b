"""Two worker nodes (ray.cluster_utils.Cluster, in its own process): the encoder actors run one on each
worker node and the table is complete."""

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


def test_encoder_actors_run_on_both_worker_nodes(sample_dir, tmp_path):
    table = ds.dataset(str(sample_dir)).to_table(columns=["id", "text"]).slice(1200, 80)
    lake = tmp_path / "lake"
    lake.mkdir()
    for shard in range(4):
        pq.write_table(table.slice(shard * 20, 20), lake / f"part-{shard}.parquet")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "multinode_embed.py"), str(lake), str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Ray may print its own lines after the script's report: take the last line that is our JSON object.
    report = next(json.loads(line) for line in reversed(result.stdout.splitlines()) if line.startswith('{"'))
    # Only the two workers offer the `encoder` resource each actor needs (one each): two actors on two
    # distinct nodes can only be one actor per worker node.
    assert report["encoder_resource_nodes"] == report["worker_nodes"]
    summary = report["summary"]
    assert summary["encoder_actors"] == 2 and summary["encoder_nodes"] == 2
    assert summary["rows_in"] == summary["rows_written"] == 80
    assert sorted(report["ids"]) == sorted(table.column("id").to_pylist())
