"""Finding and reading Parquet shards from any fsspec URI (local, s3://, gs://, az://, file://).

A shard is read by whichever worker gets it, row group by row group, with only the needed columns.
Every row carries its provenance (`file#row`) so a quarantined row can be traced to its input, and
text that is not valid UTF-8 or not a string is flagged here instead of failing the job.

Storage options are embedlake's storage settings (operators/storage.py), translated to the
filesystem's own options here; errors that would echo a credential are scrubbed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.errors import one_line
from operators.exchange import (
    FILE_COL,
    INPUT,
    ORDER_COL,
    READ_AT_COL,
    REASON_COL,
    ROW_BITS,
    SIDE_COL,
    TEXT_COL,
    conform,
    kept_name,
    key_row_schema,
)
from operators.lake_layout import GLOB_CHARS, hive_partitions, hive_values, listing_base
from operators.schema import ID, INVISIBLE, TEXT_HASH, require_columns, text_hashes
from operators.storage import filesystem, open_input, redacted_errors

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
FOOTER_THREADS = 32  # concurrent footer / id-column reads on object stores
LOCAL_SCAN_THREADS = 8


@dataclass
class ShardSet:
    """The Parquet files an INPUT names, with the filesystem options to open them."""

    uri: str
    files: list[str]
    protocol: str
    storage_options: dict = field(default_factory=dict, repr=False)
    partitions: pa.Schema = field(default_factory=lambda: pa.schema([]))  # hive key=value folders
    versions: dict[str, str] = field(default_factory=dict)  # file -> "size:ETag or mtime", from the listing


def _full_uri(protocol: str, path: str) -> str:
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def find_shards(uri: str, storage_options: dict | None = None) -> ShardSet:
    """List the Parquet files a file, folder (recursively, hive partitions included) or glob names.

    One listing call for a folder or glob (no per-file stat), so thousands of shards on an object
    store list in a few paged requests.
    """
    storage_options = storage_options if storage_options is not None else {}
    with redacted_errors(storage_options):
        fs, path = filesystem(uri, storage_options)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        base = None
        # A path that exists is taken as it is, even with [ ] * ? in its folder names; a glob only otherwise.
        literal = not any(char in path for char in GLOB_CHARS) or fs.exists(path)
        if not literal:
            base = listing_base(path)
            # files only, Parquet only, no markers or hidden files: what the folder form reads
            infos = {found: info for found, info in fs.glob(path, detail=True).items()
                     if info.get("type") == "file" and found.endswith(PARQUET_SUFFIXES)
                     and not _hidden(found[len(base):])}
        elif fs.isdir(path):
            base = path
            infos = _parquet_files(fs, path)
        elif fs.isfile(path):
            infos = {path: fs.info(path)}
        else:
            msg = f"input {uri} does not exist"
            raise ValueError(msg)
    paths = sorted(infos)
    if not paths:
        msg = f"input {uri} holds no Parquet files ({', '.join(PARQUET_SUFFIXES)})"
        raise ValueError(msg)
    partitions = hive_partitions(paths, base) if base is not None else pa.schema([])
    return ShardSet(uri=uri, files=[_full_uri(protocol, p) for p in paths], protocol=protocol,
                    storage_options=storage_options, partitions=partitions,
                    versions={_full_uri(protocol, p): file_version(infos[p]) for p in paths})


def file_version(info: dict) -> str:
    """What tells a changed shard from the listing alone: its size and its ETag (object stores) or
    modification time (file systems). A file rewritten with other bytes changes one of them."""
    stamp = next((info[key] for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified",
                                        "updated", "created") if info.get(key) is not None), "")
    return f"{info.get('size')}:{stamp}"


def _parquet_files(fs, folder: str) -> dict[str, dict]:
    """The Parquet files under `folder`, recursively, without hidden files and markers; one listing call."""
    return {p: info for p, info in fs.find(folder, detail=True).items()
            if p.endswith(PARQUET_SUFFIXES) and not _hidden(p[len(folder):])}


def _hidden(relative: str) -> bool:
    """Spark/Hive markers and hidden files (_SUCCESS, .crc, _temporary/) are not data."""
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def read_schema(shards: ShardSet, skip_bad_files: bool = False) -> pa.Schema:
    """Schema of the first shard (the first readable one with skip_bad_files), naming a file it cannot read,
    plus the hive partition columns its file does not hold."""
    for path in shards.files:
        try:
            with open_input(path, shards.storage_options) as handle:
                return with_partitions(pq.read_schema(handle), shards.partitions)
        except Exception as error:
            if not skip_bad_files:
                msg = f"cannot read shard {path} ({one_line(error, 300, shards.storage_options, with_type=True)})"
                raise ValueError(msg) from None
    msg = f"input {shards.uri}: no shard is readable"
    raise ValueError(msg)


def with_partitions(schema: pa.Schema, partitions: pa.Schema) -> pa.Schema:
    for partition in partitions:
        if partition.name not in schema.names:
            schema = schema.append(partition)
    return schema


@dataclass
class ShardReader:
    """Reads shards into key rows (operators/exchange.py): id, text, text hash, input order, file
    index, read time, a quarantine reason where the row cannot be embedded, and the kept columns.

    Ids are cast to strings (ids may be integers in the lake); a text column that is binary is
    decoded as UTF-8; rows that fail to decode, are not strings, or have no id or no text get a
    reason here, in Arrow compute, so that the later stages only route them.
    """

    id_column: str
    text_column: str
    keep_columns: list[str] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict, repr=False)
    rows_per_read: int = 2048  # rows per Arrow batch read from a row group
    keep_types: dict[str, pa.DataType] = field(default_factory=dict)  # table types to cast kept columns to

    def read(self, path: str, row_groups: Sequence[int] | None = None, file_index: int = 0) -> Iterator[pa.Table]:
        """The shard's rows (or only those of `row_groups`, so that one big shard can be read by
        several tasks at once), with file-global row numbers in `_order`."""
        with redacted_errors(self.storage_options):
            yield from self._read(path, row_groups, file_index)

    def _read(self, path: str, row_groups: Sequence[int] | None, file_index: int) -> Iterator[pa.Table]:
        with open_input(path, self.storage_options) as handle:
            parquet = pq.ParquetFile(handle)
            require_columns(parquet.schema_arrow, [self.id_column, self.text_column], f"shard {path}")
            present = set(parquet.schema_arrow.names)
            columns = [c for c in dict.fromkeys([self.id_column, self.text_column, *self.keep_columns]) if c in present]
            # Kept columns the file lacks may be hive partition values (`key=value/`) in the shard's path.
            from_path = {k: v for k, v in hive_values(path).items() if k in self.keep_columns and k not in present}
            sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
            starts = [0, *itertools.accumulate(sizes)]  # first row of each row group in the file
            for group in range(len(sizes)) if row_groups is None else row_groups:
                offset = starts[group]
                for record_batch in parquet.iter_batches(batch_size=self.rows_per_read, row_groups=[group],
                                                         columns=columns):
                    table = pa.Table.from_batches([record_batch])
                    for name, value in from_path.items():
                        table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
                    yield self.normalise(table, path, offset, file_index)
                    offset += record_batch.num_rows

    def normalise(self, table: pa.Table, path: str, offset: int, file_index: int = 0) -> pa.Table:
        rows = table.num_rows
        ids, id_reasons = decode_ids(table.column(self.id_column))
        texts, reasons = decode_texts(table.column(self.text_column))
        reasons = row_problems(ids, texts, pc.coalesce(id_reasons, reasons))
        columns = {
            ID: ids,
            TEXT_HASH: text_hashes(texts, pc.is_null(reasons)),
            TEXT_COL: texts,
            ORDER_COL: pa.array(np.arange(offset, offset + rows, dtype=np.int64) + (file_index << ROW_BITS)),
            FILE_COL: pa.array(np.full(rows, file_index, dtype=np.int32)),
            SIDE_COL: pa.array(np.full(rows, INPUT, dtype=np.int8)),
            READ_AT_COL: pa.array(np.full(rows, time.time())),
            REASON_COL: reasons,
        }
        kept = {name: self.kept_column(table, name, path) for name in self.keep_columns}
        columns.update({kept_name(name): column for name, column in kept.items()})
        return conform(columns, key_row_schema([pa.field(n, c.type) for n, c in kept.items()]), rows)

    def kept_column(self, table: pa.Table, name: str, path: str) -> pa.Array:
        """A kept column in the table's type; nulls where a shard lacks it (schemas drift across drops)."""
        wanted = self.keep_types.get(name)
        if name not in table.column_names:
            return pa.nulls(table.num_rows, wanted or pa.string())
        column = table.column(name).combine_chunks()
        if wanted is None or column.type == wanted:
            return column
        try:
            return column.cast(wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            msg = f"shard {path}: column {name!r} is {column.type}, which does not convert to the table's {wanted}"
            raise ValueError(msg) from error


def row_problems(ids: pa.Array, texts: pa.Array, reasons: pa.Array) -> pa.Array:
    """A quarantine reason per row, or null for rows that can be embedded; the reader's own reason
    (undecodable text or id) first, then a missing id, a missing text, a blank text (nothing but whitespace,
    control and invisible format characters such as zero-width spaces: nothing a model could read)."""
    no_id = pc.fill_null(pc.equal(pc.utf8_length(ids), 0), True)
    visible = pc.replace_substring_regex(texts, INVISIBLE, "")
    blank = pc.fill_null(pc.equal(pc.utf8_length(visible), 0), False)
    none = pa.scalar(None, pa.string())
    for failed, reason in ((no_id, "null or empty id"), (pc.is_null(texts), "null text"), (blank, "empty text")):
        reasons = pc.coalesce(reasons, pc.if_else(failed, pa.scalar(reason), none))
    return reasons


def as_plain(values: pa.Array) -> pa.Array:
    """Arrow's other spellings of text and bytes as plain ones: dictionary-encoded columns (a pandas
    Categorical) decoded, string_view / large_string as string, binary_view / large_binary as binary."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    kind = values.type
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pc.cast(values, pa.string())
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind) or pa.types.is_fixed_size_binary(kind):
        return pc.cast(values, pa.binary())
    return values


def decode_utf8(values: pa.Array, what: str) -> tuple[pa.Array, pa.Array]:
    """Binary values as strings, with the reason `<what> is not valid UTF-8` (and a null) where they are not."""
    texts, reasons = [], []
    for raw in values.to_pylist():
        try:
            texts.append(None if raw is None else raw.decode("utf-8"))
            reasons.append(None)
        except UnicodeDecodeError:
            texts.append(None)
            reasons.append(f"{what} is not valid UTF-8")
    return pa.array(texts, pa.string()), pa.array(reasons, pa.string())


def decode_ids(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """Ids as strings (integers and other scalars cast) plus a reason per row whose id cannot be one (bytes
    that are not UTF-8, a nested value), else null: such rows are quarantined, never a failed run."""
    values = as_plain(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    if pa.types.is_string(values.type):
        return values, pa.nulls(len(values), pa.string())
    if pa.types.is_binary(values.type):
        return decode_utf8(values, "id")
    try:
        return pc.cast(values, pa.string()), pa.nulls(len(values), pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        reason = f"id is not a string or number ({values.type})"
        return pa.nulls(len(values), pa.string()), pa.array(
            [None if v is None else reason for v in values.to_pylist()], pa.string())


def decode_texts(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """Texts as a string array plus a reason per row that cannot be embedded as text (else null)."""
    values = as_plain(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    kind = values.type
    if pa.types.is_string(kind):
        return values, pa.nulls(len(values), pa.string())
    if pa.types.is_binary(kind):
        return decode_utf8(values, "text")
    reason = f"text is not a string ({kind})"
    return pa.nulls(len(values), pa.string()), pa.array(
        [None if v is None else reason for v in values.to_pylist()], pa.string()
    )


@dataclass
class Piece:
    """One read task: some row groups of one shard (all of them when `row_groups` is None)."""

    file_index: int  # the shard's place in the input's listing (its rows' input order)
    path: str
    row_groups: list[int] | None
    rows: int


@dataclass
class ReadPlan:
    """What the shards' Parquet footers tell before any data is read: the read tasks, the rows of
    every shard, and the shards that cannot be used."""

    pieces: list[Piece]
    rows: dict[str, int]  # rows of each readable shard
    bad_files: dict[str, str]  # unreadable or unusable shard -> reason (only with skip_bad_files)

    @property
    def rows_in(self) -> int:
        return sum(self.rows.values())


@dataclass
class Footers:
    """What the shards' Parquet footers say, read before the run starts anything: each readable shard's
    row-group sizes, and the shards that cannot be used (unreadable, or lacking a needed column)."""

    files: list[tuple[int, str]]  # (listing index, path) of every shard asked about
    sizes: dict[str, list[int]]  # readable shard -> rows per row group
    bad_files: dict[str, str]  # shard -> reason

    @property
    def rows(self) -> int:
        """Rows of the readable shards."""
        return sum(sum(sizes) for sizes in self.sizes.values())

    def plan(self, rows_per_piece: int) -> ReadPlan:
        """Read tasks: consecutive row groups of a shard together until they reach `rows_per_piece` (Ray hands
        an encoder actor whole blocks, and one task per big shard would leave actors idle)."""
        pieces: list[Piece] = []
        for index, path in self.files:
            if path in self.sizes:
                pieces.extend(split_row_groups(index, path, self.sizes[path], rows_per_piece))
        return ReadPlan(pieces, {path: sum(sizes) for path, sizes in self.sizes.items()}, dict(self.bad_files))


def read_footers(
    shards: ShardSet,
    files: Sequence[tuple[int, str]],
    required: Sequence[str],
    skip_bad_files: bool = False,
    threads: int | None = None,
) -> Footers:
    """The footers of `files` ((listing index, path) pairs), many at a time (on an object store each is a round
    trip). A shard whose footer cannot be read or lacks a needed column fails the run, naming it, or with
    `skip_bad_files` is reported in `bad_files`."""
    in_files = [name for name in required if name not in shards.partitions.names]  # hive columns live in paths

    def footer(path: str) -> list[int] | str:
        try:
            with open_input(path, shards.storage_options) as handle:
                parquet = pq.ParquetFile(handle)
                require_columns(parquet.schema_arrow, in_files, f"shard {path}")
                return [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        except Exception as error:  # noqa: BLE001 - reported per file below
            return one_line(error, 300, shards.storage_options, with_type=True)

    threads = threads or (LOCAL_SCAN_THREADS if shards.protocol in ("file", "local") else FOOTER_THREADS)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        found = list(pool.map(footer, [path for _, path in files]))
    bad_files = {path: item for (_, path), item in zip(files, found, strict=True) if isinstance(item, str)}
    if bad_files and not skip_bad_files:
        path, reason = next(iter(bad_files.items()))
        msg = f"cannot read shard {path} ({reason}); fix it or pass --skip-bad-files to quarantine whole bad files"
        raise ValueError(msg)
    sizes = {path: item for (_, path), item in zip(files, found, strict=True) if not isinstance(item, str)}
    return Footers(list(files), sizes, bad_files)


def plan_reads(
    shards: ShardSet,
    files: Sequence[tuple[int, str]],
    required: Sequence[str],
    rows_per_piece: int,
    skip_bad_files: bool = False,
    threads: int | None = None,
) -> ReadPlan:
    """Read tasks for `files` from their footers alone (`read_footers`, then `Footers.plan`)."""
    return read_footers(shards, files, required, skip_bad_files, threads).plan(rows_per_piece)


def split_row_groups(index: int, path: str, sizes: Sequence[int], rows_per_piece: int) -> list[Piece]:
    if not sizes:
        return [Piece(index, path, None, 0)]
    pieces: list[Piece] = []
    current: list[int] = []
    rows = 0
    for group, size in enumerate(sizes):
        current.append(group)
        rows += size
        if rows >= rows_per_piece:
            pieces.append(Piece(index, path, current, rows))
            current, rows = [], 0
    if current:
        pieces.append(Piece(index, path, current, rows))
    return pieces
