"""The embed job: lake shards -> the incremental decision -> encoder actor pool -> keyed upserts.

    list shards (sizes, ETags) ──> <T>_files: skip shards unchanged since the last run
    LakeSource (read tasks planned from Parquet footers) ┐
    table keys (looked up by id, or TableKeysSource)     ┴─> repartition(keys=[id]) ─> decide
      ─> map_batches(EmbedRows, ActorPoolStrategy) ─> write_datasink(EmbedSink)
    the driver: counts ─> accounting check ─> indexes, manifest ─> publish (move `serving`) ─> maintain ─> run log

Nothing that grows with the corpus lives in one process: duplicate ids, unchanged rows and deleted
ids are found per hash partition of ids by Ray Data tasks (operators/incremental.py), encoder actors
hold the model only, and the driver sees footers, file lists and counts. Writers upsert batch by
batch, so a killed run resumes where its commits stopped; the manifest is written only after the
accounting check, so a shard counts as done only once every row of it is. Readers see none of it
until the end: they read the table's `serving` version, which the run moves to its own last version
only when everything above holds (operators/serving.py); a model upgrade goes the same way.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import pyarrow as pa

from operators.encoders.base import EncoderSpec
from operators.encoders.folders import OUTPUTS
from operators.encoders.loader import describe_encoder, model_kind
from operators.encoders.precision import Precision, resolve_precision
from operators.errors import UsageError, check_choices, check_positive, one_line, option_name
from operators.exchange import decided_row_schema, key_row_schema
from operators.incremental import Decision, TableKeys, decide
from operators.maintenance import DEFAULT_KEEP_RUNS, Retention, bytes_on_disk, parse_age, refresh, retain
from operators.manifest import FILES_SCHEMA, FileManifest, unchanged_files
from operators.passages import Chunking, ChunkMode, passage_model_id
from operators.quantize import CALIBRATION_ROWS, ranges_to_json
from operators.run_log import RUNS_SCHEMA, RUNS_SUFFIX, RunLog
from operators.schema import (
    ID,
    QUARANTINE_SCHEMA,
    REASON,
    RUN_ID,
    SOURCE,
    TEXT,
    embeddings_schema,
    is_table_column,
    passage_fields,
    quarantine_table_name,
    require_columns,
)
from operators.serving import REBUILT, RunBase, begin_run, mark_building, publish, serving_version
from operators.sinks.lance_sink import check_columns, ensure_table, upsert
from operators.sources import Footers, ReadPlan, ShardReader, ShardSet, find_shards, read_footers, read_schema
from operators.storage import as_settings
from operators.stored_vectors import VectorStorage
from operators.table_meta import TableMeta, with_meta
from operators.tables import Lake, TableRef, check_table_name
from pipelines.calibrate import plan_existing, requantize_stored, requested_storage, settle_new
from pipelines.embed_writer import EmbedSink, RunCounts, Tables, clear_quarantined
from pipelines.ray_runtime import cluster_cpus, cluster_gpus, quiet_ray_data, start_ray, stop_ray
from pipelines.workers import (
    ROWS_PER_PARTITION,
    SCAN_FRACTION,
    SHUFFLE_INPUT_BYTES,
    plan_partitions,
    plan_rows_per_call,
    plan_rows_per_write,
    plan_workers,
)

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
    keep_text: bool = False  # store the text as embedded in column `text` (a passage's own text with chunking)
    # Passages (docs/chunking.md): each document becomes rows of at most chunk_tokens tokens; None: whole texts.
    chunk_tokens: int | None = None
    chunk_overlap: int = 0  # tokens consecutive passages share
    chunking: str = "split"  # split: each passage encoded alone; late: pooled from the whole document's states
    address: str | None = None
    object_store_memory: int | None = None  # bytes, for the local Ray a run starts (None: Ray's default)
    overwrite: bool = False
    sync_deletes: bool = False
    rescan: bool = False  # ignore the file manifest: read every shard and compare every row's hash
    skip_bad_files: bool = False
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings (None: environment's)
    actors: int | None = None  # encoder actors; default one per GPU, else one per CPU (pipelines/workers.py)
    actor_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per encoder actor
    threads_per_actor: int | None = None
    rows_per_batch: int | None = None  # rows per encoder call; default pipelines/workers.py plan_rows_per_call
    rows_per_write: int | None = None  # rows per upsert commit; default: pipelines/workers.py plan_rows_per_write
    max_tokens_per_batch: int | None = None  # default per device (operators/encoders/base.py)
    precision: Precision = Precision.AUTO  # operators/encoders/precision.py
    # Stored vectors beyond float (operators/stored_vectors.py); a table keeps what it was first written with.
    quantize: list[str] = field(default_factory=list)  # int8, binary: `<col>_int8` / `<col>_bin` per dense column
    recalibrate: bool = False  # new int8 ranges from a sample of the table, every stored row re-quantised
    calibration_rows: int = CALIBRATION_ROWS  # rows the int8 ranges are calibrated from
    colbert_precision: str | None = None  # float16, int8, binary (None: the table's, else float16)
    colbert_pool_factor: float | None = None  # ColBERT token pooling (None: the table's, else 1 = none)
    maintain: bool = True  # compact and remove versions no retained run needs, after publishing
    keep_runs: int = DEFAULT_KEEP_RUNS  # runs whose versions maintain keeps (operators/maintenance.py)
    older_than: str = "0"  # maintain removes only versions older than this (7d, 12h; 0: any age)
    progress: bool = True
    command: list[str] = field(default_factory=list)  # argv, for the run log

    def __post_init__(self) -> None:
        """Every option checked before anything is read or written (a one-line UsageError naming it)."""
        check_table_name(self.table)
        check_positive(self, "max_length", "actors", "threads_per_actor", "rows_per_batch", "rows_per_write",
                       "max_tokens_per_batch", "object_store_memory")
        for name in ("input", "output", "id_column", "text_column", "model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                msg = f"{option_name(name) if name not in ('input', 'output') else name.upper()} is empty"
                raise UsageError(msg)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.dims):
            msg = f"--dims must be positive integers, got {self.dims}"
            raise UsageError(msg)
        check_choices("outputs", self.outputs, OUTPUTS)
        check_choices("precision", self.precision, list(Precision))
        check_keep_columns(self.keep_columns)

    def passages(self) -> Chunking | None:
        """How documents become passages (None: one row per document)."""
        return None if self.chunk_tokens is None else Chunking(self.chunk_tokens, self.chunk_overlap,
                                                               ChunkMode(self.chunking))

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(
            model=self.model,
            dims=list(self.dims),
            outputs=list(self.outputs),
            max_length=self.max_length,
            max_tokens_per_batch=self.max_tokens_per_batch,
            precision=self.precision,
            storage=self.storage or {},
        )


def check_keep_columns(names: list[str]) -> None:
    """Kept input columns may not take the name of a column embedlake writes (id, text_hash, model,
    source_file, dense, dense_<d>, sparse, colbert), nor be named twice."""
    clashes = [name for name in names if is_table_column(name)]
    if clashes:
        msg = (f"--keep-columns {', '.join(map(repr, clashes))}: the table writes its own column of that name "
               f"(id, text_hash, model, source_file and the vector columns are embedlake's); rename the input column")
        raise UsageError(msg)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        msg = f"--keep-columns names {', '.join(map(repr, twice))} more than once"
        raise UsageError(msg)


def run_embed(job: EmbedJob) -> dict:
    """Run the job and return the JSON summary (README: What a run guarantees)."""
    started = time.time()
    job = replace(job, storage=as_settings(job.storage))  # resolved once, here, for every worker
    shards = find_shards(job.input, job.storage)
    required = [job.id_column, job.text_column]
    input_schema = read_schema(shards, skip_bad_files=job.skip_bad_files)
    require_columns(input_schema, [*required, *job.keep_columns], f"input {job.input}")
    spec = resolve_precision(job.encoder_spec())  # int8's kernel chosen here, once: the workers get it named
    description = describe_encoder(spec)
    kind = model_kind(job.model, job.storage)
    if job.outputs and kind != "bge-m3":
        msg = (f"--outputs {','.join(job.outputs)} applies to BGE-M3 models; {job.model} is a Matryoshka (MRL) model, "
               "whose outputs are dense and the --dims nested sizes")
        raise UsageError(msg)
    chunking = check_chunking(job, description.max_length)
    model_id = passage_model_id(description.model_id, chunking)
    lake = Lake(job.output, job.storage)
    lake.check_writable()
    storage = requested_storage(job.quantize, job.colbert_precision, job.colbert_pool_factor, lake.table(job.table),
                                model_id, job.overwrite, job.recalibrate)
    stale_codes = False
    if not job.overwrite:
        storage, stale_codes = plan_existing(lake.table(job.table), storage, description.fields,
                                             model_id, job.calibration_rows)
    meta = TableMeta(
        model=job.model,
        model_id=model_id,
        kind=kind,
        dims=description.dims,
        outputs=[f.name for f in description.fields],
        max_length=description.max_length,
        precision=spec.precision,  # fp32 where int8 has no fast kernel (resolve_precision)
        quantize=list(storage.quantize),
        int8_ranges=ranges_to_json(storage.int8_ranges),
        colbert_precision=storage.colbert_precision,
        colbert_pool_factor=storage.colbert_pool_factor,
        chunking=chunking.as_dict() if chunking else {},
    )
    keep_fields = [input_schema.field(name) for name in job.keep_columns]
    schema = with_meta(embeddings_schema(storage.fields(description.fields), keep_fields, row_fields(job)), meta)
    tables = Tables(main=lake.table(job.table), quarantine=lake.table(quarantine_table_name(job.table)), schema=schema,
                    passages=chunking is not None)
    retention = Retention(job.keep_runs, parse_age(job.older_than))
    manifest = FileManifest(lake, job.table)
    rebuilds = _check_tables(job, tables, manifest, lake.table(f"{job.table}{RUNS_SUFFIX}"))
    state = _input_state(job, shards, required, manifest, model_id, rebuilds)
    base = _prepare_tables(job, tables, manifest)
    if stale_codes and base.action != REBUILT:  # the new codes are part of this run: published with it
        requantize_stored(tables.main, storage)
    config = {k: v for k, v in asdict(job).items() if k != "command"}
    run_log = RunLog.for_table(lake, job.table, job="embed",
                               command=job.command or sys.argv, config=config, model=model_id)
    run_log.start()
    stages = {"prepare": time.time() - started}  # listing, schema, footers, table checks, run log
    try:
        summary = _run(job, shards, state, spec, storage, tables, manifest, model_id,
                       run_log.run_id, started, base, stages)
        # Every row is accounted for and committed and the manifest is current: indexes for this version,
        # then readers switch to it (metadata, vectors and indexes together), then old versions go.
        finishing = time.time()
        summary["refresh"] = refresh(tables.main, compact=job.maintain, retrain=base.model_change)
        summary.update(base.summary())
        summary.update(publish(tables.main, manifest.target, run_log.run_id, base.serving).summary())
        if job.maintain:
            before = bytes_on_disk(lake, job.table)
            summary["maintain"] = {**retain(lake, job.table, retention), "bytes_before": before,
                                   "bytes_after": bytes_on_disk(lake, job.table)}
        summary["finish_seconds"] = stages["finish"] = round(time.time() - finishing, 3)
        summary["stage_seconds"] = {name: round(seconds, 3) for name, seconds in stages.items()}
    except BaseException as error:
        try:
            run_log.finish({}, error=one_line(error, 1000, job.storage))
        except Exception as unrecorded:  # noqa: BLE001 - e.g. a full disk: the run's own error is the one to report
            log.warning("could not record the failed run in %s: %s", run_log.target.name, one_line(unrecorded, 300))
        raise
    summary["run_id"] = run_log.run_id
    run_log.finish(summary)
    return summary


def row_fields(job: EmbedJob) -> list[pa.Field]:
    """A passage table's columns (and the text with --keep-text) between the keys and the vectors."""
    if job.chunk_tokens is not None:
        return passage_fields(job.keep_text)
    return [pa.field(TEXT, pa.string())] if job.keep_text else []


