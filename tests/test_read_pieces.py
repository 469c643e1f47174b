"""Big shards are read as several pieces of row groups, so that they can feed several encoder actors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from operators.sources import SOURCE_COL, TEXT_COL, ShardReader, find_shards, scan_input


def write_lake(folder, rows: int, row_group_size: int) -> None:
    folder.mkdir()
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"text {i}" for i in range(rows)]})
    pq.write_table(table, folder / "big.parquet", row_group_size=row_group_size)
    pq.write_table(table.slice(0, 5).set_column(0, "id", pa.array([f"s{i}" for i in range(5)])),
                   folder / "small.parquet")


def test_pieces_cover_every_row_once_with_file_row_numbers(tmp_path):
    write_lake(tmp_path / "lake", rows=1000, row_group_size=100)
    scan = scan_input(find_shards(str(tmp_path / "lake")), ["id", "text"], "id")
    pieces = scan.pieces(rows_per_piece=250)
    big = [groups for path, groups in pieces if path.endswith("big.parquet")]
    assert big == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [groups for path, groups in pieces if path.endswith("small.parquet")] == [[0]]

    reader = ShardReader("id", "text", rows_per_batch=64)
    whole = pa.concat_tables(table for path in scan.files for table in reader.read(path))
    parts = pa.concat_tables(table for path, groups in pieces for table in reader.read(path, groups))
    assert parts.num_rows == whole.num_rows == 1005
    assert sorted(parts.column(SOURCE_COL).to_pylist()) == sorted(whole.column(SOURCE_COL).to_pylist())
    by_source = dict(zip(parts.column(SOURCE_COL).to_pylist(), parts.column(TEXT_COL).to_pylist(), strict=True))
    big_path = next(path for path in scan.files if path.endswith("big.parquet"))
    assert by_source[f"{big_path}#734"] == "text 734"


def test_a_file_without_known_row_groups_is_one_piece_read_whole(tmp_path):
    write_lake(tmp_path / "lake", rows=10, row_group_size=4)
    scan = scan_input(find_shards(str(tmp_path / "lake")), ["id", "text"], "id")
    scan.row_groups.clear()
    assert scan.pieces(rows_per_piece=1) == [(path, None) for path in scan.files]
