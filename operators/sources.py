"""Finding and reading Parquet shards from any fsspec URI (local, s3://, gs://, az://, file://).

A shard is read by whichever worker gets it, row group by row group, with only the needed columns.
Every row carries its provenance (`file#row`) so a quarantined row can be traced to its input, and
text that is not valid UTF-8 or not a string is flagged here instead of failing the job.

Storage options are embedlake's storage settings (operators/storage.py), translated to the
filesystem's own options here; errors that would echo a credential are scrubbed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.lake_layout import GLOB_CHARS, hive_partitions, hive_values, listing_base
from operators.schema import ID
from operators.storage import fsspec_options, redacted_errors

SOURCE_COL = "_source"
READ_AT_COL = "_read_at"
REASON_COL = "_reason"
TEXT_COL = "_text"
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
# Parquet reads are ranged (footer, then the needed column chunks): no read-ahead, which on object
# stores would fetch the columns we skip.
READ_CACHE = "none"
FOOTER_THREADS = 32


@dataclass
class ShardSet:
    """The Parquet files an INPUT names, with the filesystem options to open them."""

    uri: str
    files: list[str]
    protocol: str
    storage_options: dict = field(default_factory=dict, repr=False)
    partitions: pa.Schema = field(default_factory=lambda: pa.schema([]))  # hive key=value folders

    def filesystem(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem(self.protocol, **fsspec_options(self.uri, self.storage_options))


def _full_uri(protocol: str, path: str) -> str:
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def find_shards(uri: str, storage_options: dict | None = None) -> ShardSet:
    """List the Parquet files a file, folder (recursively, hive partitions included) or glob names.

    One listing call for a folder or glob (no per-file stat), so thousands of shards on an object
    store list in a few paged requests.
    """
    storage_options = storage_options if storage_options is not None else {}
    with redacted_errors(storage_options):
        fs, path = fsspec.core.url_to_fs(uri, **fsspec_options(uri, storage_options))
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        base = None
        if any(char in path for char in GLOB_CHARS):
            base = listing_base(path)
            paths = sorted(p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file")
        elif fs.isdir(path):
            base = path
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
    partitions = hive_partitions(paths, base) if base is not None else pa.schema([])
    return ShardSet(uri=uri, files=[_full_uri(protocol, p) for p in paths], protocol=protocol,
                    storage_options=storage_options, partitions=partitions)


def _hidden(relative: str) -> bool:
    """Spark/Hive markers and hidden files (_SUCCESS, .crc, _temporary/) are not data."""
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def read_schema(shards: ShardSet, path: str | None = None) -> pa.Schema:
    """The first shard's schema plus the hive partition columns its file does not hold."""
    with redacted_errors(shards.storage_options):
        fs = shards.filesystem()
        with fs.open(path or shards.files[0], "rb", cache_type=READ_CACHE) as handle:
            schema = pq.read_schema(handle)
    for partition in shards.partitions:
        if partition.name not in schema.names:
            schema = schema.append(partition)
    return schema


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
    """Total rows from the Parquet footers alone (no data read), many footers at a time: on an
    object store each footer is a round trip, and thousands of them in a row take minutes."""
    with redacted_errors(shards.storage_options):
        fs = shards.filesystem()

        def footer_rows(path: str) -> int:
            with fs.open(path, "rb", cache_type=READ_CACHE) as handle:
                return pq.ParquetFile(handle).metadata.num_rows

        if len(shards.files) == 1 or shards.protocol in ("file", "local"):
            return sum(footer_rows(path) for path in shards.files)
        with ThreadPoolExecutor(max_workers=min(FOOTER_THREADS, len(shards.files))) as pool:
            return sum(pool.map(footer_rows, shards.files))


@dataclass
class ShardReader:
    """Reads shards into batches of (id, _text, keep columns..., _source, _read_at, _reason).

    Ids are cast to strings (ids may be integers in the lake); a text column that is binary is
    decoded as UTF-8, rows that fail to decode or are not strings get a quarantine reason.
    """

    id_column: str
    text_column: str
    keep_columns: list[str] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict, repr=False)
    rows_per_batch: int = 2048

    def read(self, path: str) -> Iterator[pa.Table]:
        with redacted_errors(self.storage_options):
            yield from self._read(path)

    def _read(self, path: str) -> Iterator[pa.Table]:
        fs, fs_path = fsspec.core.url_to_fs(path, **fsspec_options(path, self.storage_options))
        columns = list(dict.fromkeys([self.id_column, self.text_column, *self.keep_columns]))
        offset = 0
        with fs.open(fs_path, "rb", cache_type=READ_CACHE) as handle:
            parquet = pq.ParquetFile(handle)
            in_file = parquet.schema_arrow.names
            # Kept columns the file lacks may be hive partition values in the shard's path.
            in_path = {k: v for k, v in hive_values(path).items() if k not in in_file}
            found = pa.schema([*parquet.schema_arrow, *(pa.field(k, pa.string()) for k in in_path)])
            check_columns(found, columns, f"shard {path}")
            from_path = {k: v for k, v in in_path.items() if k in columns}
            file_columns = [name for name in columns if name in in_file]
            for record_batch in parquet.iter_batches(batch_size=self.rows_per_batch, columns=file_columns):
                table = pa.Table.from_batches([record_batch])
                for name, value in from_path.items():
                    table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
                yield self.normalise(table, path, offset)
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