def check_chunking(job: EmbedJob, max_length: int) -> Chunking | None:
    """The passage options, checked before anything is read or written (a one-line error naming the option)."""
    if job.keep_text and TEXT in job.keep_columns:
        msg = "--keep-text stores the embedded text as column 'text', which --keep-columns also names"
        raise UsageError(msg)
    if job.chunk_tokens is None:
        if job.chunk_overlap or job.chunking != ChunkMode.SPLIT:
            msg = "--chunk-overlap and --chunking apply to passages: add --chunk-tokens N"
            raise UsageError(msg)
        return None
    taken = [f.name for f in passage_fields() if f.name in job.keep_columns]
    if taken:
        msg = (f"--keep-columns {', '.join(map(repr, taken))}: a passage table writes its own column of that name "
               "(doc_id, chunk, char_start, char_end); rename the input column")
        raise UsageError(msg)
    if job.chunking not in list(ChunkMode):
        msg = f"--chunking must be one of {', '.join(ChunkMode)}, got {job.chunking!r}"
        raise UsageError(msg)
    room = max_length - 2  # the model's length less its two special tokens ([CLS] [SEP], <s> </s>)
    if isinstance(job.chunk_tokens, bool) or not isinstance(job.chunk_tokens, int) or not 1 <= job.chunk_tokens <= room:
        msg = (f"--chunk-tokens must be an integer between 1 and {room} (the model's length {max_length} less its "
               f"special tokens), got {job.chunk_tokens!r}")
        raise UsageError(msg)
    if isinstance(job.chunk_overlap, bool) or not isinstance(job.chunk_overlap, int) or \
            not 0 <= job.chunk_overlap < job.chunk_tokens:
        msg = f"--chunk-overlap must be an integer from 0 to --chunk-tokens - 1 ({job.chunk_tokens - 1}), got " \
              f"{job.chunk_overlap!r}"
        raise UsageError(msg)
    return job.passages()


