"""Quantised dense vectors and compressed ColBERT, against the libraries that define them:
sentence-transformers' `quantize_embeddings` (int8 with ranges, ubinary) and `HierarchicalTokenPooling`,
and brute force for Hamming and int8 search."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch
from sentence_transformers.multi_vector_encoder.modules.token_pooling import HierarchicalTokenPooling
from sentence_transformers.util.quantization import (
    _dequantize_embeddings,
    _get_quantization_ranges,
    quantize_embeddings,
)

from operators import colbert_codec, quantize, scoring
from operators.search.dense import exact_topn, funnel_topn, scan_topn
from operators.search.quantized import binary_topn, int8_topn, searcher
from operators.search.store import TableStore


def unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(500, 40)) * np.linspace(2.0, 0.3, 40) + np.linspace(-0.5, 0.5, 40)
    return unit(raw)


def test_int8_and_binary_equal_sentence_transformers(vectors):
    calibration, corpus = vectors[:200], vectors[200:]
    ranges = quantize.calibrate_ranges(calibration)
    np.testing.assert_array_equal(ranges, _get_quantization_ranges(corpus, "int8", calibration))
    ours = quantize.quantize_int8(corpus, ranges)
    theirs = quantize_embeddings(corpus, precision="int8", ranges=ranges)
    assert ours.dtype == np.int8
    np.testing.assert_array_equal(ours, theirs)
    # values outside the calibrated ranges are clipped, a constant dimension has step 1: as theirs
    ranges[:, 5] = 0.1
    wide = corpus * 3
    np.testing.assert_array_equal(quantize.quantize_int8(wide, ranges),
                                  quantize_embeddings(wide, precision="int8", ranges=ranges))
    bits = quantize.pack_bits(corpus)
    np.testing.assert_array_equal(bits, quantize_embeddings(corpus, precision="ubinary"))
    np.testing.assert_array_equal(bits, np.packbits(corpus > 0, axis=-1))
    assert bits.shape == (300, 5)
    odd = corpus[:, :13]  # not a multiple of 8: the last byte is padded with zero bits
    np.testing.assert_array_equal(quantize.pack_bits(odd), quantize_embeddings(odd, precision="ubinary"))


def test_int8_scores_are_dot_products_with_dequantised_rows(vectors):
    ranges = quantize.calibrate_ranges(vectors)
    codes = quantize.quantize_int8(vectors, ranges)
    queries = vectors[:6] * 0.9
    expected = queries @ _dequantize_embeddings(codes, "int8", ranges).T
    np.testing.assert_allclose(quantize.int8_scores(codes, queries, ranges), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(quantize.dequantize_int8(codes, ranges), _dequantize_embeddings(codes, "int8", ranges),
                               atol=1e-6)
    # the bucket's low end is within one step of the value
    step = (ranges[1] - ranges[0]) / 255
    assert (np.abs(quantize.dequantize_int8(codes, ranges) - vectors) <= step * 1.0001).all()


def test_hamming_and_int8_topn_equal_brute_force(vectors):
    bits = quantize.pack_bits(vectors)
    queries = vectors[10:15] + 0.05
    distances = quantize.hamming_distances(quantize.pack_bits(queries), bits)
    signs = np.unpackbits(bits, axis=1)
    brute = (np.unpackbits(quantize.pack_bits(queries), axis=1)[:, None, :] != signs[None]).sum(axis=2)
    np.testing.assert_array_equal(distances, brute)
    positions, similarity = binary_topn(bits, queries, 20, dim=vectors.shape[1])
    for row in range(len(queries)):
        nth = np.sort(distances[row])[19]
        assert set(np.flatnonzero(distances[row] < nth)) <= set(positions[row].tolist())
        np.testing.assert_allclose(similarity[row], 1 - 2 * np.sort(distances[row])[:20] / vectors.shape[1])
    ranges = quantize.calibrate_ranges(vectors)
    codes = quantize.quantize_int8(vectors, ranges)
    positions, scores = int8_topn(codes, queries, 10, ranges)
    brute = quantize.int8_scores(codes, queries, ranges)
    np.testing.assert_array_equal(positions, np.argsort(-brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, positions, axis=1), rtol=1e-5)


def test_quantised_funnel_with_whole_table_shortlist_is_exact(vectors):
    queries = vectors[:8] + 0.1
    truth, _ = exact_topn(vectors, queries, 10)
    bits = quantize.pack_bits(vectors)
    ranges = quantize.calibrate_ranges(vectors)
    codes = quantize.quantize_int8(vectors, ranges)
    for small, first in ((bits, searcher("binary", 40)), (codes, searcher("int8", 40, ranges))):
        positions, scores = funnel_topn(small, vectors, queries, queries, 10, len(vectors), first_stage=first)
        np.testing.assert_array_equal(positions, truth)
        np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", queries, vectors[truth[:, 0]]), rtol=1e-6)


def test_quantize_columns_keep_nulls_and_match_fields(vectors):
    dense = pa.FixedSizeListArray.from_arrays(pa.array(vectors[:4].reshape(-1)), 40,
                                              mask=pa.array([False, True, False, False]))
    small = pa.FixedSizeListArray.from_arrays(pa.array(unit(vectors[:4, :16]).reshape(-1)), 16)
    ranges = {"dense": quantize.calibrate_ranges(vectors), "dense_16": quantize.calibrate_ranges(vectors[:, :16])}
    columns = quantize.quantize_columns({"dense": dense, "dense_16": small, "colbert": pa.nulls(4)},
                                        ["int8", "binary"], ranges)
    fields = quantize.quantized_fields([pa.field("dense", dense.type), pa.field("dense_16", small.type)],
                                       ["int8", "binary"])
    assert [f.name for f in fields] == ["dense_int8", "dense_bin", "dense_16_int8", "dense_16_bin"]
    for f in fields:
        assert columns[f.name].type == f.type
    assert columns["dense_int8"].is_null().to_pylist() == [False, True, False, False]
    assert columns["dense_16_bin"].null_count == 0
    np.testing.assert_array_equal(quantize.vector_matrix(columns["dense_int8"], np.int8)[[0, 2, 3]],
                                  quantize.quantize_int8(vectors[[0, 2, 3]], ranges["dense"]))
    assert quantize.split_quantized_name("dense_16_bin") == ("dense_16", "binary")
    assert quantize.split_quantized_name("dense_int8") == ("dense", "int8")
    assert quantize.split_quantized_name("dense_16") == ("dense_16", None)
    stored = quantize.ranges_from_json(quantize.ranges_to_json(ranges))
    np.testing.assert_array_equal(stored["dense"], ranges["dense"])  # exact through JSON
    with pytest.raises(ValueError, match="unknown quantisation"):
        quantize.parse_precisions("int4")
    assert quantize.parse_precisions("binary,int8") == ["int8", "binary"]


def test_scan_topn_over_quantised_table_columns(tmp_path, vectors):
    ranges = quantize.calibrate_ranges(vectors)
    codes, bits = quantize.quantize_int8(vectors, ranges), quantize.pack_bits(vectors)
    table = pa.table({
        "id": [f"d{i}" for i in range(len(vectors))],
        "dense_int8": quantize.fixed_list_array(codes),
        "dense_bin": quantize.fixed_list_array(bits),
    })
    lancedb.connect(str(tmp_path)).create_table("docs", table)
    store = TableStore(str(tmp_path), "docs")
    queries = vectors[:5] * 0.8
    for column, matrix, first in (("dense_int8", codes, searcher("int8", 40, ranges)),
                                  ("dense_bin", bits, searcher("binary", 40))):
        positions, scores = scan_topn(store, column, queries, 12, search=first)
        expected_pos, expected_scores = first(matrix, queries, 12)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
        if column == "dense_int8":
            np.testing.assert_array_equal(positions, expected_pos)


# -- ColBERT ---------------------------------------------------------------------------------
def test_colbert_int8_and_binary_codes():
    rng = np.random.default_rng(5)
    tokens = unit(rng.normal(size=(30, 32)))
    codes, scales = colbert_codec.compress_tokens(tokens, "int8")
    assert codes.dtype == np.int8 and scales.shape == (30,)
    np.testing.assert_allclose(np.abs(codes).max(axis=1), 127)  # every token uses the full code range
    restored = colbert_codec.decompress_tokens(codes, scales, "int8", 32)
    assert (np.abs(restored - tokens) <= scales[:, None] / 2 + 1e-7).all()
    bits, none = colbert_codec.compress_tokens(tokens, "binary")
    assert none is None and bits.shape == (30, 4)
    signs = colbert_codec.decompress_tokens(bits, None, "binary", 32)
    np.testing.assert_allclose(np.linalg.norm(signs, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(signs > 0, tokens > 0)
    zero, zero_scale = colbert_codec.compress_tokens(np.zeros((1, 32), np.float32), "int8")
    assert (zero == 0).all() and zero_scale[0] == 1.0


def test_colbert_column_compression_and_maxsim():
    rng = np.random.default_rng(6)
    docs = [unit(rng.normal(size=(int(n), 16))).astype(np.float16) for n in (3, 1, 7, 5)]
    column = pa.array([d.tolist() for d in docs] + [None], pa.list_(pa.list_(pa.float16(), 16)))
    query = unit(rng.normal(size=(4, 16)))
    reference = scoring.colbert_scores(query, column)
    np.testing.assert_allclose(reference[:4], [scoring.colbert_score(query, d) for d in docs], rtol=1e-5)
    for precision in colbert_codec.PRECISIONS:
        stored = colbert_codec.compress_column(column, precision)
        fields = colbert_codec.colbert_fields("colbert", 16, precision)
        assert [stored[f.name].type for f in fields] == [f.type for f in fields]
        assert stored["colbert"].is_null().to_pylist() == [False] * 4 + [True]
        scores = scoring.colbert_scores(query, stored["colbert"], stored.get("colbert_scale"))
        flat, lengths = colbert_codec.flat_tokens(stored["colbert"], stored.get("colbert_scale"))
        assert lengths.tolist() == [3, 1, 7, 5, 0]
        assert scores[4] == 0.0
        tolerance = {"float16": 1e-6, "int8": 0.02, "binary": 1.0}[precision]
        np.testing.assert_allclose(scores, reference, atol=tolerance)
    with pytest.raises(ValueError, match="scales"):
        scoring.colbert_scores(query, colbert_codec.compress_column(column, "int8")["colbert"])


def test_token_pooling_equals_sentence_transformers():
    rng = np.random.default_rng(8)
    tokens = unit(rng.normal(size=(23, 16)))
    for factor in (1.0, 1.5, 2.0, 3.0):
        pooling = HierarchicalTokenPooling(pool_factor=factor, num_protected_tokens=0, normalize_embeddings=True)
        theirs = pooling.pool([torch.from_numpy(tokens)])[0].numpy()
        ours = colbert_codec.pool_tokens(tokens, factor)
        assert ours.shape == theirs.shape == (max(int(23 // factor), 1), 16)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    column = pa.array([tokens.tolist(), None], pa.list_(pa.list_(pa.float32(), 16)))
    pooled = colbert_codec.compress_column(column, "int8", pool_factor=2.0)
    assert pooled["colbert"].value_lengths().to_pylist() == [11, None]
