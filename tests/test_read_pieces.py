"""Big shards are read as several pieces of row groups, so that they can feed several encoder actors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from operators.exchange import ORDER_COL, TEXT_COL, row_of
from operators.sources import ShardReader, find_shards, plan_reads


def write_lake(folder, rows: int, row_group_size: int) -> None:
    folder.mkdir()
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"text {i}" for i in range(rows)]})
    pq.write_table(table, folder / "big.parquet", row_group_size=row_group_size)
    pq.write_table(table.slice(0, 5).set_column(0, "id", pa.array([f"s{i}" for i in range(5)])),
                   folder / "small.parquet")


def test_pieces_cover_every_row_once_with_file_row_numbers(tmp_path):
    write_lake(tmp_path / "lake", rows=1000, row_group_size=100)
    shards = find_shards(str(tmp_path / "lake"))
    plan = plan_reads(shards, list(enumerate(shards.files)), ["id", "text"], rows_per_piece=250)
    big = [piece.row_groups for piece in plan.pieces if piece.path.endswith("big.parquet")]
    assert big == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [p.row_groups for p in plan.pieces if p.path.endswith("small.parquet")] == [[0]]
    assert plan.rows_in == 1005 and sum(p.rows for p in plan.pieces) == 1005

    reader = ShardReader("id", "text", rows_per_read=64)
    whole = pa.concat_tables(table for i, path in enumerate(shards.files) for table in reader.read(path, None, i))
    parts = pa.concat_tables(table for p in plan.pieces for table in reader.read(p.path, p.row_groups, p.file_index))
    assert parts.num_rows == whole.num_rows == 1005
    assert sorted(parts.column(ORDER_COL).to_pylist()) == sorted(whole.column(ORDER_COL).to_pylist())
    big_index = next(i for i, path in enumerate(shards.files) if path.endswith("big.parquet"))
    by_order = dict(zip(parts.column(ORDER_COL).to_pylist(), parts.column(TEXT_COL).to_pylist(), strict=True))
    assert by_order[(big_index << 40) + 734] == "text 734"
    assert row_of(pa.array([(big_index << 40) + 734])).to_pylist() == [734]


def test_a_bad_footer_fails_naming_the_shard_or_is_set_aside(tmp_path):
    write_lake(tmp_path / "lake", rows=10, row_group_size=4)
    (tmp_path / "lake" / "broken.parquet").write_bytes(b"PAR1 not parquet")
    shards = find_shards(str(tmp_path / "lake"))
    import pytest

    with pytest.raises(ValueError, match="broken.parquet"):
        plan_reads(shards, list(enumerate(shards.files)), ["id", "text"], rows_per_piece=4)
    plan = plan_reads(shards, list(enumerate(shards.files)), ["id", "text"], rows_per_piece=4, skip_bad_files=True)
    assert list(plan.bad_files) == [str(tmp_path / "lake" / "broken.parquet")]
    assert plan.rows_in == 15
