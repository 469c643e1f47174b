"""`train --mine-negatives TABLE`: hard negatives for the training pairs from an embedlake table, as Ray Data work.

1. The driver opens the table's serving snapshot (the last version a finished embed run published; never a
   run in progress) and checks, before Ray starts: the table exists, has rows, its metadata names the model
   that wrote it (anchors are encoded by that model, whatever --base is: its vectors are the index), it
   has the `dense` column and a text column for the negatives' texts (`embed --keep-text`'s `text`).
   Every worker then reads that very version, even if a new run publishes meanwhile.
2. Ray Data: one read task per shard emits the training split's (anchor, positive) pairs; a hash shuffle
   on the anchor puts every row of an anchor in one block, where the rows are grouped (an anchor with
   several positives is mined once, none of them can become its negative); a pool of actors (plan_workers,
   as embed's encoders: one per GPU, or one single-threaded per core) encodes batches of anchors, searches
   the table (operators/training/mining.py) and writes the triplets as Parquet files under
   MODEL_OUT/checkpoints/mined/. Only counts come back to the driver.
3. `mined.json` marks the set complete; a re-run of a killed command reuses it (the resumed training then
   reads the same triplets) and a half-written set is mined again. The files go with `checkpoints/` when
   the run finishes; the report keeps the counts.

Training reads the triplets as it reads a --negative-column input (anchor, positive, negative); the
held-out pairs stay those of the input, un-mined.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from operators.encoders.base import EncoderSpec
from operators.errors import UsageError
from operators.model_store import join, read_json, remove_tree, write_bytes, write_json
from operators.schema import DENSE, require_columns, vector_dim
from operators.sources import ShardSet, find_shards
from operators.storage import redacted_errors
from operators.tables import Pin
from operators.training.mining import (
    EXACT_MATRIX_BYTES,
    MiningCounts,
    MiningSettings,
    NegativeMiner,
    counts_table,
    group_by_anchor,
    total_counts,
)
from operators.training.pairs import ANCHOR, NEGATIVE, POSITIVE, TRAIN, PairColumns, PairReader

log = logging.getLogger(__name__)

MINED_DIR = "mined"
DONE_FILE = "mined.json"
DEFAULT_TABLE = "docs"
LANCE_SUFFIX = ".lance"
ANCHORS_PER_CALL = 256  # grouped anchors an actor encodes and searches at once


@dataclass(frozen=True)
class MiningTable:
    """The table mined, as the driver checked it: plain data for the workers."""

    uri: str
    name: str
    version: int
    rows: int
    text_column: str
    passages: bool
    model: str  # the table's --model (its metadata's)
    spec: EncoderSpec = field(repr=False)  # encodes anchors (query prompt) and positives: dense only
    method: str = "exact"
    storage: dict = field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        return {"table": self.name, "uri": self.uri, "table_version": self.version, "table_rows": self.rows,
                "text_column": self.text_column, "model": self.model, "search": self.method}


def table_location(location: str, table: str | None) -> tuple[str, str]:
    """(database URI, table name) for `--mine-negatives`: a LanceDB database (OUTPUT, the table from
    --mine-table, default `docs`) or a table's own folder (`OUTPUT/NAME.lance`)."""
    trimmed = location.rstrip("/")
    if trimmed.endswith(LANCE_SUFFIX) and "/" in trimmed:
        parent, folder = trimmed.rsplit("/", 1)
        name = folder[: -len(LANCE_SUFFIX)]
        if table is not None and table != name:
            msg = f"--mine-negatives {location} is table {name!r}, but --mine-table says {table!r}; give one"
            raise UsageError(msg)
        return parent or "/", name
    return location, table or DEFAULT_TABLE


