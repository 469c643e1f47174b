"""Plumbing shared by the downstream jobs (cluster, dedup): tables in, Ray for the parallel pass, tables out.

One place for: drawing a seeded sample without scanning everything, running Ray only around the parallel
pass, and handing a table's rows to Ray Data in blocks of a sensible size. Tables are opened and written
through operators/tables.py like everywhere else.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from operators.tables import Lake

# Ray Data blocks of about this many bytes of vectors: big enough to amortise a task, small enough to stream.
BLOCK_BYTES = 64 * 1024 * 1024


def sample_rows(dataset, rows: int, columns: list[str], seed: int) -> pa.Table:
    """`rows` rows drawn uniformly without replacement (all rows when the table is smaller), by random access
    to those rows only; in table order, so the same seed gives the same sample."""
    total = dataset.count_rows()
    if rows >= total:
        return dataset.to_table(columns=columns)
    picked = np.sort(np.random.default_rng(seed).choice(total, size=rows, replace=False))
    return dataset.take(picked.tolist(), columns=columns)


def num_blocks(rows: int, dim: int, min_blocks: int) -> int:
    """Ray Data blocks for `rows` vectors of `dim` float32: at least one per CPU, about BLOCK_BYTES each."""
    by_size = math.ceil(rows * dim * 4 / BLOCK_BYTES)
    return max(1, min(rows, max(min_blocks, by_size)))


class Stopwatch:
    """Seconds per named stage of a job, for its JSON summary."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)

    def summary(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 3)}


@contextmanager
def using_ray(address: str | None, watch: Stopwatch | None = None):
    """Ray for the parallel pass: join `address` (or the running Ray), else start a local one and stop it
    afterwards. Ray Data's progress bars are off: progress goes to the log."""

    from pipelines.ray_runtime import quiet_ray_data, start_ray, stop_ray

    with (watch or Stopwatch()).stage("ray_start"):
        we_started = start_ray(address, num_cpus=os.cpu_count())
    quiet_ray_data()
    try:
        yield
    finally:
        if we_started:
            stop_ray()


def read_ray_dataset(lake: Lake, dataset, columns: list[str], dim: int):
    """The table as a Ray Data dataset of `columns`, at the version `dataset` was opened at (the one the job
    sampled and checked), in blocks sized for vectors of `dim`."""
    import ray

    from pipelines.ray_runtime import cluster_cpus

    blocks = num_blocks(dataset.count_rows(), dim, cluster_cpus())
    return ray.data.read_lance(
        dataset.uri, version=dataset.version, columns=columns, storage_options=lake.lance_options(),
        override_num_blocks=blocks,
    )


def is_local_uri(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


# Rows per data file of a table written by Ray workers: few, big fragments (one commit lists them all).
ROWS_PER_FRAGMENT = 1_048_576


class FragmentWriter:
    """Ray Data batch transform: writes its rows as uncommitted data files of one table and returns their
    fragment metadata (JSON) and row counts, so no row passes through the driver."""

    def __init__(self, ref, schema: pa.Schema) -> None:
        self.ref = ref
        self.schema = schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        import json

        fragments = self.ref.write_fragments(batch, self.schema)
        return pa.table({"fragment": pa.array(fragments, type=pa.string()),
                         "rows": pa.array([json.loads(f)["physical_rows"] for f in fragments], type=pa.int64())})


def write_table_from_ray(ref, schema: pa.Schema, dataset, rows_per_fragment: int = ROWS_PER_FRAGMENT,
                         total: int | None = None, desc: str = "rows written") -> tuple[int, int]:
    """Write a Ray dataset as table `ref` (created or replaced) in one commit: workers write the data
    files, the driver collects only their metadata and commits. Returns (rows, version)."""
    from tqdm import tqdm

    written = dataset.map_batches(FragmentWriter(ref, schema), batch_format="pyarrow",
                                  batch_size=rows_per_fragment)
    fragments: list[str] = []
    rows = 0
    with tqdm(total=total, desc=desc, unit="row", disable=None, leave=False) as progress:
        for batch in written.iter_batches(batch_format="pyarrow", batch_size=None):
            fragments.extend(batch.column("fragment").to_pylist())
            counted = int(sum(batch.column("rows").to_pylist()))
            rows += counted
            progress.update(counted)
    return rows, ref.commit_fragments(schema, fragments)
