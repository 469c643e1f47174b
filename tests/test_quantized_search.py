"""Search and evaluation over quantised columns (`embed --quantize int8,binary`) against brute force on the
stored codes: `--column dense_bin` / `dense_8_int8`, the quantised funnels (`--funnel dense_bin`, with
`--rescore-multiplier`), and `evaluate`'s quantised entries, bytes per row and smallest setting within 1%."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import quantize
from operators.metrics import evaluate_run
from operators.schema import DENSE
from operators.scoring import QueryVectors
from operators.search.retriever import Retriever, resolve_funnel_column
from operators.table_meta import TableMeta
from pipelines.evaluate import EvaluateJob, run_evaluate
from tests.search_tables import brute_ranking, random_rows, to_arrow
from tests.test_evaluate import KnownEncoder

N = 240
K = 5
DENSE_COLUMNS = (DENSE, "dense_16", "dense_8")
DIMS = {DENSE: 32, "dense_16": 16, "dense_8": 8}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """A table with every dense column's int8 and binary copies, ranges in its metadata as embed keeps them."""
    path = str(tmp_path_factory.mktemp("quantised_lake"))
    columns = random_rows(np.random.default_rng(21), N, sparse=False, colbert=False)
    ranges = {name: quantize.calibrate_ranges(columns[name][:100]) for name in DENSE_COLUMNS}  # a sample
    meta = TableMeta(model="fake", model_id="fake:1", kind="bge-m3", dims=[16, 8], outputs=["dense"],
                     quantize=["int8", "binary"], int8_ranges=quantize.ranges_to_json(ranges))
    table = to_arrow(columns, meta=meta)
    quantised = quantize.quantize_columns({name: table.column(name) for name in DENSE_COLUMNS}, ["int8", "binary"],
                                          ranges)
    for name in quantize.quantized_columns(list(quantised)):
        table = table.append_column(name, quantised[name])
        columns[name] = quantize.vector_matrix(quantised[name], quantised[name].type.value_type.to_pandas_dtype())
    lancedb.connect(path).create_table("docs", table)
    rng = np.random.default_rng(22)
    queries = {}
    for name in DENSE_COLUMNS:  # near a stored row, so the quantised rankings are meaningful
        mixed = columns[name] + 0.6 * random_rows(rng, N, sparse=False, colbert=False)[name]
        queries[name] = (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
    return path, columns, ranges, queries


def query_vectors(queries: dict, row: int) -> QueryVectors:
    return QueryVectors(dense={name: queries[name][row] for name in DENSE_COLUMNS}, sparse=None, colbert=None)


def brute_scores(columns: dict, ranges: dict, column: str, query: np.ndarray) -> np.ndarray:
    """A quantised column's scores from sentence-transformers' definitions: dequantised int8 rows, or the
    cosine of the sign vectors (1 - 2 x Hamming / d)."""
    base, precision = quantize.split_quantized_name(column)
    if precision is None:
        return columns[column] @ query
    if precision == "int8":
        return quantize.dequantize_int8(columns[column], ranges[base]) @ query
    bits = np.unpackbits(columns[column], axis=1)[:, :DIMS[base]]
    query_bits = np.unpackbits(quantize.pack_bits(query))[:DIMS[base]]
    return 1 - 2 * (bits != query_bits).sum(axis=1) / DIMS[base]


@pytest.mark.parametrize("column", ["dense_int8", "dense_16_int8", "dense_bin", "dense_8_bin"])
def test_search_on_a_quantised_column_equals_brute_force(lake, column):
    path, columns, ranges, queries = lake
    retriever = Retriever(path, "docs")
    for row in range(0, N, 40):
        hits = retriever.search(query_vectors(queries, row), column=column, k=K)
        expected = brute_scores(columns, ranges, column, queries[quantize.split_quantized_name(column)[0]][row])
        ids = [int(hit["id"][3:]) for hit in hits]
        # every hit has its brute-force score, and the scores are the k best (Hamming ties may pick other rows)
        np.testing.assert_allclose([hit["score"] for hit in hits], expected[ids], atol=1e-5)
        np.testing.assert_allclose([hit["score"] for hit in hits], np.sort(expected)[::-1][:K], atol=1e-5)
        if column.endswith("_int8"):
            assert [(hit["id"]) for hit in hits] == [doc for doc, _ in brute_ranking(columns["id"], expected, K)]


def test_quantised_funnels_shortlist_k_times_the_multiplier_and_rescore(lake):
    path, columns, ranges, queries = lake
    multiplier = 4
    retriever = Retriever(path, "docs", rescore_multiplier=multiplier)
    whole = Retriever(path, "docs", rescore_multiplier=N // K)  # a shortlist as large as the table: exact
    for row in range(0, N, 30):
        query = query_vectors(queries, row)
        exact = brute_ranking(columns["id"], columns[DENSE] @ queries[DENSE][row], K)
        for small in ("dense_bin", "dense_8_bin", "dense_int8", "dense_16_int8"):
            found = whole.search(query, funnel=small, k=K)
            assert [(h["id"], round(h["score"], 5)) for h in found] == [(d, round(float(s), 5)) for d, s in exact]
        # int8 first stage (no ties): shortlist of k x multiplier by int8, re-ranked by dense, or by dense_int8
        shortlist = [int(d[3:]) for d, _ in brute_ranking(
            columns["id"], brute_scores(columns, ranges, "dense_16_int8", queries["dense_16"][row]), K * multiplier)]
        for full in (DENSE, "dense_int8"):
            scores = brute_scores(columns, ranges, full, queries[DENSE][row])[shortlist]
            expected = brute_ranking([columns["id"][r] for r in shortlist], scores, K)
            found = retriever.search(query, funnel="dense_16_int8", column=full, k=K)
            assert [h["id"] for h in found] == [d for d, _ in expected]
            np.testing.assert_allclose([h["score"] for h in found], [s for _, s in expected], atol=1e-5)
    assert Retriever(path, "docs").funnel_shortlist_for("dense_bin", 10) == 1000  # default x100 for binary
    assert Retriever(path, "docs").funnel_shortlist_for("dense_int8", 10) == 100
    assert resolve_funnel_column("dense_64_bin") == "dense_64_bin" and resolve_funnel_column(64) == "dense_64"
    for bad in ("dense", "sparse_bin", "colbert"):
        with pytest.raises(ValueError, match="--funnel takes"):
            resolve_funnel_column(bad)
    with pytest.raises(ValueError, match="--column takes"):
        Retriever(path, "docs").search(query_vectors(queries, 0), column="sparse_bin")
    with pytest.raises(ValueError, match="--rescore-multiplier must be at least 1"):
        Retriever(path, "docs", rescore_multiplier=0)


def test_evaluate_reports_quantised_columns_funnels_bytes_and_the_smallest_within_one_percent(lake, tmp_path):
    path, columns, ranges, queries = lake
    targets = list(range(0, N, 12))
    pq.write_table(pa.table({"query_id": [f"q{t}" for t in targets], "text": [f"row {t}" for t in targets]}),
                   tmp_path / "queries.parquet")
    qrels = {f"q{t}": {f"doc{t:05d}": 1} for t in targets}
    pq.write_table(pa.table({"query_id": list(qrels), "doc_id": [next(iter(v)) for v in qrels.values()],
                             "relevance": pa.array([1] * len(qrels), pa.int32())}), tmp_path / "qrels.parquet")
    encoder = KnownEncoder({**queries, "sparse": [{"indices": [], "values": []}] * N,
                            "colbert": [np.zeros((1, 16), np.float16)] * N})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("operators.search.queries.load_query_encoder", lambda store, model=None: encoder)
        result = run_evaluate(EvaluateJob(path, str(tmp_path / "queries.parquet"), str(tmp_path / "qrels.parquet"),
                                          k=K, rescore_multiplier=3, report=str(tmp_path / "r.json")))
    quantised = [quantize.quantized_name(c, p) for c in DENSE_COLUMNS for p in ("int8", "binary")]
    assert {*quantised, *(f"funnel_{name}" for name in quantised)} <= set(result)
    for name in quantised:
        base, precision = quantize.split_quantized_name(name)
        assert result[name]["bytes_per_vector"] == DIMS[base] * (1 if precision == "int8" else 1 / 8)
        assert result[f"funnel_{name}"]["shortlist"] == K * 3
        run = {f"q{t}": brute_ranking(columns["id"], brute_scores(columns, ranges, name, queries[base][t]), K)
               for t in targets}
        if precision == "int8":  # (Hamming ties make binary's top-k at the boundary arbitrary)
            expected = evaluate_run(run, qrels, list(qrels), K).means
            assert result[name][f"ndcg@{K}"] == pytest.approx(expected[f"ndcg@{K}"], abs=1e-9)
        run = {}
        for t in targets:
            shortlist = [int(d[3:]) for d, _ in brute_ranking(
                columns["id"], brute_scores(columns, ranges, name, queries[base][t]), K * 3)]
            run[f"q{t}"] = brute_ranking([columns["id"][r] for r in shortlist],
                                         columns[DENSE][shortlist] @ queries[DENSE][t], K)
        if precision == "int8":
            expected = evaluate_run(run, qrels, list(qrels), K).means
            assert result[f"funnel_{name}"][f"ndcg@{K}"] == pytest.approx(expected[f"ndcg@{K}"], abs=1e-9)
    smallest = result["smallest_within_1pct"]
    key = f"ndcg@{K}"
    assert smallest[key] >= 0.99 * result[DENSE][key]
    assert smallest["bytes_per_vector"] == min(entry["bytes_per_vector"] for entry in result.values()
                                               if isinstance(entry, dict) and key in entry
                                               and entry[key] >= 0.99 * result[DENSE][key])
