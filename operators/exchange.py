"""The rows the embed job's stages hand each other, declared once as Arrow schemas.

    shard reader ─┐                                  ┌─> encoder actor ──> writer
                  ├─ KEY_ROW, hash-partitioned on id ┤    (ENCODED_ROW)     (RunCounts)
    table keys ───┘     └─> decide (DECIDED_ROW) ────┘

Reader rows and table-key rows share one schema (`key_row_schema`), so the two can be shuffled
together by id; `decide` adds a status and how many input rows each output row stands for; the
encoder actor adds the table columns and what it measured. Every stage builds its output with
`conform`, so a column missing or misspelt fails at the stage that dropped it, not two stages later.
Kept input columns (--keep-columns) travel as `kept:<name>`: a user's column may be called `_text` or
`_order` without taking the place of the stages' own columns; the writer gives them back their names.

Kept apart from operators/embed.py (which loads torch and the encoders) so that reader and writer
tasks import only Arrow and Lance.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

from operators.schema import ID, MODEL, TEXT_HASH

TEXT_COL = "_text"  # the text as read (reader rows only)
ORDER_COL = "_order"  # file index << ROW_BITS | row in file: input order, and the row's provenance
FILE_COL = "_file"  # index of the row's shard in this run's listing; table rows: -1 if not listed
SIDE_COL = "_side"  # INPUT or TABLE
CURRENT_COL = "_current"  # table rows: written by this run's model
READ_AT_COL = "_read_at"  # when the reader produced the row (the run's clock starts at the first)
REASON_COL = "_reason"  # why a row cannot be embedded (None: it can)
STATUS_COL = "_status"
ROWS_COL = "_rows"  # input rows an output row stands for (an UNCHANGED row counts a whole partition's)
TOKENS_COL = "_tokens"
TRUNCATED_COL = "_truncated"
PADDED_COL = "_padded_tokens"  # a batch's padded tokens, carried on its first row
OOM_SPLITS_COL = "_oom_splits"  # a batch's splits after running out of device memory, on its first row
WORKER_COL = "_worker"
PASSAGES_COL = "_passages"  # passage tables: how many passages the row's document has now

KEPT_PREFIX = "kept:"  # kept input columns between the stages (no stage's own column starts with it)
ENCODER_ERROR = "encoder error"  # prefix of the quarantine reason of rows an encoder error was narrowed to
ROW_BITS = 40  # rows per file < 2**40, files < 2**23
INPUT, TABLE = 0, 1


class Status(StrEnum):
    EMBEDDED = "embedded"  # to encode (before the encoder), encoded (after)
    UNCHANGED = "unchanged"
    QUARANTINED = "quarantined"
    DELETED = "deleted"  # a table row whose id left the input (--sync-deletes)


def kept_name(name: str) -> str:
    """What kept input column `name` is called between the stages."""
    return f"{KEPT_PREFIX}{name}"


def carried(keep_fields: list[pa.Field]) -> list[pa.Field]:
    """Kept input columns as the stages carry them (renamed with `kept_name`)."""
    return [field.with_name(kept_name(field.name)) for field in keep_fields]


def key_row_schema(keep_fields: list[pa.Field]) -> pa.Schema:
    """Rows entering the shuffle: input rows from the reader, and table-key rows (id, stored hash,
    file, current) with every input column null."""
    return pa.schema([
        pa.field(ID, pa.string()),
        pa.field(TEXT_HASH, pa.string()),
        pa.field(TEXT_COL, pa.string()),
        pa.field(ORDER_COL, pa.int64()),
        pa.field(FILE_COL, pa.int32()),
        pa.field(SIDE_COL, pa.int8()),
        pa.field(CURRENT_COL, pa.bool_()),
        pa.field(READ_AT_COL, pa.float64()),
        pa.field(REASON_COL, pa.string()),
        *carried(keep_fields),
    ])


def decided_row_schema(keep_fields: list[pa.Field]) -> pa.Schema:
    """What `decide` hands the encoder actors: input rows with a status (table rows only as DELETED)."""
    return pa.schema([
        *(f for f in key_row_schema(keep_fields) if f.name not in (SIDE_COL, CURRENT_COL)),
        pa.field(STATUS_COL, pa.string()),
        pa.field(ROWS_COL, pa.int64()),
    ])


def encoded_row_schema(vector_fields: list[pa.Field], keep_fields: list[pa.Field],
                       row_fields: list[pa.Field] | None = None) -> pa.Schema:
    """What an encoder actor hands the writers: the table's columns (`row_fields`: a passage table's, and the
    text) plus what the writer counts."""
    return pa.schema([
        pa.field(ID, pa.string()),
        pa.field(TEXT_HASH, pa.string()),
        pa.field(MODEL, pa.string()),
        *(row_fields or []),
        *vector_fields,
        *carried(keep_fields),
        pa.field(ORDER_COL, pa.int64()),
        pa.field(READ_AT_COL, pa.float64()),
        pa.field(REASON_COL, pa.string()),
        pa.field(STATUS_COL, pa.string()),
        pa.field(ROWS_COL, pa.int64()),
        pa.field(TOKENS_COL, pa.int32()),
        pa.field(TRUNCATED_COL, pa.bool_()),
        pa.field(PADDED_COL, pa.int64()),
        pa.field(OOM_SPLITS_COL, pa.int64()),
        pa.field(WORKER_COL, pa.string()),
        pa.field(PASSAGES_COL, pa.int32()),
    ])


def conform(columns: dict[str, pa.Array | pa.ChunkedArray], schema: pa.Schema, rows: int) -> pa.Table:
    """A table of `schema` from named columns; columns the schema has and `columns` lacks are null.
    A column `columns` has and the schema lacks is an error (a stage writing what nobody reads)."""
    extra = set(columns) - set(schema.names)
    if extra:
        msg = f"columns {sorted(extra)} are not in the stage's schema {schema.names}"
        raise ValueError(msg)
    arrays = [columns[f.name] if f.name in columns else pa.nulls(rows, f.type) for f in schema]
    return pa.Table.from_arrays([a if a.type == f.type else a.cast(f.type) for a, f in zip(arrays, schema,
                                                                                         strict=True)],
                                schema=schema)


def file_of(order: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The file index part of `_order`."""
    import pyarrow.compute as pc

    return pc.shift_right(order, ROW_BITS).cast(pa.int32())


def row_of(order: pa.Array | pa.ChunkedArray) -> pa.Array:
    import pyarrow.compute as pc

    return pc.bit_wise_and(order, (1 << ROW_BITS) - 1)