def _check_tables(job: EmbedJob, tables: Tables, manifest: FileManifest, runs: TableRef) -> bool:
    """Every clash with tables already in OUTPUT, found before the run writes anything: the table's columns,
    and companion tables (`<T>_quarantine`, `<T>_files`, `<T>_runs`) that are some other table of the same name,
    which no run may replace. Other columns in a table a run has published (a `serving` tag) are a rebuild that
    readers do not see until it is published (docs/lifecycle.md); in a table without one (written by something
    else, or before serving tags) nothing would keep its readers' version, so only --overwrite replaces it."""
    rebuilds = job.overwrite
    if not job.overwrite:
        try:
            check_columns(tables.main, tables.schema, hint="it has no serving version that readers could keep "
                          "while a run rebuilds it: write to another --table or pass --overwrite")
        except ValueError:
            if not _served(tables.main):
                raise
            rebuilds = True  # begin_run rebuilds it from empty: every shard is read again, whatever the manifest says
    not_ours = ("it is not the {} of table {!r} but another table of that name: choose another --table, "
                "or move that table away")
    for target, schema, what in ((tables.quarantine, QUARANTINE_SCHEMA, "quarantine"),
                                 (manifest.target, FILES_SCHEMA, "file manifest"), (runs, RUNS_SCHEMA, "run log")):
        check_columns(target, schema, hint=not_ours.format(what, job.table))
    return rebuilds


