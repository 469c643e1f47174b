"""Running `embedlake` inside the test process as a user runs it, and reading what it printed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pipelines.cli import main

REPO = Path(__file__).resolve().parent.parent


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


def cli_error(*argv: str, alone: bool = False, status: int = 1) -> str:
    """The reason a command that must fail gives: exit status 1 (a run-time error; 2 for a usage error), no
    traceback, and a last line `embedlake: error: ...` on stderr (the only line there with `alone`; progress
    may come before it)."""
    code, _, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert code == status and lines and lines[-1].startswith("embedlake: error: "), (code, err[-3000:])
    assert "Traceback" not in err and (len(lines) == 1 or not alone), err[-3000:]
    return lines[-1]


def sigkill_cli_when(argv: list[str], ready: Callable[[], bool], timeout: float, waiting_for: str) -> None:
    """Run `embedlake ARGV...` in a process group of its own and SIGKILL the whole group (driver, its Ray
    daemons and workers) as soon as `ready()` holds; fail if the run ends or `timeout` s pass first."""
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before {waiting_for}"
            assert time.time() < deadline, f"still waiting for {waiting_for} after {timeout} s"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        for leftover in process_group(proc.pid):
            with contextlib.suppress(Exception):
                leftover.kill()


def process_group(root_pid: int) -> list:
    """Whatever of a killed run's process group still lives."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == root_pid:
                found.append(proc)
    return found
