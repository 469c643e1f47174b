"""Production runs on the session's local Ray: incremental re-embedding, bad input, the run log."""

from __future__ import annotations

import json

import lance
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.cli_runs import cli_result, run_cli

pytestmark = pytest.mark.ray


def embed(*argv: str) -> dict:
    return cli_result("embed", *argv, "--no-progress", "--json", "--rows-per-batch", "32")


def table_rows(output: str, table: str = "docs") -> dict[str, dict]:
    rows = lance.dataset(f"{output}/{table}.lance").to_table().to_pylist()
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate ids in the table"
    return {row["id"]: row for row in rows}


@pytest.fixture(scope="module")
def corpus(sample_dir) -> pa.Table:
    return ds.dataset(str(sample_dir)).to_table(columns=["id", "text"]).slice(200, 40)


def test_incremental_runs_skip_unchanged_replace_changed_and_sync_deletes(ray_session, corpus, tmp_path):
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    pq.write_table(corpus.slice(0, 20), lake / "a.parquet")
    pq.write_table(corpus.slice(20, 20), lake / "b.parquet")
    first = embed(str(lake), output)
    assert (first["rows_in"], first["rows_written"], first["rows_unchanged"]) == (40, 40, 0)
    before = table_rows(output)
    version = lance.dataset(f"{output}/docs.lance").version

    again = embed(str(lake), output)  # both shards unchanged since the last run: not opened at all
    assert (again["rows_written"], again["rows_skipped"], again["files_skipped"], again["tokens"]) == (0, 40, 2, 0)
    rescan = embed(str(lake), output, "--rescan")  # every row read and its text hash compared
    assert (rescan["rows_written"], rescan["rows_unchanged"], rescan["rows_skipped"], rescan["tokens"]) == (0, 40, 0, 0)
    assert lance.dataset(f"{output}/docs.lance").version == version  # nothing written at all

    texts = corpus.column("text").to_pylist()
    ids = corpus.column("id").to_pylist()
    changed = pa.table({"id": ids[:20], "text": ["A rewritten description of a tool."] + texts[1:20]})
    pq.write_table(changed, lake / "a.parquet")
    pq.write_table(pa.table({"id": ["new-1", "new-2"], "text": ["brand new text", "another new text"]}),
                   lake / "b.parquet")  # ids[20:40] leave the input
    third = embed(str(lake), output, "--sync-deletes")
    assert (third["rows_in"], third["rows_updated"], third["rows_inserted"]) == (22, 1, 2)
    assert (third["rows_unchanged"], third["rows_deleted"], third["rows_skipped"]) == (19, 20, 0)
    after = table_rows(output)
    assert set(after) == set(ids[:20]) | {"new-1", "new-2"}
    assert {row["source_file"] for row in after.values()} == {str(lake / "a.parquet"), str(lake / "b.parquet")}
    assert after[ids[0]]["text_hash"] != before[ids[0]]["text_hash"]
    assert not np.allclose(after[ids[0]]["dense"], before[ids[0]]["dense"])
    assert np.allclose(after[ids[1]]["dense"], before[ids[1]]["dense"])

    # a shard that leaves the lake takes its rows with it, found through the rows' source shard
    (lake / "b.parquet").unlink()
    fourth = embed(str(lake), output, "--sync-deletes")
    assert (fourth["rows_in"], fourth["rows_skipped"], fourth["rows_deleted"], fourth["rows_written"]) == (20, 20, 2, 0)
    assert set(table_rows(output)) == set(ids[:20])
    files = lance.dataset(f"{output}/docs_files.lance").to_table().column("path").to_pylist()
    assert files == [str(lake / "a.parquet")]