def _served(target: TableRef) -> bool:
    return target.exists() and serving_version(target.dataset()) is not None


def _prepare_tables(job: EmbedJob, tables: Tables, manifest: FileManifest) -> RunBase:
    """Create the tables, or replace them with --overwrite: only once the input has passed every check that
    can fail before encoding (listing, schema, every shard's footer and columns, the model), so a bad input
    never leaves a replaced table empty. Readers keep the serving version until this run publishes its own
    (operators/serving.py), and Lance keeps the replaced version (`lance.dataset(..., version=)`)."""
    manifest.ensure()  # begin_run empties it when it rebuilds the table
    base = begin_run(tables.main, manifest.target, tables.schema, ID, overwrite=job.overwrite)
    ensure_table(tables.quarantine, QUARANTINE_SCHEMA, primary_key=SOURCE, overwrite=job.overwrite)
    return base


@dataclass
class InputState:
    """What the driver knows before reading a row: the listing, the manifest and the footers."""

    skipped: dict[str, int]  # shards unchanged since the last successful run for this model -> rows
    vanished: list[str]  # shards the manifest has and the listing does not
    footers: Footers  # of the others, the shards to read
    plan: ReadPlan = field(default_factory=lambda: ReadPlan([], {}, {}))  # their read tasks, once Ray is up

    def skipped_indexes(self, files: list[str]) -> frozenset[int]:
        return frozenset(i for i, path in enumerate(files) if path in self.skipped)


