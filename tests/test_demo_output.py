"""`make demo` as a newcomer sees it (issue 22): the demo's commands, run as the Makefile runs them (a fresh
process that starts its own Ray), on a slice of the sample corpus. What they write to stderr holds progress
and nothing at WARNING or ERROR level, from Python, Ray or its C++ core, and no Python warning; `search`
prints each hit with its kept title."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
QUERY = "fast compression library for large files"  # the Makefile's DEMO_QUERY
ROWS = 300  # two encoder batches: one per actor

pytestmark = pytest.mark.ray

# A log record at WARNING or above (ours, Ray's Python loggers), a native Ray line at W/E/F ("[date time E pid
# tid] file.cc:..."), a Python warning ("...: UserWarning: ..."), a traceback.
NOT_PROGRESS = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^\[[^\]]* [WEF] \d+ \d+\]|\w+Warning\b|Traceback")


def embedlake(*argv: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONWARNINGS", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOT_PROGRESS.search(line)]


def test_demo_commands_print_progress_a_sentence_and_titled_hits(sample_dir, tmp_path):
    shard = pq.read_table(sample_dir / "part-00000.parquet").slice(0, ROWS)
    (tmp_path / "input").mkdir()
    pq.write_table(shard, tmp_path / "input" / "part-00000.parquet")
    lake = str(tmp_path / "lake")

    embed = embedlake("embed", str(tmp_path / "input"), lake, "--config", str(REPO / "conf" / "demo.yaml"))
    assert embed.returncode == 0, embed.stderr[-3000:]
    assert noise(embed.stderr) == [], embed.stderr[-5000:]
    assert embed.stdout.strip().splitlines() == [embed.stdout.strip()]  # one sentence
    assert embed.stdout.startswith(f"Embedded {ROWS} rows in ") and "nothing quarantined" in embed.stdout
    assert f"embed: {ROWS}/{ROWS} encoded (100%), {ROWS} committed (" in embed.stderr  # the last progress line

    search = embedlake("search", lake, "--table", "docs", "--query", QUERY, "--k", "3")
    assert search.returncode == 0, search.stderr[-3000:]
    assert noise(search.stderr) == [], search.stderr[-5000:]
    titles = dict(zip(shard.column("id").to_pylist(), shard.column("title").to_pylist(), strict=True))
    hits = search.stdout.strip().splitlines()
    assert len(hits) == 3
    for rank, line in enumerate(hits, 1):
        shown_rank, score, hit_id, title = line.split(maxsplit=3)
        assert (int(shown_rank), len(score.split(".")[1])) == (rank, 3)
        assert title == " ".join(titles[hit_id].split())  # the kept title, as the table keeps it
