"""The real embed pipeline on the session's local Ray: shards in, LanceDB table out."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.cli_runs import cli_result, run_cli
from tests.sample_lakes import write_shards

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def sample_rows(sample_dir) -> pa.Table:
    return ds.dataset(str(sample_dir)).to_table().slice(0, 90)


@pytest.fixture(scope="module")
def lake(tmp_path_factory, sample_rows) -> str:
    """Three shards of real text plus one shard of rows that must be quarantined."""
    folder = write_shards(sample_rows, tmp_path_factory.mktemp("lake"), 3)
    bad = pa.table({
        "id": ["bad-null", "bad-empty", "bad-space", None],
        "text": [None, "", "  \t ", "text without id"],
        "title": ["t"] * 4,
        "section": ["s"] * 4,
    })
    pq.write_table(bad, folder / "part-9-bad.parquet")
    return str(folder)


@pytest.fixture(scope="module")
def embedded(ray_session, lake, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("out"))
    return output, cli_result(
        "embed", lake, output, "--table", "docs", "--dims", "128,64", "--keep-columns", "section",
        "--actors", "2", "--threads-per-actor", "1", "--rows-per-batch", "16", "--no-progress", "--json",
    )


def test_summary_accounts_for_every_row(embedded):
    _, summary = embedded
    assert summary["rows_in"] == 94
    assert summary["rows_written"] == 90 and summary["rows_quarantined"] == 4
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_unchanged"] + summary["rows_quarantined"]
    assert summary["encoder_actors"] == 2
    for key in ("seconds", "docs_per_s", "tokens_per_s", "table", "uri"):
        assert key in summary
    # where the run's wall time went (benchmarks/overhead.py): every step timed, none longer than the run
    stages = summary["stage_seconds"]
    assert set(stages) >= {"prepare", "ray_start", "plan", "to_first_read", "first_read_to_last_commit",
                           "after_last_commit", "manifest", "finish"}
    assert all(0 <= seconds <= summary["seconds"] + summary["finish_seconds"] for seconds in stages.values())


def test_every_row_lands_exactly_once_with_its_id(embedded, sample_rows):
    output, _ = embedded
    table = lancedb.connect(output).open_table("docs").to_arrow()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 90
    assert set(ids) == set(sample_rows.column("id").to_pylist())
    by_id = dict(zip(sample_rows.column("id").to_pylist(), sample_rows.column("section").to_pylist(), strict=True))
    assert all(by_id[i] == s for i, s in zip(ids, table.column("section").to_pylist(), strict=True))
    assert table.schema.field("dense").type == pa.list_(pa.float32(), 384)
    assert table.schema.field("dense_64").type == pa.list_(pa.float32(), 64)


def test_vectors_equal_sentence_transformers(embedded, sample_rows, minilm_path):
    from sentence_transformers import SentenceTransformer

    output, _ = embedded
    table = lancedb.connect(output).open_table("docs").to_arrow()
    texts = dict(zip(sample_rows.column("id").to_pylist(), sample_rows.column("text").to_pylist(), strict=True))
    ids = table.column("id").to_pylist()[:25]
    reference = SentenceTransformer(minilm_path, device="cpu").encode([texts[i] for i in ids],
                                                                       normalize_embeddings=True)
    dense = np.array(table.column("dense").to_pylist()[:25], dtype=np.float32)
    assert (dense * reference).sum(axis=1).min() >= 0.9999
    nested = np.array(table.column("dense_64").to_pylist()[:25], dtype=np.float32)
    truncated = reference[:, :64] / np.linalg.norm(reference[:, :64], axis=1, keepdims=True)
    assert (nested * truncated).sum(axis=1).min() >= 0.9999


def test_bad_rows_are_quarantined_with_reasons(embedded, lake):
    output, _ = embedded
    quarantine = lancedb.connect(output).open_table("docs_quarantine").to_arrow().to_pylist()
    reasons = {row["id"]: row["reason"] for row in quarantine}
    assert reasons == {
        "bad-null": "null text",
        "bad-empty": "empty text",
        "bad-space": "empty text",
        None: "null or empty id",
    }
    assert all(row["source"].startswith(f"{lake}/part-9-bad.parquet#") for row in quarantine)


def test_missing_column_fails_before_any_work(ray_session, lake, tmp_path):
    code, _, err = run_cli("embed", lake, str(tmp_path / "out"), "--text-column", "body", "--json")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("embedlake: error: input")
    assert "'body'" in err and "columns found: id, text, title, section" in err
    assert not (tmp_path / "out").exists()


def test_bge_m3_pipeline_writes_all_three_vector_types(ray_session, lake, tiny_bge_m3_path, tmp_path):
    from operators.encoders.base import EncoderSpec
    from operators.encoders.loader import load_encoder

    output = str(tmp_path / "m3")
    summary = cli_result("embed", lake, output, "--model", tiny_bge_m3_path, "--max-length", "256", "--actors", "1",
                         "--no-progress", "--json")
    assert (summary["rows_written"], summary["rows_quarantined"]) == (90, 4)
    assert set(summary["bytes_per_doc"]) == {"dense", "sparse", "colbert"}
    assert summary["bytes_per_doc"]["colbert"] > summary["bytes_per_doc"]["dense"]
    table = lancedb.connect(output).open_table("docs").to_arrow()
    assert {"dense", "sparse", "colbert"} <= set(table.column_names)
    first = table.slice(0, 1)
    text = ds.dataset(lake).to_table(filter=ds.field("id") == first.column("id")[0].as_py()).column("text")[0]
    direct = load_encoder(EncoderSpec(model=tiny_bge_m3_path, max_length=256, device="cpu")).encode([text.as_py()])
    assert np.allclose(first.column("dense").to_pylist()[0], direct.columns["dense"].to_pylist()[0], atol=1e-5)
    stored_sparse, direct_sparse = first.column("sparse").to_pylist()[0], direct.columns["sparse"].to_pylist()[0]
    assert stored_sparse["indices"] == direct_sparse["indices"]
    assert stored_sparse["values"] == pytest.approx(direct_sparse["values"], abs=1e-5)
    stored = np.array(first.column("colbert").to_pylist()[0], dtype=np.float32)
    expected = np.array(direct.columns["colbert"].to_pylist()[0], dtype=np.float32)
    assert stored.shape == expected.shape and np.allclose(stored, expected, atol=2e-3)


def test_progress_counts_travel_through_rays_key_value_store(ray_session):
    """Encoders and writers report to the run's counter from their own processes (no counter actor): each process
    keeps running totals under its own key, the driver sums the run's keys, and clearing leaves none."""
    import ray

    from pipelines.embed_progress import RowCounter

    counter = RowCounter("test-run")

    @ray.remote(num_cpus=0)
    def report(counter: RowCounter, encoded: int, committed: int) -> None:
        counter.add(encoded=encoded)
        counter.add(committed=committed)

    ray.get([report.remote(counter, 10, 4), report.remote(counter, 5, 5)])
    counter.add(encoded=1)  # the driver's own process counts too
    assert counter.counts() == (16, 9)
    assert RowCounter("another-run").counts() == (0, 0)
    counter.clear()
    assert counter.counts() == (0, 0)