def _input_state(job: EmbedJob, shards: ShardSet, required: list[str], manifest: FileManifest,
                 model_id: str, rebuilds: bool = False) -> InputState:
    """The shards to read and their footers, before the run writes anything or starts Ray: a shard that cannot
    be read or lacks a column fails here (or, with --skip-bad-files, is set aside to be quarantined)."""
    recorded = {} if job.overwrite or rebuilds else manifest.load()
    skipped = {} if job.rescan else unchanged_files(shards.versions, recorded, model_id)
    listed = set(shards.files)
    vanished = sorted(path for path in recorded if path not in listed)
    to_read = [(index, path) for index, path in enumerate(shards.files) if path not in skipped]
    return InputState(skipped, vanished, read_footers(shards, to_read, required, job.skip_bad_files))


def _run(job: EmbedJob, shards: ShardSet, state: InputState, spec: EncoderSpec, storage: VectorStorage,
         tables: Tables, manifest: FileManifest, model_id: str, run_id: str, started: float, base: RunBase,
         stages: dict[str, float] | None = None) -> dict:
    """Read, decide, encode and write; `stages` gets the wall seconds of each step of the run (the summary's
    `stage_seconds`: where a run's time goes besides encoding, benchmarks/overhead.py)."""
    stages = {} if stages is None else stages
    skipped, vanished = state.skipped, state.vanished
    counts = RunCounts()
    shutdown_seconds = 0.0  # stopping the Ray we started: wall time, not embedding time
    if state.footers.files or (job.sync_deletes and vanished):
        if not job.rescan:
            # Before the first commit, so that a killed run can be resumed. A rescan usually writes nothing (and
            # must leave the table's version as it was); unmarked, a killed one restarts from the serving version.
            mark_building(tables.main, base.serving)
        starting = time.time()
        we_started_ray = start_ray(job.address, num_cpus=os.cpu_count(), object_store_memory=job.object_store_memory)
        stages["ray_start"] = time.time() - starting
        try:
            workers = plan_workers(cluster_cpus(), cluster_gpus(), job.actors, job.threads_per_actor,
                                   job.rows_per_batch)
            workers = plan_rows_per_call(state.footers.rows, workers, job.rows_per_batch)
            state.plan = state.footers.plan(workers.rows_per_batch)
            _quarantine_bad_files(state.plan, tables, run_id)
            log.info("embedding %d rows from %d shard(s) (%d unchanged shards of %d rows skipped, %d bad files) "
                     "with %s", state.plan.rows_in, len(state.plan.rows), len(skipped), sum(skipped.values()),
                     len(state.plan.bad_files), model_id)
            counts = _execute(job, shards, state, spec, storage, tables, workers, model_id, run_id, stages)
        finally:
            if we_started_ray:
                stopping = time.time()
                stop_ray()
                shutdown_seconds = stages["ray_shutdown"] = time.time() - stopping
    if counts.rows_read != state.plan.rows_in:
        msg = (f"row accounting failed: {state.plan.rows_in} rows read, {counts.rows_read} written, unchanged or "
               "quarantined; the table holds what was committed, re-run the same command to finish")
        raise RuntimeError(msg)
    retry = {shards.files[index] for index in counts.files_to_retry}
    manifest.record({path: (shards.versions.get(path, ""), rows) for path, rows in state.plan.rows.items()
                     if path not in retry}, model_id, run_id)
    if job.sync_deletes:
        manifest.forget(vanished)
    finished = time.time()
    stages["manifest"] = finished - stages.get("executed_at", finished) - shutdown_seconds
    stages.pop("executed_at", None)
    rows_skipped = sum(skipped.values())
    # First read to last commit (deletes and compaction included), not counting Ray's shutdown.
    encode_seconds = max(finished - shutdown_seconds - (counts.first_read_at or started), 1e-9)
    return {
        "rows_in": state.plan.rows_in + rows_skipped,
        "rows_written": counts.rows_written,
        "rows_inserted": counts.rows_inserted,
        "rows_updated": counts.rows_updated,
        "rows_unchanged": counts.rows_unchanged,
        "rows_quarantined": counts.rows_quarantined,
        "rows_skipped": rows_skipped,
        "rows_deleted": counts.rows_deleted,
        "rows_truncated": counts.rows_truncated,
        **_passage_summary(job, counts, encode_seconds),
        "duplicate_ids": counts.duplicate_ids,
        "files_read": len(state.plan.rows),
        "files_skipped": len(skipped),
        "files_quarantined": len(state.plan.bad_files),
        "seconds": round(finished - started, 3),
        "encode_seconds": round(encode_seconds, 3),
        "docs_per_s": round(counts.rows_written / encode_seconds, 2),
        "tokens_per_s": round(counts.tokens / encode_seconds, 1),
        "tokens": counts.tokens,
        "padding_waste": round(1 - counts.tokens / counts.padded_tokens, 4) if counts.padded_tokens else 0.0,
        "oom_splits": counts.oom_splits,
        "commits": counts.commits,
        "seconds_per_commit": round(counts.commit_seconds / counts.commits, 4) if counts.commits else 0.0,
        "bytes_per_doc": counts.bytes_per_doc(),
        "shards": len(shards.files),
        "encoder_actors": len(counts.workers),
        "encoder_nodes": len({worker.rsplit(":", 1)[0] for worker in counts.workers}),
        "table": job.table,
        "quarantine_table": tables.quarantine.name,
        "uri": job.output,
        "model": model_id,
    }


