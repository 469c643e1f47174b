"""Scratch files that regroup rows by bucket: many workers write, then one task reads each bucket whole.

SemDeDup needs all rows of a cluster in one place, but no process should hold the table. Each worker writes
its batch's rows into `<root>/bucket=<b>/` as uncompressed Arrow IPC files (vectors do not compress, and
IPC writes at disk speed: ~20x faster than Parquet here); a bucket is then read back by one task.
The root must be a folder every Ray node can read (local disk on one machine, or a shared mount).
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pyarrow as pa
import pyarrow.dataset as pads

BUCKET = "bucket"
_PARTITIONING = pads.partitioning(pa.schema([(BUCKET, pa.int32())]), flavor="hive")


def write_buckets(table: pa.Table, root: str) -> int:
    """Append the rows of `table` (with an int32 `bucket` column) to their buckets under `root`."""
    if table.num_rows == 0:
        return 0
    pads.write_dataset(
        table,
        root,
        format="ipc",
        partitioning=_PARTITIONING,
        basename_template=f"part-{uuid.uuid4().hex}-{{i}}.arrow",
        existing_data_behavior="overwrite_or_ignore",
    )
    return table.num_rows


def bucket_folders(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, name) for name in os.listdir(root) if name.startswith(f"{BUCKET}="))


def read_bucket(folder: str) -> pa.Table:
    """Every row written to one bucket (without the bucket column)."""
    return pads.dataset(folder, format="ipc").to_table()


def work_folder(uri: str, name: str, work_dir: str | None = None) -> str:
    """A fresh scratch folder for one job's bucket files: under `work_dir` when given (it must be shared by
    every Ray node), else beside the tables of a local OUTPUT, else in the temporary folder."""
    from pipelines.downstream import is_local_uri, local_path

    name = f"{name}_{uuid.uuid4().hex[:8]}"
    if work_dir:
        return os.path.join(work_dir, name)
    if is_local_uri(uri):
        return os.path.join(local_path(uri), ".embedlake_work", name)
    return os.path.join(tempfile.gettempdir(), name)
