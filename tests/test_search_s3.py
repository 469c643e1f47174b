"""Search and `embedlake index` on a lake in an S3 bucket (a real S3 server on loopback), with the AWS_*
variables only: the sparse index is persisted in the bucket next to the table and found again."""

from __future__ import annotations

import os

import numpy as np
import pytest

from operators.schema import COLBERT, DENSE, SPARSE
from operators.scoring import QueryVectors, SparseVector
from operators.search.retriever import Retriever
from operators.search.sparse_index import stored_versions
from operators.storage import resolve_storage
from operators.table_meta import TableMeta
from operators.tables import connect
from tests.cli_runs import cli_result
from tests.object_store_server import aws_environment
from tests.search_tables import FAKE_MODEL_ID, brute_lexical, brute_ranking, random_rows, to_arrow

BUCKET = "embedlake-search"


@pytest.fixture
def s3_lake(s3_server) -> tuple[str, dict]:
    with aws_environment(s3_server.env()):
        yield make_s3_lake(s3_server)


def make_s3_lake(s3_server):
    s3_server.create_bucket(BUCKET)
    columns = random_rows(np.random.default_rng(21), 150)
    meta = TableMeta(model="fake", model_id=FAKE_MODEL_ID, kind="bge-m3", dims=[16, 8], outputs=["dense", "sparse"])
    uri = f"s3://{BUCKET}/lake"
    connect(uri, resolve_storage(None, os.environ)).create_table("docs", to_arrow(columns, meta=meta))
    return uri, columns


def test_sparse_and_hybrid_search_on_s3_persist_the_index_in_the_bucket(s3_lake):
    uri, columns = s3_lake
    rng = np.random.default_rng(5)
    sparse = SparseVector.from_pairs(rng.choice(60, 8, replace=False), rng.uniform(0.1, 0.5, 8))
    query = QueryVectors(dense={DENSE: columns[DENSE][3]}, sparse=sparse,
                         colbert=columns[COLBERT][3].astype(np.float32))
    retriever = Retriever(uri, "docs", exact=True)
    lexical = [brute_lexical(sparse, row) for row in columns[SPARSE]]
    expected = [pair for pair in brute_ranking(columns["id"], lexical, 150) if pair[1] > 0][:5]
    hits = retriever.search(query, mode="sparse", k=5)
    assert [h["id"] for h in hits] == [doc for doc, _ in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [s for _, s in expected], atol=1e-6)
    assert retriever.search(query, mode="hybrid", k=3)[0]["id"] == "doc00003"

    version = retriever.store.version
    assert stored_versions(f"{uri}/docs.sparse_index", resolve_storage(None)) == [version]
    result = cli_result("index", uri, "--table", "docs", "--json")
    assert result["sparse_index"]["action"] == "loaded" and result["sparse_index"]["rows"] == 150
