"""What a person reads: the sentence that ends `embed`, and `search`'s aligned hits with the kept title
(issue 22). No Ray, no model: the formatting and the kept-column lookup on a small table."""

from __future__ import annotations

import argparse

import lancedb
import pyarrow as pa

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
