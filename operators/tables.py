"""LanceDB tables, reached one way.

A `Lake` is a LanceDB database (a local folder or an object-store URI) with the storage settings that reach
it (operators/storage.py); `lake.table(name)` is one of its tables (`TableRef`). Both are plain data, cheap
to ship to Ray workers: the settings are resolved once, where the Lake is made (the driver), and travel
with it. Every reader and writer (the embed job's writers, the run log, search, evaluation, indexes,
clustering, dedup) opens tables through these, so a missing table reads the same everywhere
(`no table 'T' in URI`) and connections are made once per process.

Writers work on a table's latest version (its main line); readers read a snapshot (`TableRef.snapshot`):
the version tagged `serving`, which an embed run moves only once it has finished and its row accounting
holds (operators/serving.py), or a version or tag the user pins. A table written before serving tags is
read at its latest version. A snapshot is checked to hold the vectors of one model, the one its metadata
names, so no reader scores queries of one model against vectors of another.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import pyarrow as pa

from operators.storage import as_settings, lance_options

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

    def lance_options(self) -> dict | None:
        """The settings as lance / lancedb `storage_options` for this database's store."""
        return dict(lance_options(self.uri, self.storage)) or None

    def write_table(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]):
        """Create or replace table `name` from a stream of batches, as one commit (readers never see half)."""

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

    @property
    def uri(self) -> str:
        return self.lake.uri

    @property
    def dataset_uri(self) -> str:
        return f"{self.lake.uri.rstrip('/')}/{self.name}.lance"

    def exists(self) -> bool:
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
