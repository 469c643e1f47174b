"""The embed job across the nodes of a real (local) Ray cluster: encoder actors placed on the worker nodes,
and a worker node lost mid-run. Each run is a script in a process of its own (tests/scripts/), apart from
the session's Ray, on a three-node `ray.cluster_utils.Cluster`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from tests.sample_lakes import sample_rows, write_shards

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


def run_script(script: str, table: pa.Table, tmp_path: Path) -> dict:
    """Run tests/scripts/<script> on the table written as 4 shards; its JSON report."""
    lake = write_shards(table, tmp_path / "lake", 4)
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / script), str(lake), str(tmp_path / "out"), str(report)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report.read_text())


def test_encoder_actors_run_on_both_worker_nodes(sample_dir, tmp_path):
    table = sample_rows(sample_dir, 1200, 80)
    report = run_script("multinode_embed.py", table, tmp_path)
    # Only the two workers offer the `encoder` resource each actor needs (one each): two actors on two
    # distinct nodes can only be one actor per worker node.
    assert report["encoder_resource_nodes"] == report["worker_nodes"]
    summary = report["summary"]
    assert summary["encoder_actors"] == 2 and summary["encoder_nodes"] == 2
    assert summary["rows_in"] == summary["rows_written"] == 80
    assert sorted(report["ids"]) == sorted(table.column("id").to_pylist())


def test_run_survives_losing_a_worker_node(sample_dir, tmp_path):
    """A worker node removed mid-run: the run completes with every row exactly once."""
    table = sample_rows(sample_dir, 800, 160)
    report = run_script("node_failure.py", table, tmp_path)
    assert report["removed"], "no node was removed (the run finished first)"
    assert sorted(report["ids"]) == sorted(table.column("id").to_pylist())
    summary = report["summary"]
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]
