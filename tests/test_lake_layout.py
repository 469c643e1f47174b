"""Lake layouts on local disk: hive partitions kept from the path, globs, typed partition columns."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.exchange import kept_name
from operators.lake_layout import hive_partitions, hive_values, listing_base
from operators.schema import require_columns
from operators.sources import ShardReader, find_shards, plan_reads, read_schema


@pytest.fixture
def hive_lake(tmp_path):
    """lang=<code>/year=<n>/ folders; one file also carries a column that shadows nothing."""
    for lang, year, ids in (("en", 2025, [1, 2]), ("en", 2026, [3]), ("de", 2026, [4, 5, 6])):
        folder = tmp_path / f"lang={lang}" / f"year={year}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": ids, "text": [f"t{i}" for i in ids]}), folder / "part-0.parquet")
    nulls = tmp_path / "lang=pt%20BR" / "year=__HIVE_DEFAULT_PARTITION__"
    nulls.mkdir(parents=True)
    pq.write_table(pa.table({"id": [7], "text": ["t7"]}), nulls / "part-0.parquet")
    return tmp_path


def test_partition_columns_are_found_typed_and_added_to_the_schema(hive_lake):
    shards = find_shards(str(hive_lake))
    assert len(shards.files) == 4
    assert shards.partitions == pa.schema([("lang", pa.string()), ("year", pa.int64())])
    assert read_schema(shards).names == ["id", "text", "lang", "year"]
    assert plan_reads(shards, list(enumerate(shards.files)), ["id", "text"], 100).rows_in == 7


def test_reader_keeps_partition_columns_from_the_path(hive_lake):
    shards = find_shards(str(hive_lake))
    reader = ShardReader("id", "text", ["year", "lang"])
    rows = {}
    for path in shards.files:
        for batch in reader.read(path):
            for row in batch.select(["id", kept_name("lang"), kept_name("year")]).to_pylist():
                rows[row["id"]] = (row[kept_name("lang")], row[kept_name("year")])
    assert rows == {"1": ("en", "2025"), "2": ("en", "2025"), "3": ("en", "2026"),
                    "4": ("de", "2026"), "5": ("de", "2026"), "6": ("de", "2026"), "7": ("pt BR", None)}


def test_a_column_in_neither_files_nor_paths_is_reported_with_the_partition_columns(hive_lake):
    with pytest.raises(ValueError, match=r"no column 'region' \(columns found: id, text, lang, year\)"):
        require_columns(read_schema(find_shards(str(hive_lake))), ["id", "text", "region"], "input")


def test_glob_lists_from_its_base_and_skips_folders(hive_lake):
    shards = find_shards(f"{hive_lake}/lang=*/year=2026/*")
    assert sorted(p.split(str(hive_lake))[1] for p in shards.files) == [
        "/lang=de/year=2026/part-0.parquet", "/lang=en/year=2026/part-0.parquet"]
    assert shards.partitions.names == ["lang", "year"]
    with pytest.raises(ValueError, match="holds no Parquet files"):
        find_shards(f"{hive_lake}/lang=*")  # matches folders only


def test_layout_helpers():
    assert listing_base("bucket/lake/year=*/part-*.parquet") == "bucket/lake"
    assert listing_base("bucket/lake/*.parquet") == "bucket/lake"
    assert hive_values("s3://b/lake/a=1/b=x%3Dy/f.parquet") == {"a": "1", "b": "x=y"}
    assert hive_values("b/lake=old/a=1/f.parquet", base="b/lake=old") == {"a": "1"}
    assert hive_partitions(["l/a=01/f", "l/a=-2/f", "l/b=1.5/f"], "l") == pa.schema(
        [("a", pa.int64()), ("b", pa.string())])
