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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.errors import one_line
from operators.lake_layout import GLOB_CHARS, hive_partitions, hive_values, listing_base
from operators.schema import ID, require_columns
from operators.storage import filesystem, open_input, redacted_errors

SOURCE_COL = "_source"
READ_AT_COL = "_read_at"
REASON_COL = "_reason"
TEXT_COL = "_text"
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


def count_rows(shards: ShardSet) -> int:
    """Total rows from the Parquet footers alone (no data read), many footers at a time: on an
    object store each footer is a round trip, and thousands of them in a row take minutes."""
    with redacted_errors(shards.storage_options):

        def footer_rows(path: str) -> int:
            with open_input(path, shards.storage_options) as handle:
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
    duplicate_sources: set[str] = field(default_factory=set)
    keep_types: dict[str, pa.DataType] = field(default_factory=dict)  # table types to cast kept columns to

    def read(self, path: str, row_groups: Sequence[int] | None = None) -> Iterator[pa.Table]:
        """The shard's rows (or only those of `row_groups`, so that one big shard can be read by
        several tasks at once), with file-global row numbers in `_source`."""
        with redacted_errors(self.storage_options):
            yield from self._read(path, row_groups)

    def _read(self, path: str, row_groups: Sequence[int] | None = None) -> Iterator[pa.Table]:
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
                for record_batch in parquet.iter_batches(batch_size=self.rows_per_batch, row_groups=[group],
                                                         columns=columns):
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
            columns[name] = self.kept_column(table, name, path)
        sources = [f"{path}#{offset + i}" for i in range(rows)]
        if self.duplicate_sources:
            reasons = pa.array(
                ["duplicate id" if source in self.duplicate_sources else reason
                 for source, reason in zip(sources, reasons.to_pylist(), strict=True)],
                pa.string(),
            )
        columns[SOURCE_COL] = pa.array(sources, pa.string())
        columns[READ_AT_COL] = pa.array([time.time()] * rows, pa.float64())
        columns[REASON_COL] = reasons
        return pa.table(columns)


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


@dataclass
class InputScan:
    """What a cheap pass over the id column of every shard tells before any encoding starts."""

    files: list[str]  # readable shards, in input order
    rows_in: int
    duplicate_sources: set[str]  # file#row of every repeat of an id seen earlier in input order
    bad_files: dict[str, str]  # unreadable or unusable shard -> reason (only with skip_bad_files)
    ids: pa.Array  # every id in the input, for deleting ids that left it
    row_groups: dict[str, list[int]] = field(default_factory=dict)  # rows of each row group of each file

    def pieces(self, rows_per_piece: int) -> list[tuple[str, list[int] | None]]:
        """(file, row groups) read tasks of about `rows_per_piece` rows or more: consecutive row groups
        of a file go together until they reach it. Ray hands an encoder actor whole blocks, and a
        reader task's output is one block, so one task per big shard would leave actors idle."""
        pieces: list[tuple[str, list[int] | None]] = []
        for path in self.files:
            sizes = self.row_groups.get(path)
            if not sizes:  # unknown (read it whole) or no row groups at all
                pieces.append((path, None))
                continue
            current: list[int] = []
            rows = 0
            for group, size in enumerate(sizes):
                current.append(group)
                rows += size
                if rows >= rows_per_piece:
                    pieces.append((path, current))
                    current, rows = [], 0
            if current:
                pieces.append((path, current))
        return pieces


def scan_input(
    shards: ShardSet, required: Sequence[str], id_column: str, skip_bad_files: bool = False, threads: int | None = None
) -> InputScan:
    """Read only the id column of every shard (in parallel threads): counts rows, finds duplicate ids,
    and finds corrupt or schema-broken files before any work is spent on them. On an object store each
    shard costs round trips rather than CPU, so more of them run at once there."""
    from concurrent.futures import ThreadPoolExecutor

    # Kept hive partition columns are not in the files: check only for what the files must hold.
    in_files = [name for name in required if name not in shards.partitions.names]

    sizes: dict[str, list[int]] = {}

    def read_ids(path: str) -> pa.Array | str:
        try:
            with open_input(path, shards.storage_options) as handle:
                parquet = pq.ParquetFile(handle)
                require_columns(parquet.schema_arrow, in_files, f"shard {path}")
                ids = parquet.read(columns=[id_column]).column(id_column)
                sizes[path] = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        except Exception as error:  # noqa: BLE001 - reported per file below
            return one_line(error, 300, shards.storage_options, with_type=True)
        ids = ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())
        return ids.combine_chunks()

    threads = threads or (LOCAL_SCAN_THREADS if shards.protocol in ("file", "local") else FOOTER_THREADS)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(shards.files)))) as pool:
        results = list(pool.map(read_ids, shards.files))
    bad_files = {path: result for path, result in zip(shards.files, results, strict=True) if isinstance(result, str)}
    if bad_files and not skip_bad_files:
        path, reason = next(iter(bad_files.items()))
        msg = f"cannot read shard {path} ({reason}); fix it or pass --skip-bad-files to quarantine whole bad files"
        raise ValueError(msg)
    files = [path for path in shards.files if path not in bad_files]
    id_arrays = [result for result in results if not isinstance(result, str)]
    file_index = [pa.array([i] * len(a), pa.int32()) for i, a in enumerate(id_arrays)]
    row_index = [pa.array(range(len(a)), pa.int64()) for a in id_arrays]
    table = pa.table({
        "id": pa.concat_arrays(id_arrays) if id_arrays else pa.array([], pa.string()),
        "file": pa.concat_arrays(file_index) if id_arrays else pa.array([], pa.int32()),
        "row": pa.concat_arrays(row_index) if id_arrays else pa.array([], pa.int64()),
    })
    table = table.append_column("order", pa.array(range(table.num_rows), pa.int64()))
    firsts = table.filter(pc.is_valid(table.column("id"))).group_by("id").aggregate([("order", "min")])
    first_orders = firsts.column("order_min")
    repeats = table.filter(
        pc.and_(pc.is_valid(table.column("id")), pc.invert(pc.is_in(table.column("order"), value_set=first_orders)))
    )
    duplicate_sources = {
        f"{files[f]}#{r}" for f, r in zip(repeats.column("file").to_pylist(), repeats.column("row").to_pylist(),
                                          strict=True)
    }
    return InputScan(files, table.num_rows, duplicate_sources, bad_files, table.column("id").combine_chunks(),
                     {path: sizes[path] for path in files if path in sizes})
