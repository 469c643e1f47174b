"""`<T>_runs`: one row per run of a job on a table, so every change to a table can be traced.

A row is written as "running" when the run starts and replaced with its outcome when it ends, so a
run killed half-way still leaves a trace. Commands and configs are stored with secrets removed.
"""

from __future__ import annotations

import json
import platform
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata

import pyarrow as pa

from operators.sinks.lance_sink import LanceTarget, ensure_table, upsert

RUN_ID = "run_id"
RUNS_SUFFIX = "_runs"
SECRET_WORDS = re.compile(r"(key|secret|token|password|passwd|credential|session)", re.IGNORECASE)
REDACTED = "***"
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


def redact(value: object) -> object:
    """Copy of a config with every value under a secret-looking key replaced by ***."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_WORDS.search(str(k)) and v else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """Command line with the value of any secret-looking option (or KEY=VALUE pair) replaced."""
    cleaned, hide_next = [], False
    for arg in argv:
        if hide_next:
            cleaned.append(REDACTED)
            hide_next = False
        elif arg.startswith("--") and SECRET_WORDS.search(arg):
            name, eq, _ = arg.partition("=")
            cleaned.append(f"{name}={REDACTED}" if eq else arg)
            hide_next = not eq
        elif "=" in arg and SECRET_WORDS.search(arg.split("=", 1)[0]):
            cleaned.append(f"{arg.split('=', 1)[0]}={REDACTED}")
        else:
            cleaned.append(arg)
    return cleaned


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

    target: LanceTarget
    job: str
    command: list[str]
    config: dict
    model: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def for_table(cls, uri: str, table: str, storage_options: dict, **kwargs) -> RunLog:
        target = LanceTarget(uri, f"{table}{RUNS_SUFFIX}", storage_options)
        ensure_table(target, RUNS_SCHEMA, primary_key=RUN_ID)
        return cls(target=target, **kwargs)

    def start(self) -> None:
        self._write("running", {}, None, None)

    def finish(self, counts: dict, error: str | None = None) -> None:
        self._write("failed" if error else "succeeded", counts, error, datetime.now(UTC))

    def _write(self, status: str, counts: dict, error: str | None, finished_at: datetime | None) -> None:
        row = {
            RUN_ID: self.run_id,
            "job": self.job,
            "status": status,
            "started_at": self.started_at,
            "finished_at": finished_at,
            "command": json.dumps(redact_argv(self.command)),
            "config": json.dumps(redact(self.config), default=str),
            "versions": json.dumps(package_versions()),
            "model": self.model,
            "counts": json.dumps(counts, default=str),
            "error": error,
        }
        upsert(pa.Table.from_pylist([row], schema=RUNS_SCHEMA), self.target, RUNS_SCHEMA, RUN_ID)
