"""LanceDB tables, reached one way.

A `Lake` is a LanceDB database (a local folder or an object-store URI) with the storage settings that reach
it (operators/storage.py); `lake.table(name)` is one of its tables (`TableRef`). Both are plain data, cheap
to ship to Ray workers: the settings are resolved once, where the Lake is made (the driver), and travel
with it. Every reader and writer (the embed job's writers, the run log, search, evaluation, indexes,
clustering, dedup) opens tables through these, so a missing table reads the same everywhere
(`no table 'T' in URI`) and connections are made once per process.

A table name is checked where a `TableRef` is made, before anything touches storage: it becomes a folder
name (`<name>.lance`, `<name>_quarantine.lance`, ...) under the database, so a name with a slash, a leading
dot (`..`), quotes or spaces could reach outside OUTPUT or leave a folder no command can open again.

Writers work on a table's latest version (its main line); readers read a snapshot (`TableRef.snapshot`):
the version tagged `serving`, which an embed run moves only once it has finished and its row accounting
holds (operators/serving.py), or a version or tag the user pins. A table written before serving tags is
read at its latest version. A snapshot is checked to hold the vectors of one model, the one its metadata
names, so no reader scores queries of one model against vectors of another.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import pyarrow as pa

from operators.errors import UsageError
from operators.storage import LOCAL, as_settings, lance_options, protocol_of

# What lance and lancedb raise for a table that is not there (a missing folder, an empty prefix).
MISSING_TABLE_ERRORS = (ValueError, FileNotFoundError)
# The tag readers read by default: the last version a successful embed run published.
SERVING = "serving"


@dataclass(frozen=True)
class Pin:
    """Which version a reader reads: a version number or a tag (`--version N`, `--tag NAME`), or, with
    neither, the serving version."""

    version: int | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.tag is not None:
            msg = "give --version or --tag, not both"
            raise ValueError(msg)
        if self.version is not None and self.version < 1:
            msg = f"--version must be a table version (1 or more), got {self.version}"
            raise ValueError(msg)

    def describe(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        return f"tag {self.tag!r}" if self.tag else SERVING

# LanceDB's own rule (letters, digits, _ - .) without a leading dot, and short enough that the longest derived
# folder name (`<name>_quarantine.lance`, `<name>.sparse_index`) stays within a file system's 255 bytes.
TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_table_name(name: object) -> str:
    """`name` if it is a valid table name, else a one-line UsageError saying what a name may hold."""
    if isinstance(name, str) and TABLE_NAME.fullmatch(name):
        return name
    msg = (f"invalid table name {name!r}: use 1-128 letters, digits, '_', '-' or '.', not starting with '.' "
           "(a table is a folder inside OUTPUT, never a path)")
    raise UsageError(msg)


def connect(uri: str, storage: Mapping | None = None):
    """`lancedb.connect` for a local folder or an object-store URI, with storage settings (resolved ones as
    they are, a config `storage:` section or None with the environment); one connection per process."""
    options = lance_options(uri, as_settings(storage))
    return _connect(uri, tuple(sorted(options.items())))


@lru_cache(maxsize=16)
def _connect(uri: str, options: tuple):
    import lancedb

    return lancedb.connect(uri, storage_options=dict(options) or None)


@dataclass(frozen=True)
class Lake:
    """A LanceDB database and the storage settings to reach it: resolved settings as they are, a config
    `storage:` section or None (the default) with the environment's."""

    uri: str
    storage: Mapping | None = field(default=None, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "storage", as_settings(self.storage))

    def table(self, name: str) -> TableRef:
        return TableRef(self, name)

    def connect(self):
        return connect(self.uri, self.storage)

    @property
    def local_path(self) -> str | None:
        """The folder of a database on the local file system (None on an object store)."""
        return self.uri.removeprefix("file://") if protocol_of(self.uri) == LOCAL else None

    def missing(self) -> bool:
        """True for a local database folder that is not there (reading it must not create it)."""
        path = self.local_path
        return path is not None and not os.path.isdir(path)

    def check_writable(self) -> None:
        """Before a job writes: a local OUTPUT must be a folder this process can create and write into. A
        one-line UsageError for a file, an OSError naming the folder otherwise (read-only, /proc, no space)."""
        path = self.local_path
        if path is None:
            return
        if os.path.exists(path) and not os.path.isdir(path):
            msg = f"OUTPUT {self.uri} is a file, not a database folder"
            raise UsageError(msg)
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            msg = f"OUTPUT {self.uri} is not a writable folder ({error.strerror or type(error).__name__})"
            raise OSError(msg) from None

    def lance_options(self) -> dict | None:
        """The settings as lance / lancedb `storage_options` for this database's store."""
        return dict(lance_options(self.uri, self.storage)) or None

    def write_table(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]):
        """Create or replace table `name` from a stream of batches, as one commit (readers never see half)."""
        check_table_name(name)

        def record_batches() -> Iterator[pa.RecordBatch]:
            wrote = False
            for batch in batches:
                table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
                for record_batch in table.select(schema.names).cast(schema).to_batches():
                    wrote = True
                    yield record_batch
            if not wrote:  # an empty result is still a table, with the right columns
                yield pa.RecordBatch.from_pylist([], schema=schema)

        reader = pa.RecordBatchReader.from_batches(schema, record_batches())
        return self.connect().create_table(name, data=reader, mode="overwrite")


