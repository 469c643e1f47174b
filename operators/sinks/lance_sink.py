"""Lance fragment writes in the workers, commits on the driver.

Ray 2.60's `Dataset.write_lance` fails with pylance 14 (ray-project/ray#65129), and per-row or
driver-side writes do not scale. Workers write Lance data files (fragments) straight to the table's
storage and hand back only their small metadata; the driver commits them in groups as they arrive,
so a killed run keeps everything committed so far and a restart can pick up from there.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import lance
import pyarrow as pa
from lance.fragment import FragmentMetadata, write_fragments

log = logging.getLogger(__name__)


@dataclass
class LanceTarget:
    """One LanceDB table: the database URI (folder or object-store URI) and the table name."""

    uri: str
    table: str
    storage_options: dict = field(default_factory=dict)

    @property
    def dataset_uri(self) -> str:
        return f"{self.uri.rstrip('/')}/{self.table}.lance"

    def exists(self) -> bool:
        try:
            lance.dataset(self.dataset_uri, storage_options=self.storage_options or None)
        except (ValueError, FileNotFoundError, OSError):
            return False
        return True

    def open(self) -> lance.LanceDataset:
        return lance.dataset(self.dataset_uri, storage_options=self.storage_options or None)


def ensure_table(target: LanceTarget, schema: pa.Schema, overwrite: bool = False) -> lance.LanceDataset:
    """Create the table empty with `schema` (or replace it with `overwrite`); check an existing one fits."""
    if target.exists() and not overwrite:
        dataset = target.open()
        existing = {f.name: f.type for f in dataset.schema}
        wanted = {f.name: f.type for f in schema}
        if existing != wanted:
            diff = sorted(
                f"{name}: table has {existing.get(name)}, run writes {wanted.get(name)}"
                for name in set(existing) | set(wanted)
                if existing.get(name) != wanted.get(name)
            )
            msg = (
                f"table {target.table} at {target.uri} exists with other columns ({'; '.join(diff)}); "
                "write to another --table or pass --overwrite"
            )
            raise ValueError(msg)
        return dataset
    return lance.write_dataset(
        schema.empty_table(),
        target.dataset_uri,
        schema=schema,
        mode="overwrite" if target.exists() else "create",
        storage_options=target.storage_options or None,
    )


def write_fragment_json(table: pa.Table, target: LanceTarget, schema: pa.Schema) -> list[str]:
    """Write rows as new Lance data files of the target table; return their fragment metadata as JSON.

    Nothing is visible in the table until the driver commits these fragments.
    """
    if table.num_rows == 0:
        return []
    data = table.select(schema.names).cast(schema)
    fragments = write_fragments(
        data,
        target.dataset_uri,
        schema=schema,
        mode="append",
        storage_options=target.storage_options or None,
    )
    return [json.dumps(fragment.to_json()) for fragment in fragments]


class ProgressiveCommitter:
    """Collects fragment metadata on the driver and appends it to the table in groups.

    Committing every few seconds bounds what a crash can lose to the work in flight, while
    grouping keeps the number of table versions (and manifest writes) small.
    """

    def __init__(self, target: LanceTarget, every_seconds: float = 5.0, every_fragments: int = 64) -> None:
        self.target = target
        self.every_seconds = every_seconds
        self.every_fragments = every_fragments
        self.pending: list[str] = []
        self.last_commit = time.monotonic()
        self.commits = 0
        self.rows_committed = 0

    def add(self, fragment_json: list[str]) -> None:
        self.pending.extend(fragment_json)
        due = time.monotonic() - self.last_commit >= self.every_seconds
        if self.pending and (due or len(self.pending) >= self.every_fragments):
            self.commit()

    def commit(self) -> None:
        if not self.pending:
            return
        fragments = [FragmentMetadata.from_json(raw) for raw in self.pending]
        # Appends never conflict with each other, so reading the latest version here is safe even
        # while another writer commits; Lance retries the commit if a version lands in between.
        lance.LanceDataset.commit(
            self.target.dataset_uri,
            lance.LanceOperation.Append(fragments),
            read_version=self.target.open().version,
            storage_options=self.target.storage_options or None,
        )
        self.rows_committed += sum(fragment.num_rows for fragment in fragments)
        self.commits += 1
        self.pending = []
        self.last_commit = time.monotonic()
        log.debug("committed %d fragments to %s", len(fragments), self.target.table)
