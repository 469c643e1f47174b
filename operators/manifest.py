"""`<T>_files`: the shards a table's successful runs have read, so an unchanged shard is not opened.

One row per shard path: its size and ETag or modification time as the listing gave them
(sources.file_version), its rows, the model id and the run that read it. A shard whose path,
version and model match is skipped by the next run (its rows count as `rows_skipped`); `--rescan`
ignores the manifest. Rows are written only after a run has committed and accounted for every row,
so a killed run leaves the manifest as it was and the next run reads those shards again (their
committed rows are then unchanged). Its size grows with the number of shards, not rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from operators.sinks.lance_sink import ensure_table, upsert
from operators.tables import Lake

PATH = "path"
FILES_SUFFIX = "_files"

FILES_SCHEMA = pa.schema([
    pa.field(PATH, pa.string(), nullable=False),
    pa.field("version", pa.string()),
    pa.field("rows", pa.int64()),
    pa.field("model", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
])


@dataclass(frozen=True)
class Recorded:
    version: str
    rows: int
    model: str


class FileManifest:
    """The manifest of table `table`; created (or emptied, with `overwrite`) by `ensure`, which a run calls
    once its input has passed every check."""

    def __init__(self, lake: Lake, table: str) -> None:
        self.target = lake.table(f"{table}{FILES_SUFFIX}")

    def ensure(self, overwrite: bool = False) -> None:
        ensure_table(self.target, FILES_SCHEMA, primary_key=PATH, overwrite=overwrite)

    def load(self) -> dict[str, Recorded]:
        if not self.target.exists():
            return {}
        rows = self.target.dataset().to_table(columns=[PATH, "version", "rows", "model"]).to_pylist()
        return {row[PATH]: Recorded(row["version"], row["rows"], row["model"]) for row in rows}

    def record(self, files: dict[str, tuple[str, int]], model: str, run_id: str) -> None:
        """Shards read completely by a successful run: path -> (version, rows)."""
        if not files:
            return
        paths = list(files)
        now = datetime.now(UTC)
        table = pa.table({
            PATH: paths,
            "version": [files[p][0] for p in paths],
            "rows": pa.array([files[p][1] for p in paths], pa.int64()),
            "model": [model] * len(paths),
            "run_id": [run_id] * len(paths),
            "recorded_at": pa.array([now] * len(paths), FILES_SCHEMA.field("recorded_at").type),
        }, schema=FILES_SCHEMA)
        upsert(table, self.target, FILES_SCHEMA, PATH)

    def forget(self, paths: list[str]) -> None:
        """Drop shards whose rows a run removed (they left the input)."""
        if not paths:
            return
        dataset = self.target.dataset()
        gone = pa.array(paths, pa.string())
        kept = dataset.to_table(columns=[PATH]).column(PATH)
        if pc.any(pc.is_in(kept, value_set=gone)).as_py():
            quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            dataset.delete(f"{PATH} IN ({quoted})")


def unchanged_files(versions: dict[str, str], recorded: dict[str, Recorded], model: str) -> dict[str, int]:
    """Listed shards the manifest has with the same version for the same model: path -> rows."""
    return {path: entry.rows for path, version in versions.items()
            if (entry := recorded.get(path)) is not None and entry.version == version and entry.model == model}
