"""`embed --quantize int8,binary` end to end on the session's Ray: the quantised columns equal
sentence-transformers' `quantize_embeddings` of the stored float vectors with the table's ranges, the
ranges are calibrated once and kept by incremental runs, and `--recalibrate` re-quantises every row;
operator-level: re-quantising a table that gains `--quantize` later, without any encoding."""

from __future__ import annotations

import contextlib
import io
import json

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from operators.quantize import ranges_from_json, vector_matrix
from operators.schema import DENSE, ID, MODEL, SOURCE_FILE, TEXT_HASH, dense_type, embeddings_schema
from operators.stored_vectors import VectorStorage
from operators.table_meta import TableMeta, read_meta, with_meta
from operators.tables import Lake
from pipelines.calibrate import requested_storage, settle_existing
from pipelines.cli import main

QUANTISED = ["dense_int8", "dense_bin", "dense_64_int8", "dense_64_bin"]


def embed(*argv: str) -> dict:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["embed", *argv, "--no-progress", "--json", "--rows-per-batch", "32", "--actors", "1"])
    assert code == 0
    return json.loads(stdout.getvalue().strip().splitlines()[-1])


def search(output: str, *argv: str) -> list[dict]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["search", output, "--query", "compression library", "--json", *argv])
    assert code == 0
    return json.loads(stdout.getvalue().strip().splitlines()[-1])


def check_codes(output: str) -> dict[str, np.ndarray]:
    """Every stored row's codes are quantize_embeddings of its stored float vector with the table's ranges."""
    dataset = lance.dataset(f"{output}/docs.lance")
    ranges = ranges_from_json(read_meta(dataset.schema).int8_ranges)
    rows = dataset.to_table()
    for column in (DENSE, "dense_64"):
        floats = vector_matrix(rows.column(column))
        np.testing.assert_array_equal(vector_matrix(rows.column(f"{column}_int8"), np.int8),
                                      quantize_embeddings(floats, precision="int8", ranges=ranges[column]))
        np.testing.assert_array_equal(vector_matrix(rows.column(f"{column}_bin"), np.uint8),
                                      quantize_embeddings(floats, precision="ubinary"))
    return ranges


@pytest.mark.ray
def test_quantised_columns_calibrated_once_kept_incrementally_and_recalibrated(ray_session, sample_dir, tmp_path):
    corpus = ds.dataset(str(sample_dir)).to_table(columns=["id", "text"]).slice(300, 60)
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    pq.write_table(corpus.slice(0, 30), lake / "a.parquet")
    first = embed(str(lake), output, "--dims", "64", "--quantize", "int8,binary", "--calibration-rows", "20")
    assert first["rows_written"] == 30
    schema = lance.dataset(f"{output}/docs.lance").schema
    assert schema.field("dense_int8").type == pa.list_(pa.int8(), 384)
    assert schema.field("dense_bin").type == pa.list_(pa.uint8(), 48)
    assert schema.field("dense_64_bin").type == pa.list_(pa.uint8(), 8)
    assert first["bytes_per_doc"]["dense_bin"] == 48 and first["bytes_per_doc"]["dense"] == 1536
    ranges = check_codes(output)
    assert read_meta(schema).quantize == ["int8", "binary"]

    pq.write_table(corpus.slice(30, 30), lake / "b.parquet")
    second = embed(str(lake), output, "--dims", "64")  # the table's quantisation applies without repeating it
    assert (second["rows_written"], second["rows_unchanged"] + second["rows_skipped"]) == (30, 30)
    kept = check_codes(output)
    for column, value in ranges.items():
        np.testing.assert_array_equal(kept[column], value)  # calibrated once: new rows use the same ranges

    version = lance.dataset(f"{output}/docs.lance").version
    third = embed(str(lake), output, "--dims", "64", "--recalibrate", "--calibration-rows", "60")
    assert (third["rows_written"], third["rows_unchanged"] + third["rows_skipped"]) == (0, 60)
    assert lance.dataset(f"{output}/docs.lance").version > version
    recalibrated = check_codes(output)  # every row re-quantised with the new ranges
    assert not np.array_equal(recalibrated[DENSE], ranges[DENSE])

    # what a user runs on it: Hamming search on a nested binary column, int8 search, the quantised funnels
    exact = search(output, "--column", "dense", "--exact")
    ids = set(corpus.column("id").to_pylist())
    for column in ("dense_64_bin", "dense_int8"):
        found = search(output, "--column", column)
        assert len(found) == 10 and {hit["id"] for hit in found} <= ids
        assert all(-1 <= hit["score"] <= 1 for hit in found)
    same_hits(search(output, "--funnel", "dense_64_bin", "--rescore-multiplier", "6"), exact)  # 60 rows: all
    same_hits(search(output, "--funnel", "dense_bin", "--rescore-multiplier", "6", "--column", "dense_int8"),
              search(output, "--column", "dense_int8"))


def same_hits(found: list[dict], expected: list[dict]) -> None:
    assert [hit["id"] for hit in found] == [hit["id"] for hit in expected]
    np.testing.assert_allclose([hit["score"] for hit in found], [hit["score"] for hit in expected], atol=1e-5)


