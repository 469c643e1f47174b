"""`embedlake cluster` and `embedlake dedup` on a lake in an S3 bucket, with the AWS_* variables only."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from operators.schema import DENSE, DUPLICATE_OF, ID, TEXT_HASH
from operators.storage import resolve_storage
from operators.tables import connect
from operators.vectors import normalize_rows, to_vector_array
from tests.cli_runs import cli_result
from tests.object_store_server import aws_environment

pytestmark = pytest.mark.ray

BUCKET = "embedlake-downstream"


@pytest.fixture
def s3_lake(s3_server) -> str:
    """300 rows of 32-d vectors in 3 directions, rows 0-9 copied with tiny noise: a table in the bucket."""
    with aws_environment(s3_server.env()):
        yield make_s3_lake(s3_server)


def make_s3_lake(s3_server):
    s3_server.create_bucket(BUCKET)
    rng = np.random.default_rng(0)
    centres = normalize_rows(rng.normal(size=(3, 32)))
    x = normalize_rows(centres[np.arange(290) % 3] + 0.3 * rng.normal(size=(290, 32)))
    x = np.vstack([x, normalize_rows(x[:10] + 0.001 * rng.normal(size=(10, 32)))])
    ids = [f"d{i:03d}" for i in range(290)] + [f"d{i:03d}~copy" for i in range(10)]
    table = pa.table({ID: ids, TEXT_HASH: ids, DENSE: to_vector_array(x)})
    uri = f"s3://{BUCKET}/lake"
    connect(uri, resolve_storage(None, os.environ)).create_table("docs", table, mode="overwrite")
    return uri


def test_cluster_and_dedup_read_and_write_the_bucket(ray_session, s3_lake, tmp_path):
    args = ["--table", "docs", "--json"]
    assert cli_result("cluster", s3_lake, *args, "--k", "3", "--plot-dir", str(tmp_path / "report"))["rows"] == 300
    assert cli_result("dedup", s3_lake, *args, "--work-dir", str(tmp_path / "work"))["duplicates"] == 10

    db = connect(s3_lake, resolve_storage(None, os.environ))
    assert db.open_table("docs_clusters").count_rows() == 300
    duplicates = db.open_table("docs_duplicates").to_arrow().sort_by(ID)
    pairs = dict(zip(duplicates.column(ID).to_pylist(), duplicates.column(DUPLICATE_OF).to_pylist(), strict=True))
    assert {a.split("~")[0] for a in pairs} | {b.split("~")[0] for b in pairs.values()} == {
        f"d{i:03d}" for i in range(10)
    }
    assert all(a.split("~")[0] == b.split("~")[0] for a, b in pairs.items())
    assert (tmp_path / "report" / "cluster_sizes.png").exists()
