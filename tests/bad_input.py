"""Helpers for the bad-input tests: run the CLI in-process, snapshot a folder, write small inputs."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq

from tests import cli_runs


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def last_error(self) -> str:
        """The last stderr line (progress and log lines may come before it)."""
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""

    def one_line_error(self, code: int | None = None) -> str:
        """Assert a failure reported as one `embedlake:` line (no traceback), with `code`; return that line."""
        assert self.code == code if code is not None else self.code in (1, 2), (self.code, self.err[-2000:])
        assert self.last_error.startswith("embedlake: "), self.err[-2000:]
        assert "Traceback" not in self.err, self.err[-2000:]
        return self.last_error


def run_cli(*argv: str) -> Outcome:
    """`embedlake ARGV` in this process (tests/cli_runs.py); stdout and stderr captured."""
    out = io.StringIO()
    code, _, err = cli_runs.run_cli(*argv, stdout=out)
    return Outcome(code, out.getvalue(), err)


def snapshot(folder: str | Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: equal snapshots, nothing written."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            found[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


def write_lance(path: str | Path, rows: int = 20) -> None:
    """A small Lance table that is not ours (a victim a bad --table must never reach)."""
    lance.write_dataset(pa.table({"id": [str(i) for i in range(rows)], "value": list(range(rows))}), str(path))


def write_shard(path: str | Path, ids: list, texts: list, **columns) -> str:
    pq.write_table(pa.table({"id": ids, "text": texts, **columns}), str(path))
    return str(path)