def test_hash_partitions_decide_as_one_partition_does(ray_session, corpus, tmp_path, monkeypatch):
    """A run of up to ROWS_PER_PARTITION rows gathers them in one block without a hash shuffle; a bigger one
    hash-partitions ids. Forced here to many partitions: duplicates across shards, unchanged rows and deletes
    come out as in one."""
    from pipelines import workers

    monkeypatch.setattr(workers, "ROWS_PER_PARTITION", 8)
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    pq.write_table(corpus.slice(0, 20), lake / "a.parquet")
    pq.write_table(corpus.slice(10, 20), lake / "b.parquet")  # ids 10-19 again: duplicates of a's
    first = embed(str(lake), output)
    assert (first["rows_in"], first["rows_written"], first["rows_quarantined"], first["duplicate_ids"]) == \
        (40, 30, 10, 10)
    ids = corpus.column("id").to_pylist()
    assert set(table_rows(output)) == set(ids[:30])
    assert {row["source_file"] for row in table_rows(output).values() if row["id"] in ids[10:20]} == \
        {str(lake / "a.parquet")}  # the first in input order is the one embedded
    pq.write_table(corpus.slice(20, 5), lake / "b.parquet")  # ids 25-29 leave the input
    again = embed(str(lake), output, "--rescan", "--sync-deletes")  # the table's keys scanned and shuffled too
    assert (again["rows_in"], again["rows_unchanged"], again["rows_written"], again["rows_deleted"]) == (25, 25, 0, 5)
    assert set(table_rows(output)) == set(ids[:25])


def test_bad_input_is_quarantined_with_reasons(ray_session, corpus, tmp_path):
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    texts = corpus.column("text").to_pylist()
    huge = "word " * 200_000  # 1 MB
    pq.write_table(pa.table({"id": ["d1", "d2", "d1", "long", "ok-1"],
                             "text": [texts[0], texts[1], texts[2], huge, texts[3]]}), lake / "a.parquet")
    # a shard whose text column is binary: one valid, one invalid UTF-8
    pq.write_table(pa.table({"id": ["bin-ok", "bin-bad", "d2"],
                             "text": pa.array([b"valid bytes", b"\xc3\x28 broken", b"dup in other shard"])}),
                   lake / "b.parquet")
    pq.write_table(pa.table({"id": [7, 8], "text": [1, 2]}), lake / "c-numbers.parquet")
    summary = embed(str(lake), output)
    assert summary["rows_in"] == 10
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]
    assert set(table_rows(output)) == {"d1", "d2", "long", "ok-1", "bin-ok"}
    assert table_rows(output)["d1"]["text_hash"] != table_rows(output)["d2"]["text_hash"]
    assert summary["rows_truncated"] == 1 and summary["duplicate_ids"] == 2
    quarantine = lance.dataset(f"{output}/docs_quarantine.lance").to_table().to_pylist()
    reasons = sorted((row["id"], row["reason"], row["source"].rsplit("/", 1)[-1]) for row in quarantine)
    assert reasons == [
        ("7", "text is not a string (int64)", "c-numbers.parquet#0"),
        ("8", "text is not a string (int64)", "c-numbers.parquet#1"),
        ("bin-bad", "text is not valid UTF-8", "b.parquet#1"),
        ("d1", "duplicate id", "a.parquet#2"),
        ("d2", "duplicate id", "b.parquet#2"),
    ]
    # the first occurrence of a duplicate id is the one embedded
    assert table_rows(output)["d1"]["text_hash"] == __import__("operators.schema").schema.text_hash(texts[0])

    runs = lance.dataset(f"{output}/docs_runs.lance").to_table().to_pylist()
    assert [run["status"] for run in runs] == ["succeeded"]
    counts = json.loads(runs[0]["counts"])
    assert counts["rows_quarantined"] == 5 and json.loads(runs[0]["command"])[0] == "embedlake"


def test_corrupt_shard_fails_naming_it_or_is_skipped(ray_session, corpus, tmp_path):
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    pq.write_table(corpus.slice(0, 5), lake / "good.parquet")
    (lake / "broken.parquet").write_bytes(b"PAR1 this is not parquet at all")
    code, _, err = run_cli("embed", str(lake), output, "--json")
    assert code == 1 and "broken.parquet" in err
    summary = embed(str(lake), output, "--skip-bad-files")
    assert (summary["rows_written"], summary["files_quarantined"]) == (5, 1)
    quarantine = lance.dataset(f"{output}/docs_quarantine.lance").to_table().to_pylist()
    assert len(quarantine) == 1 and quarantine[0]["source"].endswith("broken.parquet")
    assert quarantine[0]["reason"].startswith("unreadable shard")
