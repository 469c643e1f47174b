"""The writer stage of the embed job, as a Ray Data Datasink: each write task upserts its embedded
rows into the table, its quarantined rows into the quarantine table, deletes the ids that left the
input, and returns only counts, which the driver sums in `on_write_complete`.

It lives apart from pipelines/embed.py so that the Ray workers running it import Arrow and Lance
only, not torch and the encoders: on a small CPU cluster, idle workers are recycled and each writer
task may start a fresh process, and 3 s of imports there is 3 s taken from the encoders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink

from operators.colbert_codec import scale_column
from operators.exchange import (
    ENCODER_ERROR,
    OOM_SPLITS_COL,
    ORDER_COL,
    PADDED_COL,
    PASSAGES_COL,
    READ_AT_COL,
    REASON_COL,
    ROWS_COL,
    STATUS_COL,
    TOKENS_COL,
    TRUNCATED_COL,
    WORKER_COL,
    Status,
    file_of,
    kept_name,
    row_of,
)
from operators.incremental import DUPLICATE
from operators.quantize import split_quantized_name
from operators.schema import (
    CHUNK,
    COLBERT,
    DOC_ID,
    ID,
    QUARANTINE_SCHEMA,
    REASON,
    RUN_ID,
    SOURCE,
    SOURCE_FILE,
    SPARSE,
    is_dense_column,
)
from operators.sinks.lance_sink import delete_keys, upsert
from operators.tables import TableRef

log = logging.getLogger(__name__)
VECTOR_OUTPUTS = (SPARSE, COLBERT, scale_column(COLBERT))


def is_vector_column(name: str) -> bool:
    """Vector columns, for the bytes-per-document report: dense ones and their quantised copies, sparse,
    ColBERT and its int8 scales."""
    return name in VECTOR_OUTPUTS or is_dense_column(split_quantized_name(name)[0])


@dataclass
class Tables:
    """The two tables a run's writers fill (the table and its quarantine) and the schema of the main one."""

    main: TableRef
    quarantine: TableRef
    schema: pa.Schema
    passages: bool = False  # a passage table (embed --chunk-tokens): rows are passages of documents


@dataclass
class RunCounts:
    """What write tasks report; summed field by field (ints add, the first read takes the earliest and the last
    commit the latest time, sets and
    per-column sizes merge), so a new count is one field here and nowhere else."""

    rows_written: int = 0  # documents (in a passage table, each with all its passages)
    passages_written: int = 0
    passages_deleted: int = 0  # passages of deleted documents and a shorter document's surplus ones
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_quarantined: int = 0
    rows_deleted: int = 0
    duplicate_ids: int = 0  # quarantined rows that repeat an id
    rows_truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    commits: int = 0
    commit_seconds: float = 0.0
    first_read_at: float | None = None
    last_commit_at: float | None = None  # when the last write task finished its commits
    workers: set[str] = field(default_factory=set)
    # Shards with rows an encoder error quarantined: left out of the manifest, so the next run tries them again.
    files_to_retry: set[int] = field(default_factory=set)
    column_bytes: dict[str, int] = field(default_factory=dict)

    def add(self, other: RunCounts) -> RunCounts:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, set):
                mine |= theirs
            elif isinstance(mine, dict):
                for name, size in theirs.items():
                    mine[name] = mine.get(name, 0) + size
            elif f.name in ("first_read_at", "last_commit_at"):
                known = [t for t in (mine, theirs) if t is not None]
                setattr(self, f.name, (min if f.name == "first_read_at" else max)(known) if known else None)
            else:
                setattr(self, f.name, mine + theirs)
        return self

    @property
    def rows_read(self) -> int:
        return self.rows_written + self.rows_unchanged + self.rows_quarantined

    def bytes_per_doc(self) -> dict[str, float]:
        """Average stored bytes per embedded row of each vector column (ColBERT dominates storage)."""
        return {name: round(size / self.rows_written, 1) for name, size in self.column_bytes.items()} if \
            self.rows_written else {}


