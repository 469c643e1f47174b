"""The embed job: Parquet shards -> shard readers -> encoder actor pool -> keyed upserts by writer tasks.

Before any encoding, one pass over the id column of every shard counts the input, finds duplicate
ids and unreadable files. Reading and writing are plain Ray tasks; encoding runs in an actor pool so
each worker loads the model (and the table's known keys) once, one GPU per actor when the cluster
has GPUs. Writers upsert batch by batch, so a killed run resumes where its commits stopped; only
counts come back to the driver, never vectors. Every input row ends up written, unchanged or
quarantined, and the run checks that before it reports success.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import pyarrow as pa

from operators.embed import EmbedRows, known_key
from operators.encoders.base import EncoderSpec
from operators.encoders.loader import describe_encoder, model_kind
from operators.errors import one_line
from operators.run_log import RunLog
from operators.schema import (
    ID,
    MODEL,
    QUARANTINE_SCHEMA,
    REASON,
    RUN_ID,
    SOURCE,
    TEXT_HASH,
    embeddings_schema,
    quarantine_table_name,
    require_columns,
)
from operators.sinks.lance_sink import (
    compact,
    delete_keys_not_in,
    ensure_table,
    load_known_keys,
    upsert,
)
from operators.sources import ShardReader, find_shards, read_schema
from operators.sources import scan_input as scan_shards
from operators.storage import as_settings
from operators.table_meta import TableMeta, with_meta
from operators.tables import Lake, TableRef
from pipelines.embed_writer import Tables, write_batch
from pipelines.ray_runtime import cluster_cpus, cluster_gpus, start_ray
from pipelines.workers import plan_rows_per_write, plan_workers

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
    object_store_memory: int | None = None  # bytes, for the local Ray a run starts (None: Ray's default)
    overwrite: bool = False
    sync_deletes: bool = False
    skip_bad_files: bool = False
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings (None: environment's)
    actors: int | None = None  # encoder actors; default one per GPU, else one per CPU (pipelines/workers.py)
    actor_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per encoder actor
    threads_per_actor: int | None = None
    rows_per_encode_batch: int | None = None  # default 4096 on GPUs, 256 on CPUs (pipelines/workers.py)
    rows_per_write: int | None = None  # rows per upsert commit; default: pipelines/workers.py plan_rows_per_write
    max_tokens_per_batch: int | None = None  # default per device (operators/encoders/base.py)
    precision: str = "auto"  # auto, fp32, bf16, fp16, int8 (operators/encoders/precision.py)
    progress: bool = True
    command: list[str] = field(default_factory=list)  # argv, for the run log

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(
            model=self.model,
            dims=list(self.dims),
            outputs=list(self.outputs),
            max_length=self.max_length,
            max_tokens_per_batch=self.max_tokens_per_batch,
            precision=self.precision,
        )


@dataclass
class RunCounts:
    rows_written: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_quarantined: int = 0
    rows_truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    first_read_at: float | None = None
    workers: set[str] = field(default_factory=set)
    column_bytes: dict[str, int] = field(default_factory=dict)

    def add(self, result: dict) -> None:
        for name in ("rows_written", "rows_inserted", "rows_updated", "rows_unchanged", "rows_quarantined",
                     "rows_truncated", "tokens", "padded_tokens"):
            setattr(self, name, getattr(self, name) + int(result[name]))
        read_at = float(result["first_read_at"])
        self.first_read_at = read_at if self.first_read_at is None else min(self.first_read_at, read_at)
        self.workers.update(result["workers"])
        for name, size in json.loads(result["column_bytes"]).items():
            self.column_bytes[name] = self.column_bytes.get(name, 0) + size

    def bytes_per_doc(self) -> dict[str, float]:
        """Average stored bytes per embedded row of each vector column (ColBERT dominates storage)."""
        return {name: round(size / self.rows_written, 1) for name, size in self.column_bytes.items()} if \
            self.rows_written else {}


def run_embed(job: EmbedJob) -> dict:
    """Run the job and return the JSON summary (interface.md)."""
    started = time.time()
    job = replace(job, storage=as_settings(job.storage))  # resolved once, here, for every worker
    shards = find_shards(job.input, job.storage)
    required = [job.id_column, job.text_column]
    input_schema = read_schema(shards, skip_bad_files=job.skip_bad_files)
    require_columns(input_schema, [*required, *job.keep_columns], f"input {job.input}")
    spec = job.encoder_spec()
    description = describe_encoder(spec)
    meta = TableMeta(
        model=job.model,
        model_id=description.model_id,
        kind=model_kind(job.model),
        dims=description.dims,
        outputs=[f.name for f in description.fields],
        max_length=description.max_length,
    )
    keep_fields = [input_schema.field(name) for name in job.keep_columns]
    schema = with_meta(embeddings_schema(description.fields, keep_fields), meta)
    lake = Lake(job.output, job.storage)
    tables = Tables(main=lake.table(job.table), quarantine=lake.table(quarantine_table_name(job.table)), schema=schema)
    ensure_table(tables.main, schema, primary_key=ID, overwrite=job.overwrite)
    ensure_table(tables.quarantine, QUARANTINE_SCHEMA, primary_key=SOURCE, overwrite=job.overwrite)
    config = {k: v for k, v in asdict(job).items() if k != "command"}
    run_log = RunLog.for_table(lake, job.table, job="embed",
                               command=job.command or sys.argv, config=config, model=description.model_id)
    run_log.start()
    try:
        summary = _run(job, shards, required, spec, tables, run_log.run_id, started)
    except BaseException as error:
        run_log.finish({}, error=one_line(error, 1000, job.storage))
        raise
    summary["run_id"] = run_log.run_id
    run_log.finish(summary)
    return summary


def _run(job: EmbedJob, shards, required: list[str], spec: EncoderSpec, tables: Tables, run_id: str,
         started: float) -> dict:
    scan = scan_shards(shards, required, job.id_column, skip_bad_files=job.skip_bad_files)
    # The pre-scan's per-file id tables are freed, but Arrow's allocator keeps their pages for reuse
    # that never comes in the driver: ~280 MB per million ids, measured.
    pa.default_memory_pool().release_unused()
    for path, reason in scan.bad_files.items():
        upsert(pa.Table.from_pylist([{ID: None, SOURCE: path, REASON: f"unreadable shard: {reason}", RUN_ID: run_id}],
                                    schema=QUARANTINE_SCHEMA), tables.quarantine, QUARANTINE_SCHEMA, SOURCE)
    log.info("embedding %d rows from %d shard(s) with %s (%d duplicate ids, %d bad files)", scan.rows_in,
             len(scan.files), describe_model_id(tables.schema), len(scan.duplicate_sources), len(scan.bad_files))
    counts = RunCounts()
    deleted = 0
    shutdown_seconds = 0.0  # stopping the Ray we started: wall time, not embedding time
    if scan.files:
        we_started_ray = start_ray(job.address, num_cpus=os.cpu_count(), object_store_memory=job.object_store_memory)
        try:
            counts = _execute(job, scan, spec, tables, run_id)
        finally:
            if we_started_ray:
                import ray

                stopping = time.time()
                ray.shutdown()
                shutdown_seconds = time.time() - stopping
    if job.sync_deletes:
        deleted = delete_keys_not_in(tables.main, ID, scan.ids)
    compact(tables.main)
    finished = time.time()
    accounted = counts.rows_written + counts.rows_unchanged + counts.rows_quarantined
    if accounted != scan.rows_in:
        msg = (f"row accounting failed: {scan.rows_in} rows read, {accounted} written, unchanged or "
               "quarantined; the table holds what was committed, re-run the same command to finish")
        raise RuntimeError(msg)
    # First read to last commit (deletes and compaction included), not counting Ray's shutdown.
    encode_seconds = max(finished - shutdown_seconds - (counts.first_read_at or started), 1e-9)
    encoded = counts.rows_written
    return {
        "rows_in": scan.rows_in,
        "rows_written": counts.rows_written,
        "rows_inserted": counts.rows_inserted,
        "rows_updated": counts.rows_updated,
        "rows_unchanged": counts.rows_unchanged,
        "rows_quarantined": counts.rows_quarantined,
        "rows_deleted": deleted,
        "rows_truncated": counts.rows_truncated,
        "duplicate_ids": len(scan.duplicate_sources),
        "files_quarantined": len(scan.bad_files),
        "seconds": round(finished - started, 3),
        "encode_seconds": round(encode_seconds, 3),
        "docs_per_s": round(encoded / encode_seconds, 2),
        "tokens_per_s": round(counts.tokens / encode_seconds, 1),
        "tokens": counts.tokens,
        "padding_waste": round(1 - counts.tokens / counts.padded_tokens, 4) if counts.padded_tokens else 0.0,
        "bytes_per_doc": counts.bytes_per_doc(),
        "shards": len(scan.files),
        "encoder_actors": len(counts.workers),
        "encoder_nodes": len({worker.rsplit(":", 1)[0] for worker in counts.workers}),
        "table": job.table,
        "quarantine_table": tables.quarantine.name,
        "uri": job.output,
        "model": describe_model_id(tables.schema),
    }


def describe_model_id(schema: pa.Schema) -> str:
    from operators.table_meta import read_meta

    meta = read_meta(schema)
    return meta.model_id if meta else ""


def known_keys_loader(target: TableRef, model_id: str) -> set[str]:
    """Runs inside each encoder actor: the (id, text hash) pairs already embedded with this model."""
    known = load_known_keys(target, ID, TEXT_HASH, MODEL, model_id)
    return {known_key(i, h) for i, h in zip(known.column(ID).to_pylist(), known.column(TEXT_HASH).to_pylist(),
                                            strict=True)}


def _execute(job: EmbedJob, scan, spec: EncoderSpec, tables: Tables, run_id: str) -> RunCounts:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

    plan = plan_workers(cluster_cpus(), cluster_gpus(), job.actors, job.threads_per_actor, job.rows_per_encode_batch)
    reader = ShardReader(
        job.id_column,
        job.text_column,
        job.keep_columns,
        job.storage,
        duplicate_sources=scan.duplicate_sources,
        keep_types={name: tables.schema.field(name).type for name in job.keep_columns},
    )

    def read_shards(batch: dict) -> Iterator[pa.Table]:
        for path, row_groups in zip(batch["path"], batch["row_groups"], strict=True):
            yield from reader.read(str(path), None if row_groups is None else [int(g) for g in row_groups])

    known = None if job.overwrite else partial(known_keys_loader, tables.main)
    # One read task per piece of about a batch of rows, so big shards feed several actors at once.
    pieces = [{"path": path, "row_groups": groups} for path, groups in scan.pieces(plan.rows_per_batch)]
    dataset = (
        ray.data.from_items(pieces, override_num_blocks=min(len(pieces), 1000))
        .map_batches(read_shards, batch_size=1, batch_format="numpy", num_cpus=plan.io_cpus)
        .map_batches(
            EmbedRows,
            fn_constructor_kwargs={"spec": spec, "keep_columns": job.keep_columns, "threads": plan.threads,
                                   "known_keys": known},
            batch_size=plan.rows_per_batch,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=plan.actors, max_concurrent_calls_per_actor=plan.concurrent_calls,
                                      max_tasks_in_flight_per_actor=plan.tasks_in_flight),
            num_gpus=plan.actor_gpus,
            num_cpus=plan.actor_cpus,
            resources=job.actor_resources or None,
        )
        .map_batches(
            partial(write_batch, tables=tables, run_id=run_id),
            batch_size=plan_rows_per_write(scan.rows_in, plan, job.rows_per_write),
            batch_format="pyarrow",
            num_cpus=plan.io_cpus,
        )
    )
    counts = RunCounts()
    progress = _progress_bar(scan.rows_in, job.progress)
    for result in dataset.iter_rows():
        counts.add(result)
        progress.update(int(result["rows_written"]) + int(result["rows_unchanged"]) + int(result["rows_quarantined"]))
    progress.close()
    return counts


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", file=sys.stderr, disable=not enabled, mininterval=1.0, smoothing=0.1)
