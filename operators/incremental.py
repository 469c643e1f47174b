"""The incremental decision for one hash partition of ids: which input rows to embed, which are
unchanged, which are duplicates, and which table rows left the input.

The embed job shuffles the rows read this run together with the table's keys (operators/exchange.py
`key_row_schema`), hash-partitioned on id, so every row of one id, from the input and from the table,
lands in the same partition; `decide` then works on one partition at a time, in Arrow, without Ray.
Nothing that grows with the corpus is held in one process: a partition is a slice of it.

Rules:
- Duplicate ids: among the input rows of an id, the first in input order (shard listing order, then
  row) is embedded and the others are quarantined as `duplicate id`. An id whose table row comes from
  a shard this run skipped (unchanged since the last run, so still holding that row) is a duplicate
  in every shard read this run: the row already embedded keeps its place, as in a full run where that
  shard came first.
- Unchanged: the table holds the id with the same text hash, written by this run's model, from the
  same shard.
- Deleted (`sync_deletes`): a table row whose id no input row has, unless its shard was skipped
  (a skipped shard still holds it). Rows of shards that left the listing are included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.exchange import (
    CURRENT_COL,
    FILE_COL,
    ORDER_COL,
    READ_AT_COL,
    REASON_COL,
    ROWS_COL,
    SIDE_COL,
    STATUS_COL,
    TABLE,
    TEXT_COL,
    Status,
    conform,
)
from operators.schema import CHUNK, DOC_ID, ID, MODEL, SOURCE_FILE, TEXT_HASH

DUPLICATE = "duplicate id"
STORED_HASH, STORED_FILE, STORED_CURRENT = "_stored_hash", "_stored_file", "_stored_current"


@dataclass(frozen=True)
class Decision:
    """What `decide` needs besides the rows: which listed shards were skipped, and whether to delete."""

    skipped_files: frozenset[int] = field(default_factory=frozenset)  # listing indexes not read this run
    sync_deletes: bool = False


def decide(rows: pa.Table, decision: Decision, schema: pa.Schema) -> pa.Table:
    """One partition's key rows in, `schema` (exchange.decided_row_schema) rows out: input rows to
    embed, quarantined input rows, DELETED table rows, and one UNCHANGED row standing for all the
    partition's unchanged rows (its `_rows` is their number), so unchanged rows cost no traffic."""
    side = rows.column(SIDE_COL)
    table_rows = _unique_ids(rows.filter(pc.equal(side, TABLE)))
    inputs = rows.filter(pc.not_equal(side, TABLE))
    n = inputs.num_rows
    stored = _lookup(inputs.column(ID), table_rows)
    reasons = inputs.column(REASON_COL)
    ids_ok = pc.fill_null(pc.greater(pc.utf8_length(inputs.column(ID)), 0), False)
    repeat = _repeats(inputs.column(ID), inputs.column(ORDER_COL), ids_ok)
    skipped = pa.array(sorted(decision.skipped_files), pa.int32())
    held_by_skipped = pc.fill_null(pc.is_in(stored[STORED_FILE], value_set=skipped), False)
    duplicate = pc.and_(ids_ok, pc.or_(repeat, held_by_skipped))
    reasons = pc.if_else(duplicate, pa.scalar(DUPLICATE), reasons)
    good = pc.is_null(reasons)
    same = pc.and_(pc.and_(pc.fill_null(pc.equal(stored[STORED_HASH], inputs.column(TEXT_HASH)), False),
                           pc.fill_null(stored[STORED_CURRENT], False)),
                   pc.fill_null(pc.equal(stored[STORED_FILE], inputs.column(FILE_COL)), False))
    unchanged = pc.and_(good, same)
    status = pc.if_else(pc.invert(good), pa.scalar(Status.QUARANTINED.value),
                        pc.if_else(unchanged, pa.scalar(Status.UNCHANGED.value), pa.scalar(Status.EMBEDDED.value)))
    columns = {name: inputs.column(name) for name in schema.names if name in inputs.column_names}
    columns[REASON_COL] = reasons
    columns[STATUS_COL] = status
    columns[ROWS_COL] = pa.array(np.ones(n, dtype=np.int64))
    # Quarantined rows need no text any more; unchanged ones leave as one count.
    columns[TEXT_COL] = pc.if_else(pc.equal(status, Status.EMBEDDED.value), inputs.column(TEXT_COL), None)
    decided = conform(columns, schema, n).filter(pc.invert(unchanged))
    parts = [decided]
    kept = int(pc.sum(unchanged).as_py() or 0)
    if kept:
        first_read = pc.min(pc.filter(inputs.column(READ_AT_COL), unchanged))
        parts.append(conform({STATUS_COL: pa.array([Status.UNCHANGED.value]), ROWS_COL: pa.array([kept]),
                              READ_AT_COL: pa.array([first_read.as_py()], pa.float64())}, schema, 1))
    if decision.sync_deletes and table_rows.num_rows:
        parts.append(_deleted(table_rows, inputs.column(ID), decision, schema))
    return pa.concat_tables(parts)


def _unique_ids(table_rows: pa.Table) -> pa.Table:
    """Table-key rows, one per id (the same stored row can reach a partition twice: found by id and by
    shard)."""
    if table_rows.num_rows == 0:
        return table_rows
    order = pc.sort_indices(table_rows, [(ID, "ascending")])
    ordered = table_rows.take(order)
    ids = ordered.column(ID).combine_chunks()
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return ordered.filter(pa.array(first))