def _passage_summary(job: EmbedJob, counts: RunCounts, seconds: float) -> dict:
    """A passage table's counts: rows_* count documents, these their passages."""
    if job.chunk_tokens is None:
        return {}
    return {"passages_written": counts.passages_written, "passages_deleted": counts.passages_deleted,
            "passages_per_s": round(counts.passages_written / seconds, 2),
            "chunking": {"mode": job.chunking, "max_tokens": job.chunk_tokens, "overlap": job.chunk_overlap}}


def _quarantine_bad_files(plan: ReadPlan, tables: Tables, run_id: str) -> None:
    """A whole unreadable shard is one quarantine entry (its rows cannot be counted); a shard readable again
    loses its entry."""
    clear_quarantined(tables.quarantine, list(plan.rows))
    if plan.bad_files:
        rows = [{ID: None, SOURCE: path, REASON: f"unreadable shard: {reason}", RUN_ID: run_id}
                for path, reason in plan.bad_files.items()]
        upsert(pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA), tables.quarantine, QUARANTINE_SCHEMA, SOURCE)


def _execute(job: EmbedJob, shards: ShardSet, state: InputState, spec: EncoderSpec, storage: VectorStorage,
             tables: Tables, workers, model_id: str, run_id: str, stages: dict[str, float]) -> RunCounts:
    planning = time.time()
    import ray
    from ray.data import DataContext

    from pipelines.embed_progress import ProgressMonitor
    from pipelines.embed_source import LakeSource, TableKeysSource

    quiet_ray_data()  # Ray Data's own progress off: ours counts rows encoded and committed (embed_progress.py)
    context = DataContext.get_current()
    # One block per hash partition of ids: `decide` must see every row of an id at once.
    context.target_max_block_size = None
    # Shuffle map tasks take this much input at a time (Ray's default, 1 GiB, makes a map task's memory
    # grow with the lake until it reaches 1 GiB).
    context.shuffle_input_batch_bytes = SHUFFLE_INPUT_BYTES
    keep_fields = [tables.schema.field(name) for name in job.keep_columns]
    key_schema = key_row_schema(keep_fields)
    reader = ShardReader(job.id_column, job.text_column, job.keep_columns, job.storage,
                         keep_types={f.name: f.type for f in keep_fields})
    storage = settle_new(tables.main, storage, describe_encoder(spec).fields, spec, reader, list(state.plan.rows),
                         job.calibration_rows, num_gpus=workers.actor_gpus, resources=job.actor_resources)
    files = pa.array(shards.files, pa.string())
    table = tables.main.dataset()
    table_rows = 0 if job.overwrite else table.count_rows()
    keys = TableKeys(tables.main, table.version, model_id, files, key_schema, documents=tables.passages) \
        if table_rows else None
    # Scan the table's keys when this run reads a good part of it; else look up what is read.
    scan = keys is not None and (job.rescan or state.plan.rows_in >= SCAN_FRACTION * table_rows)
    probe_files = [] if scan or not job.sync_deletes else [*state.plan.rows, *state.vanished]
    source = LakeSource(state.plan.pieces, reader, key_schema, keys=None if scan else keys, files_to_probe=probe_files)
    # One block per read task's batch as the reader yields it: Ray Data would split each task's output into ~200 /
    # tasks blocks (34 each for 6 shards) that the gather by id then merges again.
    dataset = ray.data.read_datasource(source, num_cpus=workers.io_cpus,
                                       override_num_blocks=max(1, source.read_task_count()))
    if scan:
        table_keys = TableKeysSource(keys, ROWS_PER_PARTITION)
        dataset = dataset.union(ray.data.read_datasource(table_keys, num_cpus=workers.io_cpus,
                                                         override_num_blocks=max(1, table_keys.read_task_count())))
    decision = Decision(state.skipped_indexes(shards.files), job.sync_deletes)
    chunking = job.passages()
    partitions = plan_partitions(state.plan.rows_in + (table_rows if scan else 0))
    progress = ProgressMonitor(state.plan.rows_in, enabled=job.progress, run=run_id)
    with progress:
        sink = EmbedSink(tables, run_id, files, plan_rows_per_write(state.plan.rows_in, workers, job.rows_per_write),
                         counter=progress.counter)
        executing = time.time()
        stages["plan"] = executing - planning  # calibration, the table's keys, the read plan
        _write(dataset, sink, job, workers, partitions, decision, keep_fields, spec, storage, chunking,
               progress.counter)
    stages["executed_at"] = done = time.time()
    counts = sink.counts
    first_read, last_commit = counts.first_read_at or executing, counts.last_commit_at or done
    # Ray Data's planning and task start-up; reading to the last commit; the end of the writers' stage.
    stages.update(to_first_read=first_read - executing, first_read_to_last_commit=last_commit - first_read,
                  after_last_commit=done - last_commit)
    return counts


