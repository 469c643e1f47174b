"""`embedlake submit` against a real Ray head started here (`ray start --head`, token auth on):
the job runs the embed command from the uploaded project, its logs stream back, the exit status is
the job's, and the cluster's token is used but never printed."""

from __future__ import annotations

import json
import subprocess
import sys

import lancedb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.ray_runtime import project_root
from tests.ray_head import start_ray_head

pytestmark = pytest.mark.ray
SUBMIT_TIMEOUT = 420


@pytest.fixture(scope="module")
def ray_head():
    head = start_ray_head()
    yield head
    head.stop()


@pytest.fixture(scope="module")
def small_lake(sample_dir, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("submit-lake")
    rows = ds.dataset(str(sample_dir)).to_table().slice(0, 40)
    for shard in range(2):
        pq.write_table(rows.slice(shard * 20, 20), folder / f"part-{shard}.parquet")
    return str(folder)


def submit(env: dict, *argv: str, timeout: float = SUBMIT_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", *argv], cwd=project_root(), env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submitted_embed_job_streams_logs_and_writes_the_table(ray_head, small_lake, tmp_path):
    output = tmp_path / "out"
    done = submit(ray_head.client_env(), "--address", ray_head.dashboard, "--json", "--",
                  "embed", small_lake, str(output), "--table", "docs", "--actors", "1", "--no-progress", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "SUCCEEDED" and result["job_id"]
    assert result["result"]["rows_written"] == 40  # the job's own --json summary, read from its logs
    assert '"rows_written": 40' in done.stderr  # logs streamed (to stderr under --json)
    assert lancedb.connect(str(output)).open_table("docs").count_rows() == 40
    assert ray_head.token not in done.stdout + done.stderr


def test_a_failing_job_exits_with_its_own_status(ray_head):
    done = submit(ray_head.client_env(), "--address", ray_head.dashboard, "--",
                  "embed", "in", "out", "--no-such-option")
    assert done.returncode == 2, done.stderr[-3000:]  # argparse's usage error inside the job
    assert "unrecognized arguments: --no-such-option" in done.stdout  # streamed job logs
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("embedlake: error: job ") and "FAILED" in last


def test_without_the_token_the_cluster_refuses_in_one_line(ray_head, tmp_path):
    env = {k: v for k, v in ray_head.client_env().items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    done = submit(env, "--address", ray_head.dashboard, "--", "embed", "in", "out", timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("embedlake: error:") and "uthentication" in last
    assert ray_head.token not in done.stdout + done.stderr
