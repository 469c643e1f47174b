"""What a person reads: the sentence that ends `embed`, and `search`'s aligned hits with the kept title
(issue 22). No Ray, no model: the formatting and the kept-column lookup on a small table."""

from __future__ import annotations

import argparse
import os

import lancedb
import pyarrow as pa
import pytest

from pipelines.commands import embed as embed_command
from pipelines.search import SearchJob, format_hits, kept_text

SUMMARY = {"rows_written": 2714, "rows_unchanged": 0, "rows_skipped": 0, "rows_quarantined": 0,
           "files_quarantined": 0, "seconds": 41.234, "docs_per_s": 65.8, "table": "docs",
           "quarantine_table": "docs_quarantine", "uri": "demo_lake"}


def test_embed_ends_with_one_sentence():
    text = embed_command.describe(SUMMARY, argparse.Namespace())
    assert "\n" not in text
    assert text.startswith("Embedded 2714 rows in 41.2 s (65.8 docs/s) into table 'docs' in demo_lake")
    assert "nothing quarantined" in text


def test_embed_sentence_says_where_quarantined_rows_are():
    text = embed_command.describe({**SUMMARY, "rows_quarantined": 3, "rows_unchanged": 5}, argparse.Namespace())
    assert "5 rows were already up to date" in text
    assert "3 rows and 0 files quarantined" in text and "'docs_quarantine'" in text


def test_search_hits_are_ranked_aligned_and_titled():
    hits = [{"id": "astcenc", "score": 0.54412}, {"id": "zstd-long-name", "score": 0.5}]
    lines = format_hits(hits, {"astcenc": "ASTC texture codec", "zstd-long-name": "x" * 200}).splitlines()
    assert lines[0] == "  1  0.544  astcenc         ASTC texture codec"
    assert lines[1].startswith("  2  0.500  zstd-long-name  xxx") and lines[1].endswith("…")
    assert format_hits([], {}) == "no rows matched"


def test_kept_text_reads_the_first_kept_string_column(tmp_path):
    rows = pa.table({"id": ["a", "b'q", "c"], "text_hash": ["h"] * 3, "model": ["m"] * 3,
                     "source_file": ["f"] * 3,
                     "dense": pa.array([[1.0, 0.0]] * 3, pa.list_(pa.float32(), 2)),
                     "title": ["Alpha  title", "Quoted", "Gamma"], "section": ["s1", "s2", "s3"]})
    lancedb.connect(str(tmp_path)).create_table("docs", rows)
    shown = kept_text(SearchJob(uri=str(tmp_path), query="q"), ["a", "b'q"])
    assert shown == {"a": "Alpha title", "b'q": "Quoted"}


def test_ray_token_auth_notice_is_dropped_unless_verbose():
    import logging

    from pipelines.ray_runtime import quiet_ray_notices

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    quiet_ray_notices()
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    records, root = Records(), logging.getLogger()
    level = root.level
    logger.addHandler(records)  # Ray's loggers do not propagate to the root's handlers
    try:
        root.setLevel(logging.INFO)
        logger.warning("Token authentication is enabled for this Ray cluster.")
        logger.warning("something else")
        assert records.messages == ["something else"]
        root.setLevel(logging.DEBUG)  # --verbose keeps every notice
        logger.warning("Token authentication is enabled for this Ray cluster.")
        assert len(records.messages) == 2
    finally:
        root.setLevel(level)
        logger.removeHandler(records)


def test_progress_counts_encoded_and_committed_rows_with_a_rate_and_eta():
    from pipelines.embed_progress import ProgressView

    view = ProgressView(total=1000, started=100.0)
    view.update(0, 110.0)
    assert view.line(0, 0, 110.0) == "embed: 1,000 rows to read; starting encoders (0:10)"
    view.update(200, 140.0)  # the first batch, after the model loaded: no rate yet
    assert view.line(200, 0, 141.0).endswith("200/1,000 encoded (20%), 0 committed; measuring the rate (0:41)")
    view.update(400, 150.0)  # 200 rows in 10 s: 20 rows/s, 600 rows left -> 30 s, 2 s of them gone by
    assert view.line(400, 200, 152.0) == "embed: 400/1,000 encoded (40%), 200 committed; 20.0 rows/s, ETA 0:28 (0:52)"
    view.update(1000, 180.0)
    assert view.line(1000, 600, 181.0).endswith("committing the last rows (1:21)")
    assert view.line(1000, 1000, 182.0) == "embed: 1,000/1,000 encoded (100%), 1,000 committed (1:22)"