def write_batch(batch: pa.Table, tables: Tables, run_id: str, files: pa.Array) -> RunCounts:
    """Commit one batch of encoded rows (exchange.encoded_row_schema): upsert the embedded rows,
    upsert the quarantined ones, delete the DELETED ids; `files` is the run's listing, which turns a
    row's `_order` back into its shard and row."""
    status = batch.column(STATUS_COL)
    embedded = batch.filter(pc.equal(status, Status.EMBEDDED.value))
    bad = batch.filter(pc.equal(status, Status.QUARANTINED.value))
    gone = batch.filter(pc.equal(status, Status.DELETED.value)).column(ID).to_pylist()
    started = time.perf_counter()
    # Before the upsert: killed between the two, a document's first passage still holds its old hash, so the
    # next run embeds it again and deletes again (after, the new hash would make it unchanged, surplus kept).
    surplus = delete_surplus_passages(tables.main, embedded) if tables.passages else 0
    written = upsert(table_rows(embedded, tables.schema, files), tables.main, tables.schema, ID)
    sources = source_of(bad, files)
    upsert(pa.table({ID: bad.column(ID), SOURCE: sources, REASON: bad.column(REASON_COL),
                     RUN_ID: pa.array([run_id] * bad.num_rows, pa.string())}, schema=QUARANTINE_SCHEMA),
           tables.quarantine, QUARANTINE_SCHEMA, SOURCE)
    clear_quarantined(tables.quarantine, source_of(embedded, files))
    deleted = delete_keys(tables.main, DOC_ID if tables.passages else ID, gone) if gone else 0
    seconds = time.perf_counter() - started
    vector_columns = [name for name in tables.schema.names if is_vector_column(name)]
    unchanged = pc.filter(batch.column(ROWS_COL), pc.equal(status, Status.UNCHANGED.value))
    documents = int(pc.sum(embedded.column(ROWS_COL)).as_py() or 0) if tables.passages else embedded.num_rows
    return RunCounts(
        rows_written=documents,
        passages_written=embedded.num_rows if tables.passages else 0,
        passages_deleted=surplus + (deleted if tables.passages else 0),
        rows_inserted=written.inserted,
        rows_updated=written.updated,
        rows_unchanged=int(pc.sum(unchanged).as_py() or 0),
        rows_quarantined=bad.num_rows,
        rows_deleted=len(gone) if tables.passages else deleted,
        duplicate_ids=int(pc.sum(pc.equal(bad.column(REASON_COL), DUPLICATE)).as_py() or 0),
        rows_truncated=int(pc.sum(batch.column(TRUNCATED_COL).cast(pa.int64())).as_py() or 0),
        tokens=int(pc.sum(batch.column(TOKENS_COL)).as_py() or 0),
        padded_tokens=int(pc.sum(batch.column(PADDED_COL)).as_py() or 0),
        oom_splits=int(pc.sum(batch.column(OOM_SPLITS_COL)).as_py() or 0),
        commits=1 if embedded.num_rows else 0,
        commit_seconds=seconds if embedded.num_rows else 0.0,
        first_read_at=pc.min(batch.column(READ_AT_COL)).as_py(),
        last_commit_at=time.time(),
        workers=set(pc.drop_null(pc.unique(batch.column(WORKER_COL))).to_pylist()),
        files_to_retry=set(pc.unique(file_of(pc.filter(bad.column(ORDER_COL), pc.starts_with(
            bad.column(REASON_COL), ENCODER_ERROR)))).to_pylist()),
        column_bytes={name: embedded.column(name).nbytes for name in vector_columns},
    )