def open_mining_table(location: str, table: str | None, text_column: str, storage: dict) -> MiningTable:
    """The table's serving snapshot, checked for everything mining needs (one-line ValueErrors)."""
    from operators.search.documents import is_passage_table
    from operators.search.queries import QUERY_PROMPT
    from operators.search.store import TableStore

    uri, name = table_location(location, table)
    with redacted_errors(storage):
        store = TableStore(uri, name, storage)
        where = f"table {name!r} in {uri} (--mine-negatives)"
        meta = store.meta
        if meta is None:
            msg = (f"{where} carries no embedlake metadata, so the model that wrote its vectors is unknown; mining "
                   "encodes anchors with the table's own model: mine a table written by `embedlake embed`")
            raise ValueError(msg)
        if DENSE not in store.schema.names:
            msg = (f"{where} has no dense column {DENSE!r} to search for negatives (vector columns: "
                   f"{', '.join(store.vector_columns()) or 'none'}); embed it with a dense output")
            raise ValueError(msg)
        dim = vector_dim(store.schema, DENSE, where)
        require_columns(store.schema, [text_column], where,
                        why="the negatives' texts: `embed --keep-text` stores them as 'text', or name a kept "
                            "text column with --mine-text-column")
        kind = store.schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            msg = f"{where}: column {text_column!r} is {kind}, the negatives need text (string)"
            raise ValueError(msg)
        if store.rows == 0:
            msg = f"{where} has no rows at version {store.version}"
            raise ValueError(msg)
        index = store.vector_index(DENSE)
        if index is None and store.rows * dim * 4 > EXACT_MATRIX_BYTES:
            log.warning("table %s has no ANN index on %s: each batch of %d anchors scans its %d rows exactly; "
                        "`embedlake index %s --table %s` builds one", name, DENSE, ANCHORS_PER_CALL, store.rows, uri,
                        name)
        outputs = [DENSE] if meta.kind == "bge-m3" else []
        spec = meta.encoder_spec(prompt_name=QUERY_PROMPT, dims=[], outputs=outputs, storage=dict(storage))
        return MiningTable(uri=uri, name=name, version=store.version, rows=store.rows, text_column=text_column,
                           passages=is_passage_table(store.schema.names), model=meta.model, spec=spec,
                           method="exact" if index is None else f"ann ({index[0]})", storage=dict(storage))


def same_model(table: MiningTable, base_folder: str) -> bool:
    """Whether the table's model is the base model (the same folder); the table's is used either way."""
    from operators.encoders.loader import resolve_model_path

    same = os.path.realpath(resolve_model_path(table.model, table.storage)) == os.path.realpath(base_folder)
    if not same:
        log.info("mining negatives with table %s's model %s (its vectors are the index), not --base %s",
                 table.name, table.model, base_folder)
    return same


def mined_uri(model_out: str, checkpoints: str) -> str:
    return join(model_out, checkpoints, MINED_DIR)


def mine_negatives(table: MiningTable, settings: MiningSettings, shards: ShardSet, reader: PairReader,
                   train_pairs: int, out_uri: str, storage: dict) -> tuple[ShardSet, dict]:
    """Mine (or reuse, after a kill) the triplets of the input's training pairs under `out_uri`; returns
    them as shards and the mining summary. Runs on the Ray the caller started or joined."""
    done = read_json(join(out_uri, DONE_FILE), storage)
    if done is not None:
        log.info("reusing the negatives mined from table %s version %s (%s)", done.get("table"),
                 done.get("table_version"), out_uri)
        return find_shards(out_uri, storage), {**done, "reused": True}
    remove_tree(out_uri, storage)  # a set a killed run left half-written
    started = time.perf_counter()
    counts = _mine(table, settings, shards, reader, train_pairs, out_uri, storage)
    summary = {**table.describe(), **asdict(settings), "candidates": settings.candidates, **counts.summary(),
               "seconds": round(time.perf_counter() - started, 1)}
    if counts.triplets == 0:
        msg = (f"mining table {table.name!r} found no negative for any of the {counts.anchors} training anchors "
               f"({counts.margin_dropped} candidates dropped by --mine-margin {settings.margin}); lower "
               "--mine-skip or --mine-margin, raise --mine-depth, or mine a larger table")
        raise ValueError(msg)
    write_json(join(out_uri, DONE_FILE), summary, storage)
    return find_shards(out_uri, storage), summary


