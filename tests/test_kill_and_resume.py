"""Runs that really die: the driver's whole process group SIGKILLed mid-run, an encoder actor killed.

Each must end, after a restart or on its own, with every input row in the table exactly once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.cli_runs import cli_result, sigkill_cli_when
from tests.sample_lakes import sample_rows, table_ids, write_shards

pytestmark = pytest.mark.ray


def make_lake(sample_dir, folder: Path, shards: int, rows: int) -> set[str]:
    table = sample_rows(sample_dir, 400, shards * rows)
    write_shards(table, folder, shards)
    return set(table.column("id").to_pylist())


def test_sigkilled_run_resumes_with_every_row_exactly_once(ray_session, sample_dir, tmp_path):
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    expected = make_lake(sample_dir, lake, shards=6, rows=20)
    argv = ["embed", str(lake), output, "--rows-per-batch", "10", "--rows-per-write", "10", "--actors", "1",
            "--no-progress", "--json"]
    sigkill_cli_when(argv, lambda: len(table_ids(output)) >= 20, 300, "20 rows were committed")
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
    expected = make_lake(sample_dir, lake, shards=6, rows=20)
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
