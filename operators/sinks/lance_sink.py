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

import lance
import pyarrow as pa
import pyarrow.compute as pc

from operators.storage import redacted_errors
from operators.tables import TableRef

log = logging.getLogger(__name__)
DELETE_CHUNK = 2000  # ids per delete predicate


def ensure_table(
    target: TableRef, schema: pa.Schema, primary_key: str, overwrite: bool = False
) -> lance.LanceDataset:
    """Create the table empty with `schema` and its primary key (or replace it with `overwrite`);
    check that an existing table has the same columns."""
    if target.exists() and not overwrite:
        dataset = target.dataset()
        existing = {f.name: f.type for f in dataset.schema}
        wanted = {f.name: f.type for f in schema}
        if existing != wanted:
            diff = sorted(
                f"{name}: table has {existing.get(name)}, run writes {wanted.get(name)}"
                for name in set(existing) | set(wanted)
                if existing.get(name) != wanted.get(name)
            )
            msg = (
                f"table {target.name} at {target.uri} exists with other columns ({'; '.join(diff)}); "
                "write to another --table or pass --overwrite"
            )
            raise ValueError(msg)
        return dataset
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


def load_known_keys(target: TableRef, key: str, hash_column: str, model_column: str, model_id: str) -> pa.Table:
    """(key, hash) of every row the table holds for `model_id`: what an incremental run can skip."""
    if not target.exists():
        return pa.table({key: pa.array([], pa.string()), hash_column: pa.array([], pa.string())})
    quoted = model_id.replace("'", "''")
    return target.dataset().to_table(columns=[key, hash_column], filter=f"{model_column} = '{quoted}'")


def delete_keys_not_in(target: TableRef, key: str, keep: pa.Array) -> int:
    """Delete rows whose key is not in `keep` (ids that left the input); returns how many."""
    dataset = target.dataset()
    stored = dataset.to_table(columns=[key]).column(key).combine_chunks()
    gone = pc.filter(stored, pc.invert(pc.is_in(stored, value_set=keep))).to_pylist()
    for start in range(0, len(gone), DELETE_CHUNK):
        chunk = gone[start : start + DELETE_CHUNK]
        quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in chunk)
        target.dataset().delete(f"{key} IN ({quoted})")
    return len(gone)


def compact(target: TableRef, max_fragments: int = 64) -> None:
    """Merge the small fragments that batch-by-batch commits leave behind, once there are many."""
    dataset = target.dataset()
    if len(dataset.get_fragments()) > max_fragments:
        dataset.optimize.compact_files()
