"""Keyed, exactly-once writes of pipeline output into LanceDB tables, from the workers.

Ray 2.60's `Dataset.write_lance` fails with pylance 14 (ray-project/ray#65129), and per-row or
driver-side writes do not scale. Each writer task upserts its batch with Lance `merge_insert` keyed
on the table's primary key: the task writes the new data files and commits them itself, so the
vectors never pass through the driver, progress is committed batch by batch (a killed run keeps
everything committed so far), and re-running a batch replaces rows instead of duplicating them.
The key is declared as the table's unenforced primary key: without it, concurrent `merge_insert`
commits duplicate keys (lance#4585); with it, Lance detects the overlap and retries.

A target is a `TableRef` (operators/tables.py): the table's name and its Lake, whose storage settings
travel to the writers; Lance gets the ones for the table's object store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from operators.storage import redacted_errors
from operators.tables import TableRef

if TYPE_CHECKING:  # lance loads where a table is first touched, not on import (pipelines/ray_runtime.py)
    import lance

log = logging.getLogger(__name__)
DELETE_CHUNK = 2000  # ids per delete predicate


# Columns added to a table written before they existed (null in its old rows) instead of asking for
# --overwrite: `source_file` (rows of unknown shard are never taken for rows of a skipped one).
ADDABLE_COLUMNS = ("source_file",)


def check_columns(target: TableRef, schema: pa.Schema, hint: str = "write to another --table or pass --overwrite",
                  dataset: lance.LanceDataset | None = None) -> list[pa.Field]:
    """Read-only: a one-line ValueError when the table exists with other columns than `schema` (so a run can
    refuse before it writes anything); the ADDABLE_COLUMNS it lacks otherwise (none when it does not exist)."""
    if dataset is None:
        if not target.exists():
            return []
        dataset = target.dataset()
    existing = {f.name: f.type for f in dataset.schema}
    wanted = {f.name: f.type for f in schema}
    added = [schema.field(name) for name in wanted if name not in existing and name in ADDABLE_COLUMNS]
    if added and all(existing.get(k) == v for k, v in wanted.items() if k not in ADDABLE_COLUMNS):
        existing.update({f.name: f.type for f in added})
    if existing != wanted:
        diff = sorted(
            f"{name}: table has {existing.get(name)}, run writes {wanted.get(name)}"
            for name in set(existing) | set(wanted)
            if existing.get(name) != wanted.get(name)
        )
        msg = f"table {target.name} at {target.uri} exists with other columns ({'; '.join(diff)}); {hint}"
        raise ValueError(msg)
    return added


def ensure_table(
    target: TableRef, schema: pa.Schema, primary_key: str, overwrite: bool = False
) -> lance.LanceDataset:
    """Create the table empty with `schema` and its primary key (or replace it with `overwrite`);
    check that an existing table has the same columns."""
    if target.exists() and not overwrite:
        dataset = target.dataset()
        added = check_columns(target, schema, dataset=dataset)
        if added:
            dataset.add_columns(added)  # all null: a table written before the column existed
            dataset = target.dataset()
        return dataset
    import lance

    dataset = lance.write_dataset(
        schema.empty_table(),
        target.dataset_uri,
        schema=schema,
        mode="overwrite" if target.exists() else "create",
        storage_options=target.lake.lance_options(),
    )
    target.open().set_unenforced_primary_key(primary_key)
    return dataset


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0


def upsert(rows: pa.Table, target: TableRef, schema: pa.Schema, key: str) -> UpsertCounts:
    """Insert rows whose key is new and replace rows whose key exists, in one commit."""
    if rows.num_rows == 0:
        return UpsertCounts()
    data = rows.select(schema.names).cast(schema.remove_metadata())
    with redacted_errors(target.lake.storage):
        result = (
            target.open()
            .merge_insert(key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )
    return UpsertCounts(inserted=result.num_inserted_rows, updated=result.num_updated_rows)


def delete_keys(target: TableRef, key: str, keys: list[str]) -> int:
    """Delete the rows with these keys (found through the key's scalar index); returns how many."""
    deleted = 0
    for start in range(0, len(keys), DELETE_CHUNK):
        chunk = keys[start : start + DELETE_CHUNK]
        quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in chunk)
        dataset = target.dataset()
        before = dataset.count_rows()
        dataset.delete(f"{key} IN ({quoted})")
        deleted += before - target.dataset().count_rows()
    return deleted


# Scalar indexes that keep a run's cost following the new data: merge_insert finds a batch's keys
# through the id index instead of joining the whole key column, the incremental decision looks up
# the ids it read, the rows of one shard are found through the source file's bitmap, and the check
# that a version holds one model's vectors (operators/table_meta.py) counts through the model's.
KEY_INDEXES = {"id": "BTREE", "source_file": "BITMAP", "model": "BITMAP", "doc_id": "BTREE"}  # doc_id: passage tables
MAX_INDEX_SEGMENTS = 16  # delta segments (one per run that wrote) before they are merged into one


def refresh_indexes(target: TableRef, indexes: dict[str, str] = KEY_INDEXES) -> None:
    """Create the key indexes the table lacks, and index rows written since (a delta segment, whose
    cost follows the new rows; the segments are merged once there are many)."""
    dataset = target.dataset()
    if dataset.count_rows() == 0:
        return
    existing = {d.field_names[0]: d for d in dataset.describe_indices() if len(d.field_names) == 1}
    names = []
    for column, kind in indexes.items():
        if column not in dataset.schema.names:
            continue
        if column not in existing:
            dataset.create_scalar_index(column, kind)
            dataset = target.dataset()
        else:
            names.append(existing[column])
    stale = [d.name for d in names if dataset.stats.index_stats(d.name).get("num_unindexed_rows", 0)]
    if stale:
        merge = max(len(d.segments) for d in names) >= MAX_INDEX_SEGMENTS
        dataset.optimize.optimize_indices(index_names=stale, num_indices_to_merge=None if merge else 0)