def mined_reader(storage: dict) -> PairReader:
    """How training reads the mined triplets: all of them are training pairs."""
    return PairReader(PairColumns(ANCHOR, POSITIVE, NEGATIVE), 0.0, storage)


def _mine(table: MiningTable, settings: MiningSettings, shards: ShardSet, reader: PairReader, train_pairs: int,
          out_uri: str, storage: dict) -> MiningCounts:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipelines.ray_runtime import cluster_cpus, cluster_gpus, quiet_ray_data
    from pipelines.workers import plan_partitions, plan_workers

    quiet_ray_data()
    plan = plan_workers(cluster_cpus(), cluster_gpus())
    actors = max(1, min(plan.actors, -(-train_pairs // ANCHORS_PER_CALL)))  # no actor loads a model for nothing
    context = DataContext.get_current()
    previous = context.target_max_block_size
    context.target_max_block_size = None  # a hash partition stays one block: every row of an anchor together
    try:
        pairs = ray.data.from_items([{"path": path} for path in shards.files],
                                    override_num_blocks=len(shards.files)).map_batches(
            _read_train_pairs, fn_kwargs={"reader": reader}, batch_size=1, batch_format="pyarrow",
            num_cpus=plan.io_cpus)
        mined = (
            pairs.repartition(plan_partitions(train_pairs), keys=[ANCHOR])
            .map_batches(group_by_anchor, batch_size=None, batch_format="pyarrow", num_cpus=plan.io_cpus)
            .repartition(target_num_rows_per_block=ANCHORS_PER_CALL)
            .map_batches(_MineActor, fn_constructor_kwargs={"table": table, "settings": settings,
                                                            "out_uri": out_uri, "storage": storage},
                         batch_size=ANCHORS_PER_CALL, batch_format="pyarrow",
                         compute=ActorPoolStrategy(size=actors), num_cpus=plan.actor_cpus,
                         num_gpus=plan.actor_gpus)
        )
        total = MiningCounts()
        for batch in mined.iter_batches(batch_format="pyarrow", batch_size=None):
            total = total.add(total_counts(batch))
        return total
    finally:
        context.target_max_block_size = previous


def _read_train_pairs(paths: pa.Table, reader: PairReader):
    """Ray Data: the training split's (anchor, positive) pairs of one shard, a batch at a time."""
    for path in paths.column("path").to_pylist():
        for table in reader.split_batches(path, TRAIN):
            yield table.select([ANCHOR, POSITIVE])


class _MineActor:
    """Ray actor: the table at the checked version and its model; writes each batch's triplets as one
    Parquet file named by the batch's anchors (a retried batch rewrites the same file) and returns counts."""

    def __init__(self, table: MiningTable, settings: MiningSettings, out_uri: str, storage: dict) -> None:
        from operators.encoders.loader import load_encoder
        from operators.search.store import TableStore

        store = TableStore(table.uri, table.name, table.storage, pin=Pin(version=table.version))
        self.miner = NegativeMiner(store, load_encoder(table.spec), settings, table.text_column)
        self.out_uri = out_uri
        self.storage = storage

    def __call__(self, groups: pa.Table) -> pa.Table:
        mined, counts = self.miner(groups)
        if mined.num_rows:
            digest = hashlib.blake2b(digest_size=12)
            for anchor in groups.column(ANCHOR).to_pylist():
                digest.update(anchor.encode("utf-8", "surrogatepass") + b"\0")
            buffer = io.BytesIO()
            pq.write_table(mined, buffer)
            write_bytes(join(self.out_uri, f"part-{digest.hexdigest()}.parquet"), buffer.getvalue(), self.storage)
        return counts_table(counts)
