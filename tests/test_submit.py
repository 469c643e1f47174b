"""`embedlake submit` against a real Ray head started here (`ray start --head`, token auth on): the job
runs the embed command from the uploaded project over an S3 lake into an S3 table, its logs stream
back, the exit status is the job's. The S3 credentials live on the cluster's node (as an instance
role or pod secret would), not with the submitter; neither they nor the cluster token are printed or
stored in the job's record."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from operators.storage import resolve_storage
from operators.tables import connect
from pipelines.ray_jobs import job_client
from pipelines.ray_runtime import project_root
from tests.object_store_server import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.ray_head import start_ray_head
from tests.sample_lakes import sample_rows, write_shards

pytestmark = pytest.mark.ray
SUBMIT_TIMEOUT = 420
BUCKET = "embedlake-submit"


@pytest.fixture(scope="module")
def ray_head(s3_server):
    head = start_ray_head(node_env=s3_server.env())
    yield head
    head.stop()


@pytest.fixture(scope="module")
def s3_lake(s3_server, sample_dir, tmp_path_factory) -> str:
    s3_server.create_bucket(BUCKET)
    folder = tmp_path_factory.mktemp("submit-lake")
    write_shards(sample_rows(sample_dir, 100, 40, columns=None), folder, 2)
    client = s3_server.client()
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), BUCKET, f"lake/{path.name}")
    return f"s3://{BUCKET}/lake/"


def submit(env: dict, *argv: str, timeout: float = SUBMIT_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", *argv], cwd=project_root(), env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submitted_embed_job_streams_logs_and_writes_the_table(ray_head, s3_server, s3_lake):
    output = f"s3://{BUCKET}/lance"
    done = submit(ray_head.client_env(), "--address", ray_head.dashboard, "--json", "--",
                  "embed", s3_lake, output, "--table", "docs", "--actors", "1", "--no-progress", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "SUCCEEDED" and result["job_id"]
    assert result["result"]["rows_written"] == 40  # the job's own --json summary, read from its logs
    assert '"rows_written": 40' in done.stderr  # logs streamed (to stderr under --json)
    assert connect(output, resolve_storage(None, s3_server.env())).open_table("docs").count_rows() == 40

    record = job_client(ray_head.dashboard, ray_head.client_env()).get_job_info(result["job_id"])
    assert record.runtime_env["working_dir"].startswith(("gcs://", "file://", "/")) and "pip" not in record.runtime_env
    stored = json.dumps([record.runtime_env, record.metadata, record.entrypoint, record.message])
    for secret in (ray_head.token, TEST_ACCESS_KEY, TEST_SECRET_KEY):
        assert secret not in done.stdout + done.stderr
        assert secret not in stored


def test_the_nightly_recipe_submitted_publishes_and_keeps_history(ray_head, s3_server, s3_lake):
    """docs/lifecycle.md's cron line (conf/nightly.yaml, which adds nested sizes: the table is rebuilt while readers
    keep the first run's version), over the table the test above wrote."""
    output = f"s3://{BUCKET}/lance"
    storage = resolve_storage(None, s3_server.env())
    existed = "docs" in connect(output, storage).table_names()
    done = submit(ray_head.client_env(), "--address", ray_head.dashboard, "--json", "--",
                  "embed", s3_lake, output, "--config", "conf/nightly.yaml", "--actors", "1", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    night = json.loads(done.stdout.strip().splitlines()[-1])["result"]
    assert night["published"] and night["rows_written"] == 40
    assert night["start"] == ("rebuilt" if existed else "created")
    assert night["maintain"]["bytes_after"] <= night["maintain"]["bytes_before"]
    listed = subprocess.run([sys.executable, "-m", "pipelines.cli", "versions", output, "--json"],
                            cwd=project_root(), env={**ray_head.client_env(), **s3_server.env()}, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    history = json.loads(listed.stdout.strip().splitlines()[-1])
    assert history["serving_version"] == night["version"]
    assert [(run["job"], run["status"]) for run in history["runs"]] == [("embed", "succeeded")] * (1 + existed)
    assert {"dense_256", "dense_64"} <= set(connect(output, storage).open_table("docs").schema.names)


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