def delete_surplus_passages(target: TableRef, embedded: pa.Table) -> int:
    """Delete the passages beyond each embedded document's new count (a document that got shorter), in one
    delete per batch: `chunk >= n AND doc_id IN (...)` for each count n. Returns how many."""
    first = embedded.filter(pc.equal(embedded.column(CHUNK), 0))
    if first.num_rows == 0:
        return 0
    by_count: dict[int, list[str]] = {}
    for doc, count in zip(first.column(DOC_ID).to_pylist(), first.column(PASSAGES_COL).to_pylist(), strict=True):
        by_count.setdefault(int(count), []).append(doc)
    clauses = []
    for count, docs in sorted(by_count.items()):
        quoted = ", ".join("'" + doc.replace("'", "''") + "'" for doc in docs)
        clauses.append(f"({CHUNK} >= {count} AND {DOC_ID} IN ({quoted}))")
    predicate = " OR ".join(clauses)
    dataset = target.dataset()
    surplus = dataset.count_rows(filter=predicate)
    if surplus:
        dataset.delete(predicate)
    return surplus


def source_of(rows: pa.Table, files: pa.Array) -> pa.Array:
    """Each row's `file#row`, the quarantine table's key."""
    order = rows.column(ORDER_COL)
    return pc.binary_join_element_wise(files.take(file_of(order)), pc.cast(row_of(order), pa.string()), "#")


def clear_quarantined(quarantine: TableRef, sources: list[str] | pa.Array) -> int:
    """Drop quarantine entries of rows (or whole shards) that a run has now embedded: a row fixed at its source
    must not stay quarantined for a reason it no longer has. A no-op on an empty quarantine (the usual case)."""
    sources = pa.array(sources.to_pylist() if isinstance(sources, pa.Array | pa.ChunkedArray) else list(sources),
                       pa.string())
    dataset = quarantine.dataset()
    if len(sources) == 0 or dataset.count_rows() == 0:
        return 0
    held = dataset.to_table(columns=[SOURCE]).column(SOURCE)
    stale = pc.filter(held, pc.is_in(held, value_set=sources)).to_pylist()
    return delete_keys(quarantine, SOURCE, stale) if stale else 0


def table_rows(embedded: pa.Table, schema: pa.Schema, files: pa.Array) -> pa.Table:
    """The table's columns of encoded rows: kept input columns under their own names again, and the shard
    each row was read from."""
    columns = {}
    for name in schema.names:
        if name == SOURCE_FILE:
            columns[name] = files.take(file_of(embedded.column(ORDER_COL)))
        elif kept_name(name) in embedded.column_names:
            columns[name] = embedded.column(kept_name(name))
        else:
            columns[name] = embedded.column(name)
    return pa.table(columns)


class EmbedSink(Datasink[RunCounts]):
    """Writes the embed job's encoded rows; `counts` holds the sum of every write task's counts."""

    def __init__(self, tables: Tables, run_id: str, files: pa.Array, rows_per_write: int, counter=None) -> None:
        self.tables = tables
        self.run_id = run_id
        self.files = files
        self.rows_per_write = rows_per_write
        self.counter = counter  # the run's progress counter (pipelines/embed_progress.py), if any
        self.counts = RunCounts()

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_write

    def write(self, blocks: Iterable[pa.Table], ctx) -> RunCounts:
        blocks = [block for block in blocks if block.num_rows]
        if not blocks:
            return RunCounts()
        counts = write_batch(pa.concat_tables(blocks), self.tables, self.run_id, self.files)
        if self.counter is not None:
            self.counter.add(committed=counts.rows_read)
        return counts

    def on_write_complete(self, write_result) -> None:
        total = RunCounts()
        for counts in write_result.write_returns:
            total.add(counts)
        self.counts = total

    def on_write_failed(self, error: Exception) -> None:
        # Every commit so far is a complete, keyed upsert: the table holds them, and the same command
        # again re-encodes only what was not committed. The run log records the failure.
        log.warning("embed writers stopped: %s", " ".join(str(error).split())[:300])