@dataclass(frozen=True)
class TableRef:
    """One table of a Lake, by name; opened when asked, at its latest version."""

    lake: Lake
    name: str

    def __post_init__(self) -> None:
        check_table_name(self.name)

    @property
    def uri(self) -> str:
        return self.lake.uri

    @property
    def dataset_uri(self) -> str:
        return f"{self.lake.uri.rstrip('/')}/{self.name}.lance"

    def exists(self) -> bool:
        if self.lake.missing():
            return False
        try:
            self.dataset()
        except (*MISSING_TABLE_ERRORS, OSError):
            return False
        return True

    def dataset(self, version: int | str | None = None):
        """The table as a Lance dataset (scans, takes, deletes, compaction): the latest version, or a version
        number or tag. Writers use this; readers use `snapshot`."""
        import lance

        return lance.dataset(self.dataset_uri, version=version, storage_options=self.lake.lance_options())

    def snapshot(self, pin: Pin | None = None, check_model: bool = True):
        """The table as readers see it (a Lance dataset at one version): the pinned version or tag, else the
        serving version, else (a table written before serving tags) the latest. With `check_model`, refuses
        a version whose rows hold vectors of a model other than the one its metadata names. One open of the
        version read; the latest is opened only to explain an error or for a table without a serving tag."""
        from operators.table_meta import check_one_model

        pin = pin or Pin()
        wanted = pin.tag if pin.tag is not None else pin.version if pin.version is not None else SERVING
        try:
            dataset = self.dataset(wanted)
        except (*MISSING_TABLE_ERRORS, OSError) as error:
            dataset = self._snapshot_fallback(pin, error)
        if check_model:
            check_one_model(dataset, f"table {self.name!r} at version {dataset.version}")
        return dataset

    def _snapshot_fallback(self, pin: Pin, error: Exception):
        """After the pinned or serving version failed to open: the latest version of a table written before
        serving tags, or a one-line error that says why."""
        try:
            latest = self.dataset()
        except MISSING_TABLE_ERRORS as missing:
            msg = f"no table {self.name!r} in {self.lake.uri}"
            raise ValueError(msg) from missing
        tags = latest.tags.list()
        if pin.tag is None and pin.version is None:
            if SERVING in tags:  # the tag is there: its version failed to open, say so
                raise error
            return latest
        if pin.tag is not None:
            if pin.tag not in tags:
                known = ", ".join(sorted(tags)) or "none"
                msg = f"table {self.name!r} has no tag {pin.tag!r} (tags: {known})"
                raise ValueError(msg) from None
            raise error
        if pin.version > latest.version:
            msg = f"table {self.name!r} has no version {pin.version} (latest: {latest.version})"
            raise ValueError(msg) from None
        msg = (f"table {self.name!r} no longer holds version {pin.version} (removed by maintain; "
               "`embedlake versions` lists what is kept)")
        raise ValueError(msg) from error

    def open(self):
        """The table as a LanceDB table (vector search, indexes, merge_insert), or a one-line ValueError."""
        if self.lake.missing():
            msg = f"no table {self.name!r} in {self.lake.uri} (no such folder)"
            raise ValueError(msg)
        try:
            return self.lake.connect().open_table(self.name)
        except MISSING_TABLE_ERRORS as error:
            msg = f"no table {self.name!r} in {self.lake.uri}"
            raise ValueError(msg) from error

    # -- a derived table written by many workers, published in one commit ---------------------------
    def write_fragments(self, data: pa.Table, schema: pa.Schema) -> list[str]:
        """Write rows as data files of this table without committing them (any process, e.g. a Ray
        worker); returns the fragments' metadata as JSON for `commit_fragments`. Files nobody commits
        are invisible to readers."""
        import json

        from lance.fragment import write_fragments

        table = data.select(schema.names).cast(schema)
        if table.num_rows == 0:
            return []
        fragments = write_fragments(table, self.dataset_uri, schema=schema,
                                    storage_options=self.lake.lance_options())
        return [json.dumps(fragment.to_json()) for fragment in fragments]

    def commit_fragments(self, schema: pa.Schema, fragments: Iterable[str]) -> int:
        """Create or replace the table with exactly these fragments, as one new version: readers see the
        old table or the new one, never a mix. Returns the version."""
        import lance
        from lance.fragment import FragmentMetadata

        metadata = [FragmentMetadata.from_json(item) for item in fragments]
        operation = lance.LanceOperation.Overwrite(schema, metadata)
        read_version = self.dataset().version if self.exists() else None
        dataset = lance.LanceDataset.commit(self.dataset_uri, operation, read_version=read_version,
                                            storage_options=self.lake.lance_options())
        return int(dataset.version)
