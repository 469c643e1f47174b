"""Object storage end to end against a real S3 server on loopback (SeaweedFS, moto as fallback):
Parquet shards in a bucket -> `embedlake embed` -> LanceDB table in a bucket -> nearest neighbours.

Credentials reach the command only through the standard AWS_* variables; the session's Ray workers
were started without them, so the settings must travel with the job. Afterwards no output, Ray log
or table may contain them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from operators.sources import ShardReader, find_shards, plan_reads
from operators.storage import resolve_storage
from operators.tables import connect
from tests.cli_runs import run_cli
from tests.object_store_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, aws_environment
from tests.sample_lakes import write_shards

BUCKET = "embedlake-lake"


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.create_bucket(BUCKET)


@pytest.fixture(scope="module")
def s3fs_client(s3_server):
    import s3fs

    return s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key, endpoint_url=s3_server.endpoint,
                             client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)


@contextlib.contextmanager
def debug_logging_to(stream: io.StringIO):
    """What `--verbose` does outside pytest (whose handlers keep basicConfig from acting): every
    logger's DEBUG records on the stream."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@contextlib.contextmanager
def count_s3_calls():
    """Counts s3fs's S3 API calls by operation and the most that were in flight at once."""
    import s3fs

    original = s3fs.S3FileSystem._call_s3
    stats = {"calls": {}, "in_flight": 0, "max_in_flight": 0}

    async def counting(self, method, *args, **kwargs):
        stats["calls"][method] = stats["calls"].get(method, 0) + 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            await asyncio.sleep(0)
            return await original(self, method, *args, **kwargs)
        finally:
            stats["in_flight"] -= 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
        yield stats


def test_thousands_of_small_shards_list_once_and_count_in_parallel(s3_server, bucket, s3fs_client, tmp_path):
    """1,000 one-row shards in 10 hive partitions: one paged listing, no per-file stat, footers and id
    columns read concurrently."""
    local = tmp_path / "many"
    for shard in range(1000):
        folder = local / f"day={shard % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"d{shard}"], "text": [f"tiny shard {shard}"]}), folder / f"p{shard}.parquet")
    s3fs_client.put(str(local), f"{bucket}/many", recursive=True)
    settings = resolve_storage(None, s3_server.env())

    with count_s3_calls() as listing:
        shards = find_shards(f"s3://{bucket}/many/", settings)
    assert len(shards.files) == 1000
    assert shards.partitions == pa.schema([("day", pa.int64())])
    assert listing["calls"].get("head_object", 0) <= 2, listing["calls"]
    assert listing["calls"].get("list_objects_v2", 0) <= 3, listing["calls"]  # 1,000 keys a page

    with count_s3_calls() as globbing:
        picked = find_shards(f"s3://{bucket}/many/day=0[0-1]/*.parquet", settings)
    assert len(picked.files) == 200 and picked.partitions.names == ["day"]
    assert globbing["calls"].get("head_object", 0) <= 2, globbing["calls"]

    with count_s3_calls() as scan:  # the pipeline's read plan from every shard's footer
        assert plan_reads(shards, list(enumerate(shards.files)), ["id", "text"], 100).rows_in == 1000
    assert scan["max_in_flight"] > 4, scan