def _write(dataset, sink: EmbedSink, job: EmbedJob, workers, partitions: int, decision: Decision,
           keep_fields: list[pa.Field], spec: EncoderSpec, storage: VectorStorage, chunking, counter) -> None:
    """decide per hash partition of ids -> encoder actor pool (rows, or their passages) -> the sink's upserts."""
    from ray.data import ActorPoolStrategy

    from pipelines.embed_progress import ReportingEmbedPassages, ReportingEmbedRows

    # One partition (up to ROWS_PER_PARTITION rows): every row in one block, without the hash shuffle's
    # aggregator actor (a process of its own to start).
    (
        (dataset.repartition(partitions, keys=[ID]) if partitions > 1 else dataset.repartition(1))
        .map_batches(decide, fn_kwargs={"decision": decision, "schema": decided_row_schema(keep_fields)},
                     batch_size=None, batch_format="pyarrow", num_cpus=workers.io_cpus)
        # A partition's rows to embed are one block; cut it so that every encoder actor gets some.
        .repartition(target_num_rows_per_block=workers.rows_per_batch)
        .map_batches(
            ReportingEmbedRows if chunking is None else ReportingEmbedPassages,
            fn_constructor_kwargs={"spec": spec, "keep_fields": keep_fields, "threads": workers.threads,
                                   "storage": storage, "keep_text": job.keep_text, "counter": counter,
                                   **({} if chunking is None else {"chunking": chunking})},
            batch_size=workers.rows_per_batch,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=workers.actors, max_concurrent_calls_per_actor=workers.concurrent_calls,
                                      max_tasks_in_flight_per_actor=workers.tasks_in_flight),
            num_gpus=workers.actor_gpus,
            num_cpus=workers.actor_cpus,
            resources=job.actor_resources or None,
        )
        .write_datasink(sink, ray_remote_args={"num_cpus": workers.io_cpus})
    )
