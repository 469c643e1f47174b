"""Lakes made of the sample corpus (data/sample/): some of its rows, written as Parquet shards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def sample_rows(sample_dir: Path | str, start: int, count: int,
                columns: Sequence[str] | None = ("id", "text")) -> pa.Table:
    """`count` rows of the sample corpus from row `start` (all columns with columns=None)."""
    table = ds.dataset(str(sample_dir)).to_table(columns=list(columns) if columns else None)
    return table.slice(start, count)


def write_shards(table: pa.Table, folder: Path | str, shards: int, name: str = "part-{shard}.parquet") -> Path:
    """The table as `shards` Parquet files of equal size (the last one takes the rest) under `folder`,
    each at `name` (which may hold sub-folders, e.g. "batch={shard}/part-0.parquet")."""
    folder = Path(folder)
    size = table.num_rows // shards
    for shard in range(shards):
        path = folder / name.format(shard=shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = table.slice(shard * size, size if shard < shards - 1 else table.num_rows - shard * size)
        pq.write_table(rows, path)
    return folder


def table_ids(output: str, table: str = "docs") -> list[str]:
    """The ids a run has committed to its table so far (none when the table is not there yet)."""
    import lance

    try:
        return lance.dataset(f"{output}/{table}.lance").to_table(columns=["id"]).column("id").to_pylist()
    except (ValueError, OSError):
        return []