def test_reader_fetches_only_the_columns_it_needs(s3_server, bucket, s3fs_client):
    """A shard with a large column we do not ask for: bytes fetched stay a small part of the file."""
    import s3fs

    rows = 3000
    blobs = [np.random.default_rng(i).bytes(2000) for i in range(rows)]
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "text": ["short text"] * rows, "blob": blobs})
    with s3fs_client.open(f"{bucket}/wide/part-0.parquet", "wb") as handle:
        pq.write_table(table, handle, row_group_size=1000)
    size = s3fs_client.info(f"{bucket}/wide/part-0.parquet")["size"]

    fetched = []
    original = s3fs.core.S3File._fetch_range

    def counting(self, start, end):
        fetched.append(end - start)
        return original(self, start, end)

    reader = ShardReader("id", "text", storage_options=resolve_storage(None, s3_server.env()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3fs.core.S3File, "_fetch_range", counting)
        read = sum(batch.num_rows for batch in reader.read(f"s3://{bucket}/wide/part-0.parquet"))
    assert read == rows
    assert sum(fetched) < 0.05 * size, (sum(fetched), size)


@pytest.fixture(scope="module")
def sample_rows(sample_dir) -> pa.Table:
    return ds.dataset(str(sample_dir)).to_table().slice(0, 60)


@pytest.fixture(scope="module")
def s3_embedded(ray_session, s3_server, bucket, s3fs_client, sample_rows, tmp_path_factory):
    """60 sample rows as 4 shards in `batch=<n>/` partitions (plus a _SUCCESS marker) in the bucket,
    embedded into s3://bucket/lance with the AWS_* variables only."""
    local = write_shards(sample_rows, tmp_path_factory.mktemp("s3lake"), 4, "batch={shard}/part-0.parquet")
    (local / "_SUCCESS").write_text("")
    s3fs_client.put(str(local), f"{BUCKET}/lake", recursive=True)

    stdout, stderr = io.StringIO(), io.StringIO()
    with aws_environment(s3_server.env()), debug_logging_to(stderr):
        code, summary, _ = run_cli(
            "embed", f"s3://{bucket}/lake/", f"s3://{bucket}/lance", "--table", "docs",
            "--keep-columns", "section,batch", "--actors", "2", "--threads-per-actor", "1",
            "--rows-per-batch", "16", "--no-progress", "--verbose", "--json", stdout=stdout, stderr=stderr,
        )
    assert code == 0, stderr.getvalue()[-3000:]
    return summary, stdout.getvalue(), stderr.getvalue()


def open_lance(s3_server, bucket):
    """The table as another command would open it: the storage helper with a config mapping only."""
    with aws_environment({}):
        return connect(f"s3://{bucket}/lance", {
            "aws_access_key_id": s3_server.access_key,
            "aws_secret_access_key": s3_server.secret_key,
            "aws_endpoint_url": s3_server.endpoint,
            "region": "us-east-1",
        })


@pytest.mark.ray
def test_s3_lake_to_s3_table_round_trip_and_search(s3_embedded, s3_server, bucket, sample_rows):
    summary, _, _ = s3_embedded
    assert summary["rows_in"] == summary["rows_written"] == 60
    assert summary["rows_quarantined"] == 0 and summary["shards"] == 4
    assert summary["uri"] == f"s3://{bucket}/lance"

    table = open_lance(s3_server, bucket).open_table("docs")
    data = table.to_arrow()
    assert sorted(data.column("id").to_pylist()) == sorted(sample_rows.column("id").to_pylist())
    assert data.schema.field("batch").type == pa.int64()
    batch_of = {row["id"]: row["batch"] for row in data.select(["id", "batch"]).to_pylist()}
    expected = {i: n // 15 for n, i in enumerate(sample_rows.column("id").to_pylist())}
    assert batch_of == expected

    # Nearest neighbours straight from the bucket (`embedlake search` lives on another branch).
    probe = data.slice(17, 1).to_pylist()[0]
    hits = table.search(np.array(probe["dense"], dtype=np.float32), vector_column_name="dense").limit(5).to_list()
    assert len(hits) == 5
    assert hits[0]["id"] == probe["id"] and hits[0]["_distance"] < 1e-4
    assert [h["_distance"] for h in hits] == sorted(h["_distance"] for h in hits)


@pytest.mark.ray
def test_credentials_never_appear_in_output_logs_or_tables(s3_embedded, s3_server, bucket, s3fs_client):
    import ray

    _, stdout, stderr = s3_embedded
    secrets = (TEST_ACCESS_KEY, TEST_SECRET_KEY)
    assert stderr, "the --verbose run should have logged something"
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        for secret in secrets:
            assert secret not in text, f"{name} shows a credential"

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # this session's Ray only
    log_files = [p for p in logs.rglob("*") if p.is_file()]
    assert log_files
    for path in log_files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"Ray log {path.name} shows a credential"

    db = open_lance(s3_server, bucket)
    names = list(db.table_names())
    assert {"docs", "docs_quarantine", "docs_runs"} <= set(names)
    for name in names:
        text = json.dumps(db.open_table(name).to_arrow().to_pylist(), default=str)
        for secret in secrets:
            assert secret not in text, f"table {name} holds a credential"

    for key in s3fs_client.find(f"{bucket}/lance"):  # manifests, transactions, data files: raw bytes
        content = s3fs_client.cat_file(key)
        for secret in secrets:
            assert secret.encode() not in content, f"{key} holds a credential"


@pytest.mark.ray
def test_wrong_credentials_fail_in_one_line_without_echoing_them(s3_embedded, s3_server, bucket):
    if not s3_server.checks_auth:
        pytest.skip(f"{s3_server.kind} accepts any credentials")
    wrong = "wrong-secret-Kd83jfQ0pLx"
    stdout = io.StringIO()
    with aws_environment({**s3_server.env(), "AWS_SECRET_ACCESS_KEY": wrong}):
        code, _, err = run_cli("embed", f"s3://{bucket}/lake/", f"s3://{bucket}/lance2", "--verbose", "--json",
                               stdout=stdout)
    assert code == 1
    reason = err.strip().splitlines()[-1]
    assert reason.startswith("embedlake: error:") and "signature" in reason.lower()
    for secret in (wrong, TEST_ACCESS_KEY, TEST_SECRET_KEY):
        assert secret not in stdout.getvalue() + err
