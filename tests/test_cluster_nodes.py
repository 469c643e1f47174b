"""The embed job across the nodes of a real (local) Ray cluster: encoder actors placed on the worker nodes,
and a worker node lost mid-run. Both runs are one script in a process of its own (tests/scripts/cluster_runs.py),
apart from the session's Ray, on one three-node `ray.cluster_utils.Cluster` (started once for both)."""

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


@pytest.fixture(scope="module")
def runs(sample_dir, tmp_path_factory) -> tuple[dict[str, pa.Table], dict]:
    """The two runs' inputs (each written as 4 shards) and the script's JSON report."""
    tmp = tmp_path_factory.mktemp("cluster")
    tables = {"both": sample_rows(sample_dir, 1200, 80), "loss": sample_rows(sample_dir, 800, 160)}
    lakes = [str(write_shards(table, tmp / f"lake-{name}", 4)) for name, table in tables.items()]
    report = tmp / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "cluster_runs.py"), *lakes,
         str(tmp / "out-both"), str(tmp / "out-loss"), str(report)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tables, json.loads(report.read_text())


def test_encoder_actors_run_on_both_worker_nodes(runs):
    tables, report = runs
    both = report["both"]
    # Only the two workers offer the `encoder` resource each actor needs (one each): two actors on two
    # distinct nodes can only be one actor per worker node.
    assert both["encoder_resource_nodes"] == both["worker_nodes"]
    summary = both["summary"]
    assert summary["encoder_actors"] == 2 and summary["encoder_nodes"] == 2
    assert summary["rows_in"] == summary["rows_written"] == 80
    assert sorted(both["ids"]) == sorted(tables["both"].column("id").to_pylist())


def test_run_survives_losing_a_worker_node(runs):
    """A worker node removed mid-run: the run completes with every row exactly once."""
    tables, report = runs
    loss = report["loss"]
    assert loss["removed"], "no node was removed (the run finished first)"
    assert sorted(loss["ids"]) == sorted(tables["loss"].column("id").to_pylist())
    summary = loss["summary"]
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]
