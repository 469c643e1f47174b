"""The embed job: Parquet shards -> shard readers -> encoder actor pool -> Lance fragment writers ->
progressive commits on the driver.

Reading and writing are plain Ray tasks; encoding runs in an actor pool so each worker loads the
model once (one GPU per actor when the cluster has GPUs). Only fragment metadata and counts come
back to the driver, never the vectors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from operators.embed import PADDED_COL, TOKENS_COL, TRUNCATED_COL, WORKER_COL, EmbedRows
from operators.encoders.base import EncoderSpec
from operators.encoders.loader import describe_encoder, model_kind
from operators.schema import ID, QUARANTINE_SCHEMA, REASON, SOURCE, embeddings_schema, quarantine_table_name
from operators.sinks.lance_sink import LanceTarget, ProgressiveCommitter, ensure_table, write_fragment_json
from operators.sources import (
    READ_AT_COL,
    REASON_COL,
    SOURCE_COL,
    ShardReader,
    check_columns,
    count_rows,
    find_shards,
    read_schema,
)
from operators.table_meta import TableMeta, with_meta
from pipelines.ray_runtime import cluster_cpus, cluster_gpus, start_ray

log = logging.getLogger(__name__)


@dataclass
class EmbedJob:
    """Everything one `embedlake embed` run needs; plain data validated at the edge."""

    input: str
    output: str
    table: str = "docs"
    model: str = "minilm"
    id_column: str = "id"
    text_column: str = "text"
    dims: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    max_length: int | None = None
    keep_columns: list[str] = field(default_factory=list)
    address: str | None = None
    overwrite: bool = False
    storage_options: dict = field(default_factory=dict)
    actors: int | None = None  # encoder actors; default one per GPU, else one per 2 CPUs
    threads_per_actor: int | None = None
    rows_per_encode_batch: int = 1024
    max_tokens_per_batch: int = 16384
    commit_every_seconds: float = 5.0
    progress: bool = True

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(
            model=self.model,
            dims=list(self.dims),
            outputs=list(self.outputs),
            max_length=self.max_length,
            max_tokens_per_batch=self.max_tokens_per_batch,
        )


@dataclass
class RunCounts:
    rows_written: int = 0
    rows_quarantined: int = 0
    rows_truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    first_read_at: float | None = None
    workers: set[str] = field(default_factory=set)


def run_embed(job: EmbedJob) -> dict:
    """Run the job and return the JSON summary (interface.md)."""
    started = time.time()
    shards = find_shards(job.input, job.storage_options)
    input_schema = read_schema(shards)
    check_columns(input_schema, [job.id_column, job.text_column, *job.keep_columns], f"input {job.input}")
    spec = job.encoder_spec()
    description = describe_encoder(spec)
    keep_fields = [input_schema.field(name) for name in job.keep_columns]
    meta = TableMeta(
        model=job.model,
        model_id=description.model_id,
        kind=model_kind(job.model),
        dims=description.dims,
        outputs=[f.name for f in description.fields],
        max_length=description.max_length,
    )
    schema = with_meta(embeddings_schema(description.fields, keep_fields), meta)
    target = LanceTarget(job.output, job.table, job.storage_options)
    quarantine = LanceTarget(job.output, quarantine_table_name(job.table), job.storage_options)
    ensure_table(target, schema, overwrite=job.overwrite)
    ensure_table(quarantine, QUARANTINE_SCHEMA, overwrite=job.overwrite)
    rows_in = count_rows(shards)
    log.info("embedding %d rows from %d shard(s) with %s", rows_in, len(shards.files), description.model_id)

    we_started_ray = start_ray(job.address, num_cpus=os.cpu_count())
    try:
        counts = _execute(job, shards.files, spec, schema, target, quarantine, rows_in)
    finally:
        if we_started_ray:
            import ray

            ray.shutdown()
    finished = time.time()
    accounted = counts.rows_written + counts.rows_quarantined
    if accounted != rows_in:
        msg = f"row accounting failed: {rows_in} rows read, {accounted} written or quarantined"
        raise RuntimeError(msg)
    encode_seconds = max(finished - (counts.first_read_at or started), 1e-9)
    return {
        "rows_in": rows_in,
        "rows_written": counts.rows_written,
        "rows_unchanged": 0,
        "rows_quarantined": counts.rows_quarantined,
        "rows_truncated": counts.rows_truncated,
        "seconds": round(finished - started, 3),
        "encode_seconds": round(encode_seconds, 3),
        "docs_per_s": round(counts.rows_written / encode_seconds, 2),
        "tokens_per_s": round(counts.tokens / encode_seconds, 1),
        "tokens": counts.tokens,
        "padding_waste": round(1 - counts.tokens / counts.padded_tokens, 4) if counts.padded_tokens else 0.0,
        "shards": len(shards.files),
        "encoder_actors": len(counts.workers),
        "encoder_nodes": len({worker.rsplit(":", 1)[0] for worker in counts.workers}),
        "table": job.table,
        "quarantine_table": quarantine.table,
        "uri": job.output,
        "model": description.model_id,
    }


def _execute(
    job: EmbedJob,
    files: list[str],
    spec: EncoderSpec,
    schema: pa.Schema,
    target: LanceTarget,
    quarantine: LanceTarget,
    rows_in: int,
) -> RunCounts:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

    gpus = cluster_gpus()
    cpus = cluster_cpus()
    actors = job.actors or (gpus if gpus else max(1, cpus // 2))
    threads = job.threads_per_actor or (1 if gpus else max(1, cpus // actors))
    reader = ShardReader(job.id_column, job.text_column, job.keep_columns, job.storage_options)

    def read_shards(batch: dict) -> Iterator[pa.Table]:
        for path in batch["path"]:
            yield from reader.read(str(path))

    def write_batch(batch: pa.Table) -> pa.Table:
        return write_fragments_for(batch, target, quarantine, schema)

    dataset = (
        ray.data.from_items([{"path": path} for path in files], override_num_blocks=min(len(files), 1000))
        .map_batches(read_shards, batch_size=1, batch_format="numpy", num_cpus=0.5)
        .map_batches(
            EmbedRows,
            fn_constructor_kwargs={"spec": spec, "keep_columns": job.keep_columns, "threads": threads},
            batch_size=job.rows_per_encode_batch,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0,
            num_cpus=1,
        )
        .map_batches(write_batch, batch_size=None, batch_format="pyarrow", num_cpus=0.5)
    )
    counts = RunCounts()
    committer = ProgressiveCommitter(target, every_seconds=job.commit_every_seconds)
    quarantine_committer = ProgressiveCommitter(quarantine, every_seconds=job.commit_every_seconds)
    progress = _progress_bar(rows_in, job.progress)
    for result in dataset.iter_rows():
        committer.add(list(result["fragments"]))
        quarantine_committer.add(list(result["quarantine_fragments"]))
        counts.rows_written += int(result["rows_written"])
        counts.rows_quarantined += int(result["rows_quarantined"])
        counts.rows_truncated += int(result["rows_truncated"])
        counts.tokens += int(result["tokens"])
        counts.padded_tokens += int(result["padded_tokens"])
        read_at = float(result["first_read_at"])
        counts.first_read_at = read_at if counts.first_read_at is None else min(counts.first_read_at, read_at)
        counts.workers.update(result["workers"])
        progress.update(int(result["rows_written"]) + int(result["rows_quarantined"]))
    committer.commit()
    quarantine_committer.commit()
    progress.close()
    return counts


def write_fragments_for(batch: pa.Table, target: LanceTarget, quarantine: LanceTarget, schema: pa.Schema) -> pa.Table:
    """Split a batch into embedded and quarantined rows, write both as fragments, return one summary row."""
    bad = pc.is_valid(batch.column(REASON_COL))
    good_rows = batch.filter(pc.invert(bad))
    bad_rows = batch.filter(bad)
    quarantined = pa.table({
        ID: bad_rows.column(ID),
        SOURCE: bad_rows.column(SOURCE_COL),
        REASON: bad_rows.column(REASON_COL),
    })
    fragments = write_fragment_json(good_rows, target, schema)
    quarantine_fragments = write_fragment_json(quarantined, quarantine, QUARANTINE_SCHEMA)
    return pa.table({
        "fragments": pa.array([fragments], pa.list_(pa.string())),
        "quarantine_fragments": pa.array([quarantine_fragments], pa.list_(pa.string())),
        "rows_written": [good_rows.num_rows],
        "rows_quarantined": [bad_rows.num_rows],
        "rows_truncated": [int(pc.sum(batch.column(TRUNCATED_COL).cast(pa.int64())).as_py() or 0)],
        "tokens": [int(pc.sum(batch.column(TOKENS_COL)).as_py() or 0)],
        "padded_tokens": [int(pc.sum(batch.column(PADDED_COL)).as_py() or 0)],
        "first_read_at": [pc.min(batch.column(READ_AT_COL)).as_py() or time.time()],
        "workers": pa.array([pc.unique(batch.column(WORKER_COL)).to_pylist()], pa.list_(pa.string())),
    })


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", file=sys.stderr, disable=not enabled, mininterval=1.0, smoothing=0.1)
