"""Runs that really die: the driver's whole process group SIGKILLed mid-run, an encoder actor killed.

Each must end, after a restart or on its own, with every input row in the table exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.cli_runs import cli_result
from tests.sample_lakes import sample_rows, table_ids, write_shards

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent


def make_lake(sample_dir, folder: Path, shards: int, rows: int) -> set[str]:
    table = sample_rows(sample_dir, 400, shards * rows)
    write_shards(table, folder, shards)
    return set(table.column("id").to_pylist())


def process_group(root_pid: int) -> list[psutil.Process]:
    """Whatever of the killed run's process group (driver, its Ray daemons and workers) still lives."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == root_pid:
                found.append(proc)
    return found


def test_sigkilled_run_resumes_with_every_row_exactly_once(ray_session, sample_dir, tmp_path):
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    expected = make_lake(sample_dir, lake, shards=6, rows=50)
    argv = ["embed", str(lake), output, "--rows-per-batch", "10", "--rows-per-write", "10", "--actors", "1",
            "--no-progress", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while len(table_ids(output)) < 20:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no commit within 300 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        for leftover in process_group(proc.pid):
            with contextlib.suppress(psutil.Error):
                leftover.kill()
    before = table_ids(output)
    assert 20 <= len(before) < len(expected) and len(before) == len(set(before))

    summary = cli_result(*argv)
    after = table_ids(output)
    assert sorted(after) == sorted(expected)
    assert summary["rows_unchanged"] >= len(before)
    assert summary["rows_written"] <= len(expected) - len(before)
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]


def encoder_actor_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "EmbedRows" in cmdline and "ray::" in cmdline:
            pids.append(proc.pid)
    return pids


def test_killed_encoder_actor_is_replaced_and_the_run_completes(ray_session, sample_dir, tmp_path):
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    expected = make_lake(sample_dir, lake, shards=6, rows=40)
    killed: list[int] = []

    def kill_an_actor_after_first_commit() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            pids = encoder_actor_pids()
            if pids and table_ids(output):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_an_actor_after_first_commit, daemon=True)
    killer.start()
    summary = cli_result("embed", str(lake), output, "--rows-per-batch", "10", "--rows-per-write", "10",
                             "--actors", "1", "--no-progress", "--json")
    killer.join(timeout=5)
    assert killed, "no encoder actor was killed (the run finished first)"
    assert sorted(table_ids(output)) == sorted(expected)
    assert summary["rows_in"] == len(expected)
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]
