"""`<T>_runs`: one row per run of a job on a table, so every change to a table can be traced.

A row is written as "running" when the run starts and replaced with its outcome when it ends, so a
run killed half-way still leaves a trace. Commands and configs are stored with secrets removed.
"""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata

import pyarrow as pa

from operators.errors import one_line
from operators.schema import RUN_ID
from operators.sinks.lance_sink import ensure_table, upsert
from operators.storage import redact_argv, redact_config
from operators.tables import Lake, TableRef

RUNS_SUFFIX = "_runs"
PACKAGES = ("embedlake", "torch", "transformers", "ray", "pylance", "lancedb", "pyarrow")

RUNS_SCHEMA = pa.schema([
    pa.field(RUN_ID, pa.string(), nullable=False),
    pa.field("job", pa.string()),
    pa.field("status", pa.string()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("command", pa.string()),
    pa.field("config", pa.string()),
    pa.field("versions", pa.string()),
    pa.field("model", pa.string()),
    pa.field("counts", pa.string()),
    pa.field("error", pa.string()),
])


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class RunLog:
    """The run-log row of one run, written at start and at the end."""

    target: TableRef
    job: str
    command: list[str]
    config: dict
    model: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def for_table(cls, lake: Lake, table: str, **kwargs) -> RunLog:
        target = lake.table(f"{table}{RUNS_SUFFIX}")
        ensure_table(target, RUNS_SCHEMA, primary_key=RUN_ID)
        return cls(target=target, **kwargs)

    def start(self) -> None:
        self._write("running", {}, None, None)

    def finish(self, counts: dict, error: str | None = None) -> None:
        self._write("failed" if error else "succeeded", counts, error, datetime.now(UTC))

    def record(self, action: Callable[[], dict], storage: Mapping | None = None) -> dict:
        """Run `action` as this run: logged as running, then with its result or its error (one line)."""
        self.start()
        try:
            result = action()
        except BaseException as error:
            self.finish({}, error=one_line(error, 1000, storage))
            raise
        self.finish(result)
        return result

    def _write(self, status: str, counts: dict, error: str | None, finished_at: datetime | None) -> None:
        row = {
            RUN_ID: self.run_id,
            "job": self.job,
            "status": status,
            "started_at": self.started_at,
            "finished_at": finished_at,
            "command": json.dumps(redact_argv(self.command)),
            "config": json.dumps(redact_config(self.config), default=str),
            "versions": json.dumps(package_versions()),
            "model": self.model,
            "counts": json.dumps(counts, default=str),
            "error": error,
        }
        upsert(pa.Table.from_pylist([row], schema=RUNS_SCHEMA), self.target, RUNS_SCHEMA, RUN_ID)


def read_runs(lake: Lake, table: str, job: str | None = None) -> list[dict]:
    """The run log of `table`, oldest first (an empty list for a table without one); `job` keeps one kind.
    `counts` is decoded: a finished run's JSON summary."""
    target = lake.table(f"{table}{RUNS_SUFFIX}")
    if not target.exists():
        return []
    columns = [RUN_ID, "job", "status", "started_at", "finished_at", "model", "counts", "error"]
    rows = target.dataset().to_table(columns=columns).to_pylist()
    rows = [row for row in rows if job is None or row["job"] == job]
    for row in rows:
        row["counts"] = json.loads(row["counts"]) if row["counts"] else {}
    return sorted(rows, key=lambda row: row["started_at"])