def _lookup(ids: pa.ChunkedArray, table_rows: pa.Table) -> dict[str, pa.Array]:
    """The stored hash, shard and model flag of each input id (null where the table lacks it)."""
    position = pc.index_in(ids, value_set=table_rows.column(ID).combine_chunks())
    found = {STORED_HASH: TEXT_HASH, STORED_FILE: FILE_COL, STORED_CURRENT: CURRENT_COL}
    return {name: table_rows.column(column).combine_chunks().take(position) for name, column in found.items()}


def _repeats(ids: pa.ChunkedArray, order: pa.ChunkedArray, ids_ok: pa.Array) -> pa.Array:
    """True for every input row whose id an earlier row (in input order) of this partition also has."""
    n = len(ids)
    if n < 2:
        return pa.array(np.zeros(n, dtype=bool))
    table = pa.table({"id": ids, "order": order, "row": pa.array(np.arange(n))})
    sorted_rows = table.take(pc.sort_indices(table, [("id", "ascending"), ("order", "ascending")]))
    sorted_ids = sorted_rows.column("id").combine_chunks()
    repeat_sorted = np.zeros(n, dtype=bool)
    repeat_sorted[1:] = pc.fill_null(pc.equal(sorted_ids[1:], sorted_ids[:-1]), False).to_numpy(
        zero_copy_only=False)
    repeat = np.zeros(n, dtype=bool)
    repeat[sorted_rows.column("row").to_numpy()] = repeat_sorted
    return pc.and_(pa.array(repeat), ids_ok)


def _deleted(table_rows: pa.Table, input_ids: pa.ChunkedArray, decision: Decision, schema: pa.Schema) -> pa.Table:
    """Table rows whose id left the input, except rows of shards skipped this run."""
    files = table_rows.column(FILE_COL)
    skipped = pa.array(sorted(decision.skipped_files), pa.int32())
    # A row of unknown shard (written before tables kept it) may sit in a skipped shard: kept then.
    unknown_kept = pc.is_null(files) if decision.skipped_files else pa.array(np.zeros(len(files), dtype=bool))
    in_skipped = pc.or_(pc.fill_null(pc.is_in(files, value_set=skipped), False), unknown_kept)
    gone = pc.and_(pc.invert(pc.is_in(table_rows.column(ID), value_set=input_ids.combine_chunks())),
                   pc.invert(in_skipped))
    ids = pc.filter(table_rows.column(ID), gone)
    return conform({ID: ids, STATUS_COL: pa.array([Status.DELETED.value] * len(ids), pa.string()),
                    ROWS_COL: pa.array(np.zeros(len(ids), dtype=np.int64))}, schema, len(ids))


@dataclass
class TableKeys:
    """Key rows (exchange.key_row_schema, side TABLE) of a Lance table at one version: by the ids a
    reader just read, by source shard, or by fragment. Shard paths become indexes into this run's
    listing (-1: not listed any more; null: a row written before tables kept their shard). In a passage
    table the keys are documents: `doc_id` of each document's first passage."""

    target: object  # operators.tables.TableRef
    version: int
    model_id: str
    files: pa.Array  # this run's listing, in order
    schema: pa.Schema  # key_row_schema
    # Passage tables: the decision is per document, so a document's key row is its first passage's, with the
    # document's id (its passages all carry the document's text hash and model).
    documents: bool = False

    @property
    def key(self) -> str:
        return DOC_ID if self.documents else ID

    @property
    def columns(self) -> list[str]:
        return [self.key, TEXT_HASH, MODEL, SOURCE_FILE]

    def _filter(self, condition: str | None) -> str | None:
        first = f"{CHUNK} = 0" if self.documents else None
        return " AND ".join(f"({part})" for part in (condition, first) if part) or None

    def dataset(self):
        return self.target.dataset(self.version)

    def by_ids(self, ids: pa.Array) -> pa.Table:
        present = pc.unique(pc.drop_null(ids)).to_pylist()
        if not present:
            return self.schema.empty_table()
        quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in present)
        return self.key_rows(self.dataset().to_table(columns=self.columns,
                                                     filter=self._filter(f"{self.key} IN ({quoted})")))

    def by_file(self, path: str) -> pa.Table:
        quoted = path.replace("'", "''")
        return self.key_rows(self.dataset().to_table(columns=self.columns,
                                                     filter=self._filter(f"{SOURCE_FILE} = '{quoted}'")))

    def by_fragments(self, fragment_ids: list[int]):
        dataset = self.dataset()
        for fragment_id in fragment_ids:
            for batch in dataset.get_fragment(fragment_id).to_batches(columns=self.columns, batch_size=65536,
                                                                      filter=self._filter(None)):
                yield self.key_rows(pa.Table.from_batches([batch]))

    def key_rows(self, stored: pa.Table) -> pa.Table:
        n = stored.num_rows
        if self.documents:
            stored = stored.rename_columns([ID if name == DOC_ID else name for name in stored.column_names])
        paths = stored.column(SOURCE_FILE)
        index = pc.index_in(paths, value_set=self.files)
        files = pc.if_else(pc.is_null(paths), pa.scalar(None, pa.int32()),
                           pc.fill_null(index, -1).cast(pa.int32()))
        return conform({
            ID: stored.column(ID),
            TEXT_HASH: stored.column(TEXT_HASH),
            FILE_COL: files,
            SIDE_COL: pa.array(np.full(n, TABLE, dtype=np.int8)),
            CURRENT_COL: pc.fill_null(pc.equal(stored.column(MODEL), self.model_id), False),
        }, self.schema, n)
