"""Plumbing shared by the downstream jobs (cluster, dedup): tables in, Ray for the parallel pass, tables out.

One place for: opening a LanceDB table with a one-line error, checking the vector column, drawing a seeded
sample without scanning everything, running Ray only around the parallel pass, handing rows to Ray Data in
blocks of a sensible size, and replacing a result table from a stream of batches in one commit.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from operators.storage import StorageSettings

# Ray Data blocks of about this many bytes of vectors: big enough to amortise a task, small enough to stream.
BLOCK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Lake:
    """A LanceDB database (local folder or object-store URI) and the storage settings to reach it
    (operators/storage.py: environment, config `storage:` section, --storage)."""

    uri: str
    storage: Mapping = field(default_factory=dict, repr=False)

    def connect(self):
        from operators.storage import connect

        return connect(self.uri, self.storage)

    def lance_options(self) -> dict | None:
        """The settings as Lance storage options, for readers in Ray workers."""
        from operators.storage import lance_options, resolve_storage

        settings = self.storage if isinstance(self.storage, StorageSettings) else resolve_storage(self.storage)
        return dict(lance_options(self.uri, settings)) or None

    def open_table(self, name: str):
        """The table `name`, or a one-line ValueError naming what is missing."""
        db = self.connect()
        try:
            return db.open_table(name)
        except (ValueError, FileNotFoundError) as error:
            msg = f"table {name!r} not found at {self.uri}"
            raise ValueError(msg) from error

    def write_table(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]):
        """Create or replace table `name` from a stream of batches, as one commit (readers never see half)."""

        def record_batches() -> Iterator[pa.RecordBatch]:
            wrote = False
            for batch in batches:
                table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
                for record_batch in table.select(schema.names).cast(schema).to_batches():
                    wrote = True
                    yield record_batch
            if not wrote:  # an empty result is still a table, with the right columns
                yield pa.RecordBatch.from_pylist([], schema=schema)

        reader = pa.RecordBatchReader.from_batches(schema, record_batches())
        return self.connect().create_table(name, data=reader, mode="overwrite")


def vector_dim(schema: pa.Schema, column: str, table: str) -> int:
    """The width D of a fixed_size_list<float>[D] column; a one-line error for a missing / non-vector one."""
    if column not in schema.names:
        vectors = [f.name for f in schema if _is_vector_type(f.type)]
        msg = f"table {table!r} has no column {column!r} (vector columns: {', '.join(vectors) or 'none'})"
        raise ValueError(msg)
    field = schema.field(column)
    if not _is_vector_type(field.type):
        msg = f"column {column!r} of table {table!r} is {field.type}, not a fixed-size float vector"
        raise ValueError(msg)
    return field.type.list_size


def require_column(schema: pa.Schema, column: str, table: str, why: str) -> None:
    if column not in schema.names:
        msg = f"table {table!r} has no column {column!r} ({why})"
        raise ValueError(msg)


def _is_vector_type(dtype: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(dtype) and pa.types.is_floating(dtype.value_type)


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
    import ray
    from ray.data import DataContext

    from pipelines.ray_runtime import start_ray

    with (watch or Stopwatch()).stage("ray_start"), warnings.catch_warnings():
        # Ray spawns its services by fork+exec; lance's at-fork hooks warn about forks that never run lance.
        warnings.filterwarnings("ignore", message=".*fork")
        we_started = start_ray(address, num_cpus=os.cpu_count())
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        if we_started:
            ray.shutdown()


def read_ray_dataset(lake: Lake, dataset, columns: list[str], dim: int):
    """The table as a Ray Data dataset of `columns`, in blocks sized for vectors of `dim`."""
    import ray

    from pipelines.ray_runtime import cluster_cpus

    blocks = num_blocks(dataset.count_rows(), dim, cluster_cpus())
    return ray.data.read_lance(
        dataset.uri, columns=columns, storage_options=lake.lance_options(), override_num_blocks=blocks
    )


def is_local_uri(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri
