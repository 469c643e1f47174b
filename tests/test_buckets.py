"""Bucket scratch files: rows from many writers regroup by bucket; a retried writer's repeats are dropped."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.dedup import SemDedupConfig
from operators.schema import CLUSTER, DENSE, DISTANCE, ID
from operators.vectors import normalize_rows, to_vector_array
from pipelines.buckets import BUCKET, bucket_folders, read_bucket, write_buckets
from pipelines.dedup import _dedup_bucket


def rows(ids: list[str], buckets: list[int], vectors: np.ndarray) -> pa.Table:
    return pa.table(
        {
            ID: ids,
            CLUSTER: pa.array(buckets, pa.int32()),
            DISTANCE: pa.array(np.zeros(len(ids), np.float32)),
            DENSE: to_vector_array(vectors),
            BUCKET: pa.array(buckets, pa.int32()),
        }
    )


def test_rows_regroup_by_bucket(tmp_path):
    x = normalize_rows(np.random.default_rng(0).normal(size=(6, 4)))
    assert write_buckets(rows(["a", "b", "c"], [0, 1, 0], x[:3]), str(tmp_path)) == 3
    assert write_buckets(rows(["d", "e", "f"], [1, 1, 2], x[3:]), str(tmp_path)) == 3
    folders = bucket_folders(str(tmp_path))
    assert [f.rsplit("=", 1)[1] for f in folders] == ["0", "1", "2"]
    assert sorted(read_bucket(folders[1]).column(ID).to_pylist()) == ["b", "d", "e"]
    assert bucket_folders(str(tmp_path / "missing")) == []


def test_retried_writer_repeats_are_not_duplicates(tmp_path):
    x = normalize_rows(np.random.default_rng(1).normal(size=(3, 8)))
    batch = rows(["a", "b", "c"], [0, 0, 0], x)
    write_buckets(batch, str(tmp_path))
    write_buckets(batch, str(tmp_path))  # the same task ran twice
    duplicates, scores = _dedup_bucket(bucket_folders(str(tmp_path))[0], DENSE, SemDedupConfig())
    assert duplicates.num_rows == 0 and len(scores) == 3
