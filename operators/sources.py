"""Finding and reading Parquet shards from any fsspec URI (local, s3://, gs://, file://).

A shard is read by whichever worker gets it, row group by row group, with only the needed columns.
Every row carries its provenance (`file#row`) so a quarantined row can be traced to its input, and
text that is not valid UTF-8 or not a string is flagged here instead of failing the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.schema import ID

SOURCE_COL = "_source"
READ_AT_COL = "_read_at"
REASON_COL = "_reason"
TEXT_COL = "_text"
GLOB_CHARS = "*?["
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


@dataclass
class ShardSet:
    """The Parquet files an INPUT names, with the filesystem options to open them."""

    uri: str
    files: list[str]
    protocol: str
    storage_options: dict = field(default_factory=dict)

    def filesystem(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem(self.protocol, **self.storage_options)


def _full_uri(protocol: str, path: str) -> str:
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def find_shards(uri: str, storage_options: dict | None = None) -> ShardSet:
    """List the Parquet files a file, folder (recursively, hive partitions included) or glob names."""
    storage_options = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if any(char in path for char in GLOB_CHARS):
        paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        paths = sorted(
            p for p in fs.find(path) if p.endswith(PARQUET_SUFFIXES) and not _hidden(p[len(path):])
        )
    elif fs.isfile(path):
        paths = [path]
    else:
        msg = f"input {uri} does not exist"
        raise ValueError(msg)
    if not paths:
        msg = f"input {uri} holds no Parquet files ({', '.join(PARQUET_SUFFIXES)})"
        raise ValueError(msg)
    return ShardSet(uri=uri, files=[_full_uri(protocol, p) for p in paths], protocol=protocol,
                    storage_options=storage_options)


def _hidden(relative: str) -> bool:
    """Spark/Hive markers and hidden files (_SUCCESS, .crc, _temporary/) are not data."""
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def read_schema(shards: ShardSet, path: str | None = None) -> pa.Schema:
    fs = shards.filesystem()
    with fs.open(path or shards.files[0], "rb") as handle:
        return pq.read_schema(handle)


def check_columns(schema: pa.Schema, required: Sequence[str], where: str) -> None:
    """Fail before any work when a needed column is missing, naming the columns that exist."""
    missing = [name for name in required if name not in schema.names]
    if missing:
        msg = (
            f"{where} has no column(s) {', '.join(repr(m) for m in missing)}; "
            f"columns found: {', '.join(schema.names)}"
        )
        raise ValueError(msg)


def count_rows(shards: ShardSet) -> int:
    """Total rows from the Parquet footers alone (no data read)."""
    fs = shards.filesystem()
    total = 0
    for path in shards.files:
        with fs.open(path, "rb") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


@dataclass
class ShardReader:
    """Reads shards into batches of (id, _text, keep columns..., _source, _read_at, _reason).

    Ids are cast to strings (ids may be integers in the lake); a text column that is binary is
    decoded as UTF-8, rows that fail to decode or are not strings get a quarantine reason.
    """

    id_column: str
    text_column: str
    keep_columns: list[str] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict)
    rows_per_batch: int = 2048

    def read(self, path: str) -> Iterator[pa.Table]:
        fs, fs_path = fsspec.core.url_to_fs(path, **self.storage_options)
        columns = list(dict.fromkeys([self.id_column, self.text_column, *self.keep_columns]))
        offset = 0
        with fs.open(fs_path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            check_columns(parquet.schema_arrow, columns, f"shard {path}")
            for record_batch in parquet.iter_batches(batch_size=self.rows_per_batch, columns=columns):
                yield self.normalise(pa.Table.from_batches([record_batch]), path, offset)
                offset += record_batch.num_rows

    def normalise(self, table: pa.Table, path: str, offset: int) -> pa.Table:
        rows = table.num_rows
        ids = table.column(self.id_column)
        ids = ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())
        texts, reasons = decode_texts(table.column(self.text_column))
        columns = {ID: ids, TEXT_COL: texts}
        for name in self.keep_columns:
            columns[name] = table.column(name)
        columns[SOURCE_COL] = pa.array([f"{path}#{offset + i}" for i in range(rows)], pa.string())
        columns[READ_AT_COL] = pa.array([time.time()] * rows, pa.float64())
        columns[REASON_COL] = reasons
        return pa.table(columns)


def decode_texts(column: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Texts as a string array plus a reason per row that cannot be embedded as text (else null)."""
    kind = column.type
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.cast(values, pa.string()), pa.nulls(len(values), pa.string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        texts, reasons = [], []
        for raw in values.to_pylist():
            if raw is None:
                texts.append(None)
                reasons.append(None)
                continue
            try:
                texts.append(raw.decode("utf-8"))
                reasons.append(None)
            except UnicodeDecodeError:
                texts.append(None)
                reasons.append("text is not valid UTF-8")
        return pa.array(texts, pa.string()), pa.array(reasons, pa.string())
    reason = f"text is not a string ({kind})"
    return pa.nulls(len(values), pa.string()), pa.array(
        [None if v is None else reason for v in values.to_pylist()], pa.string()
    )