def test_a_table_gains_quantised_columns_from_its_stored_vectors(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fields = [pa.field(DENSE, dense_type(16))]
    meta = TableMeta(model="m", model_id="m:1", kind="mrl", outputs=[DENSE])
    schema = with_meta(embeddings_schema(fields), meta)
    rows = pa.table({ID: [f"d{i}" for i in range(50)], TEXT_HASH: ["h"] * 50, MODEL: ["m:1"] * 50,
                     SOURCE_FILE: ["a.parquet"] * 50,
                     DENSE: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16)}, schema=schema)
    lancedb.connect(str(tmp_path)).create_table("docs", rows)
    target = Lake(str(tmp_path)).table("docs")
    storage = requested_storage(["int8", "binary"], None, None, target, "m:1", overwrite=False, recalibrate=False)
    assert storage.uncalibrated(fields) == [DENSE]
    settled = settle_existing(target, storage, fields, "m:1", calibration_rows=50)
    table = lance.dataset(f"{tmp_path}/docs.lance")
    stored = read_meta(table.schema)
    assert stored.quantize == ["int8", "binary"] and stored.model_id == "m:1"  # other metadata kept
    ranges = ranges_from_json(stored.int8_ranges)[DENSE]
    np.testing.assert_array_equal(ranges, np.vstack([vectors.min(axis=0), vectors.max(axis=0)]))
    np.testing.assert_array_equal(settled.int8_ranges[DENSE], ranges)
    data = table.to_table()
    np.testing.assert_array_equal(vector_matrix(data.column("dense_int8"), np.int8),
                                  quantize_embeddings(vectors, precision="int8", ranges=ranges))
    np.testing.assert_array_equal(vector_matrix(data.column("dense_bin"), np.uint8), np.packbits(vectors > 0, axis=1))
    # settled: a second pass changes nothing
    version = table.version
    settle_existing(target, requested_storage([], None, None, target, "m:1", False, False), fields, "m:1", 50)
    assert lance.dataset(f"{tmp_path}/docs.lance").version == version
    # another model's table is left alone (that run re-embeds every row, calibrating from its input)
    assert requested_storage([], None, None, target, "m:2", False, False).int8_ranges == {}
    assert VectorStorage.from_meta(stored).quantize == ("int8", "binary")


@pytest.mark.ray
def test_bge_m3_colbert_stored_as_pooled_int8_is_searched_on_its_codes(ray_session, tiny_bge_m3_path, tmp_path):
    from test_search_bge_m3 import DOCS, IDS, QUERIES

    from operators.colbert_codec import flat_tokens
    from operators.encoders.base import EncoderSpec
    from operators.encoders.loader import load_encoder
    from operators.scoring import colbert_scores
    from operators.search.retriever import Retriever

    source, output = tmp_path / "source", str(tmp_path / "out")
    source.mkdir()
    pq.write_table(pa.table({"id": IDS, "text": DOCS}), source / "part-0.parquet")
    summary = embed(str(source), output, "--model", tiny_bge_m3_path, "--outputs", "dense,sparse,colbert",
                    "--colbert-precision", "int8", "--colbert-pool-factor", "2", "--quantize", "binary")
    dataset = lance.dataset(f"{output}/docs.lance")
    assert dataset.schema.field("colbert").type == pa.list_(pa.list_(pa.int8(), 32))
    assert dataset.schema.field("colbert_scale").type == pa.list_(pa.float32())
    assert dataset.schema.field("dense_bin").type == pa.list_(pa.uint8(), 4)
    meta = read_meta(dataset.schema)
    assert (meta.colbert_precision, meta.colbert_pool_factor, meta.quantize) == ("int8", 2.0, ["binary"])
    assert summary["bytes_per_doc"]["colbert_scale"] > 0
    rows = dataset.to_table()
    order = np.argsort(rows.column("id").to_pylist())
    encoder = load_encoder(EncoderSpec(model=tiny_bge_m3_path, outputs=["colbert"]))
    tokens = encoder.encode(DOCS, prompt_name="document").columns["colbert"].value_lengths().to_numpy()
    stored = rows.column("colbert").combine_chunks().take(order)
    np.testing.assert_array_equal(stored.value_lengths().to_numpy(), np.maximum(tokens // 2, 1))  # pooled
    flat, _ = flat_tokens(stored, rows.column("colbert_scale").combine_chunks().take(order))
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), 1.0, atol=0.02)  # unit cluster means, int8 codes
    retriever = Retriever(output, "docs", exact=True)
    for text in QUERIES:
        query = retriever.encode([text])[0]
        found = retriever.search(query, mode="colbert", k=5)
        expected = colbert_scores(query.colbert, rows.column("colbert"), rows.column("colbert_scale"))
        by_id = dict(zip(rows.column("id").to_pylist(), expected.tolist(), strict=True))
        assert found and all(abs(hit["score"] - by_id[hit["id"]]) < 1e-5 for hit in found)
        assert retriever.search(query, mode="hybrid", k=5)
