"""Finding shards and reading them into normalised batches, without Ray."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.exchange import ORDER_COL, REASON_COL, ROW_BITS, TEXT_COL, kept_name
from operators.schema import require_columns
from operators.sources import ShardReader, find_shards


@pytest.fixture
def lake(tmp_path):
    (tmp_path / "year=2026").mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), tmp_path / "year=2026" / "part-0.parquet")
    pq.write_table(pa.table({"id": [3], "text": ["c"]}), tmp_path / "part-1.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("not data")
    return tmp_path


def test_find_shards_in_folder_file_and_glob(lake):
    assert [p.rsplit("/", 1)[-1] for p in find_shards(str(lake)).files] == ["part-1.parquet", "part-0.parquet"]
    assert len(find_shards(f"file://{lake}/part-1.parquet").files) == 1
    assert len(find_shards(f"{lake}/*/*.parquet").files) == 1


def test_missing_input_and_empty_folder_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_shards(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no Parquet files"):
        find_shards(str(tmp_path))


def test_missing_column_names_the_columns_found():
    with pytest.raises(ValueError, match="no column 'body' \\(columns found: id, text\\)"):
        require_columns(pa.schema([("id", pa.int64()), ("text", pa.string())]), ["id", "body"], "input x")


def test_reader_casts_ids_records_provenance_and_flags_bad_text(tmp_path):
    path = tmp_path / "mixed.parquet"
    texts = pa.array([b"fine", b"\xff\xfe not utf-8", None], pa.binary())
    pq.write_table(pa.table({"id": [10, 11, 12], "text": texts, "lang": ["en", "en", "de"]}), path)
    (batch,) = list(ShardReader("id", "text", ["lang"]).read(str(path), file_index=3))
    assert batch.column("id").to_pylist() == ["10", "11", "12"]
    assert batch.column(TEXT_COL).to_pylist() == ["fine", None, None]
    assert batch.column(REASON_COL).to_pylist() == [None, "text is not valid UTF-8", "null text"]
    assert batch.column(ORDER_COL).to_pylist() == [(3 << ROW_BITS) + row for row in range(3)]
    assert batch.column(kept_name("lang")).to_pylist() == ["en", "en", "de"]


def test_reader_flags_non_string_text(tmp_path):
    path = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1, None]}), path)
    (batch,) = list(ShardReader("id", "text").read(str(path)))
    assert batch.column(REASON_COL).to_pylist() == ["text is not a string (int64)", "null text"]


def test_lake_source_counts_its_read_tasks_without_making_them():
    """The embed plan sizes its blocks from read_task_count(): one task per piece, one per vanished shard."""
    from operators.sources import Piece
    from pipelines.embed_source import LakeSource

    pieces = [Piece(0, "a.parquet", [0], 10), Piece(0, "a.parquet", [1], 10), Piece(1, "b.parquet", None, 5)]
    source = LakeSource(pieces, reader=None, schema=pa.schema([("id", pa.string())]),
                        files_to_probe=["a.parquet", "gone.parquet", "also-gone.parquet"])
    assert source.read_task_count() == len(source.get_read_tasks(1)) == 5
