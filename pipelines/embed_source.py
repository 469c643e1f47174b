"""The embed job's reading side as Ray Data datasources: the lake's shards and the table's keys.

`LakeSource` plans one read task per piece of row groups from the shards' Parquet footers (the
driver reads footers, never rows); each task reads its rows into key rows (operators/exchange.py)
and, when the run looks keys up instead of scanning the table, adds the table's key rows for the ids
it read (and, under --sync-deletes, for the shards it reads or that left the listing).
`TableKeysSource` scans the whole table's keys, fragment by fragment, for runs that read a large
part of the lake. Both emit the same schema, so the job shuffles them together by id.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from operators.incremental import TableKeys
from operators.schema import ID
from operators.sources import Piece, ShardReader


def _metadata(rows: int | None, files: list[str] | None = None) -> BlockMetadata:
    return BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None,
                         input_files=tuple(files) if files else None)


class LakeSource(Datasource):
    def __init__(self, pieces: list[Piece], reader: ShardReader, schema: pa.Schema,
                 keys: TableKeys | None = None, files_to_probe: list[str] | None = None) -> None:
        self.pieces = pieces
        self.reader = reader
        self.schema = schema
        self.keys = keys  # look up the table's keys for what is read (None: scanned apart, or no table)
        self.files_to_probe = set(files_to_probe or [])  # shards whose stored rows are looked up

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def read_task_count(self) -> int:
        """How many read tasks get_read_tasks makes (one per piece, one per vanished shard), without making them."""
        return len(self.pieces) + len(self.files_to_probe - {piece.path for piece in self.pieces})

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        tasks = []
        first_piece = {}
        for number, piece in enumerate(self.pieces):
            first_piece.setdefault(piece.path, number)
        for number, piece in enumerate(self.pieces):
            probe_file = piece.path in self.files_to_probe and first_piece[piece.path] == number
            tasks.append(ReadTask(self._read_fn(piece, probe_file), _metadata(piece.rows, [piece.path]),
                                  schema=self.schema))
        listed = {piece.path for piece in self.pieces}
        # shards that left the listing: stored rows only
        tasks.extend(ReadTask(self._stored_fn(path), _metadata(None), schema=self.schema)
                     for path in sorted(self.files_to_probe - listed))
        return tasks

    def _read_fn(self, piece: Piece, probe_file: bool):
        reader, keys = self.reader, self.keys

        def read() -> Iterator[pa.Table]:
            for rows in reader.read(piece.path, piece.row_groups, piece.file_index):
                yield rows
                if keys is not None:
                    yield keys.by_ids(rows.column(ID))
            if keys is not None and probe_file:
                yield keys.by_file(piece.path)

        return read

    def _stored_fn(self, path: str):
        keys = self.keys

        def read() -> Iterator[pa.Table]:
            if keys is not None:
                yield keys.by_file(path)

        return read


class TableKeysSource(Datasource):
    """Every key row of the table, a group of fragments per task."""

    def __init__(self, keys: TableKeys, rows_per_task: int) -> None:
        self.keys = keys
        self.rows_per_task = rows_per_task
        self._fragment_groups: list[tuple[list[int], int]] | None = None

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def _groups(self) -> list[tuple[list[int], int]]:
        """(fragment ids, rows) per task, listed once: the plan asks for the count, then Ray Data for the tasks."""
        if self._fragment_groups is None:
            groups: list[tuple[list[int], int]] = []
            current, rows = [], 0
            for fragment in self.keys.dataset().get_fragments():
                current.append(fragment.fragment_id)
                rows += fragment.count_rows()
                if rows >= self.rows_per_task:
                    groups.append((current, rows))
                    current, rows = [], 0
            if current:
                groups.append((current, rows))
            self._fragment_groups = groups
        return self._fragment_groups

    def read_task_count(self) -> int:
        return len(self._groups())

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        keys = self.keys
        return [ReadTask(lambda ids=ids: keys.by_fragments(ids), _metadata(rows), schema=keys.schema)
                for ids, rows in self._groups()]