def test_stderr_filter_drops_only_the_named_native_lines():
    import os
    import threading

    from pipelines.stderr_filter import QUIET_STDERR_LINES, _pump_stderr

    source_read, source_write = os.pipe()
    out_read, out_write = os.pipe()
    pump = threading.Thread(target=_pump_stderr, args=(source_read, out_write, QUIET_STDERR_LINES))
    pump.start()
    noise = b"[2026-11-29 01:25:13,144 E 13015 13015] core_worker.cc:2465: Actor with class name: 'MapWorker' and " \
            b"ID: '87c7' has constructor arguments in the object store and max_restarts > 0. If the arguments ...\n"
    os.write(source_write, b"progress 1\r")  # a partial line is passed on at once
    os.write(source_write, noise[:40])  # a native line split across writes waits for its end
    os.write(source_write, noise[40:] + b"[2026-11-29 01:25:14 E 1 1] raylet_client.cc:1: a real error\nend")
    os.close(source_write)
    pump.join(timeout=5)
    os.close(out_write)
    with os.fdopen(out_read, "rb") as out:
        assert out.read() == b"progress 1\r[2026-11-29 01:25:14 E 1 1] raylet_client.cc:1: a real error\nend"


def test_cli_and_embed_imports_load_no_lance():
    """Importing the CLI and the embed job loads neither lance nor lancedb: the first table opened does, so
    `--help` and a usage error stay cheap."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pipelines.cli import parse_args; parse_args(['embed', 'in', 'out']); "
            "import pipelines.embed, pipelines.embed_progress; "
            "print(sorted(m for m in ('lance', 'lancedb') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


FORK_PROBE = """
import logging, subprocess, sys, tempfile
logging.getLogger().setLevel(logging.DEBUG)  # as --verbose: nothing of Ray's start is silenced
import lancedb, pyarrow as pa
lancedb.connect(tempfile.mkdtemp()).create_table("t", pa.table({"a": [1, 2]}))  # lance and lancedb loaded
import ray
from pipelines.ray_runtime import _LAUNCHED, start_ray, stop_ray
assert start_ray(None, num_cpus=1, object_store_memory=80 * 1024**2)
session = ray._private.worker.global_worker.node.session_name
print(ray.get(ray.remote(lambda: 41 + 1).remote()), flush=True)
launcher = _LAUNCHED["process"]
stop_ray()
left = subprocess.run(["pgrep", "-f", session], capture_output=True, text=True).stdout.split()
print("launcher", launcher.poll() is not None, "left", left, flush=True)
"""


@pytest.mark.ray
def test_local_ray_starts_without_forking_lance():
    """A driver that has opened a table starts its local Ray through pipelines/ray_launcher.py, so no process
    runs lance's or lancedb's at-fork hooks (no "not fork-safe" / "fork support is experimental" warning even
    with nothing silenced), and stop_ray leaves no process of that Ray behind."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-W", "always", "-c", FORK_PROBE],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["42", "launcher True left []"], done.stdout
    assert "fork" not in done.stderr.lower(), [line for line in done.stderr.splitlines() if "fork" in line.lower()]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="/proc: Linux")
def test_kill_session_ends_every_process_of_the_launchers_session():
    """What a local Ray leaves when a worker outlives its raylet (a Ray Train controller did, reparented to init)
    is ended with the launcher's session, and nothing outside it."""
    import subprocess
    import sys
    import time

    from pipelines.ray_launcher import kill_session

    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '300']); "
                               "time.sleep(300)"], start_new_session=True)
    outsider = subprocess.Popen(["sleep", "300"])
    time.sleep(1.0)
    try:
        assert kill_session(leader.pid) == 2  # the leader and its child
        assert leader.wait(timeout=10) == -9
        assert outsider.poll() is None
    finally:
        outsider.kill()
        outsider.wait()
