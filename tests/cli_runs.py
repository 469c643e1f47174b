"""Running `embedlake` inside the test process as a user runs it, and reading what it printed."""

from __future__ import annotations

import contextlib
import io
import json
from typing import NamedTuple

from pipelines.cli import main


class CliRun(NamedTuple):
    code: int
    result: object  # the --json result: the last line of stdout that is a JSON object or list, else None
    err: str


def last_json(out: str) -> object:
    """The last line that is a JSON object or list (Ray may print its own lines after the result)."""
    for line in reversed(out.strip().splitlines()):
        if line.startswith(("{", "[")):
            return json.loads(line)
    return None


def run_cli(*argv: str, stdout: io.StringIO | None = None, stderr: io.StringIO | None = None) -> CliRun:
    """Run `embedlake ARGV...` with stdout and stderr captured (into the streams given, if any)."""
    out = stdout if stdout is not None else io.StringIO()
    err = stderr if stderr is not None else io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return CliRun(code, last_json(out.getvalue()) if code == 0 else None, err.getvalue())


def cli_result(*argv: str) -> object:
    """The --json result of a command that must succeed."""
    code, result, err = run_cli(*argv)
    assert code == 0, err[-3000:]
    return result


def cli_error(*argv: str, alone: bool = False) -> str:
    """The reason a command that must fail at run time gives: exit status 1, no traceback, and a last line
    `embedlake: error: ...` on stderr (the only line there with `alone`; progress may come before it)."""
    code, _, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert code == 1 and lines and lines[-1].startswith("embedlake: error: "), (code, err[-3000:])
    assert "Traceback" not in err and (len(lines) == 1 or not alone), err[-3000:]
    return lines[-1]
