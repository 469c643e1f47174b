"""Runs that really die: the driver's whole process group SIGKILLed mid-run, an encoder actor killed.

Each must end, after a restart or on its own, with every input row in the table exactly once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lance
import psutil
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent


def make_lake(sample_dir, folder: Path, shards: int, rows: int) -> set[str]:
    table = ds.dataset(str(sample_dir)).to_table(columns=["id", "text"]).slice(400, shards * rows)
    folder.mkdir()
    for shard in range(shards):
        pq.write_table(table.slice(shard * rows, rows), folder / f"part-{shard}.parquet")
    return set(table.column("id").to_pylist())


def committed_ids(output: str) -> list[str]:
    try:
        return lance.dataset(f"{output}/docs.lance").to_table(columns=["id"]).column("id").to_pylist()
    except (ValueError, OSError):
        return []


def run_in_process(*argv: str) -> dict:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(list(argv)) == 0
    return json.loads(stdout.getvalue().strip().splitlines()[-1])


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
        while len(committed_ids(output)) < 20:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no commit within 300 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        for leftover in process_group(proc.pid):
            with contextlib.suppress(psutil.Error):
                leftover.kill()
    before = committed_ids(output)
    assert 20 <= len(before) < len(expected) and len(before) == len(set(before))

    summary = run_in_process(*argv)
    after = committed_ids(output)
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
            if pids and committed_ids(output):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_an_actor_after_first_commit, daemon=True)
    killer.start()
    summary = run_in_process("embed", str(lake), output, "--rows-per-batch", "10", "--rows-per-write", "10",
                             "--actors", "1", "--no-progress", "--json")
    killer.join(timeout=5)
    assert killed, "no encoder actor was killed (the run finished first)"
    assert sorted(committed_ids(output)) == sorted(expected)
    assert summary["rows_in"] == len(expected)
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]
