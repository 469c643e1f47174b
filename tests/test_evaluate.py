"""`evaluate` on a BGE-M3-shaped table: every entry equals the metrics of a brute-force run over the stored
vectors (the query encoder is replaced by one that returns known vectors)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.encoders.base import EncodedBatch
from operators.metrics import evaluate_run
from operators.schema import COLBERT, DENSE, SPARSE
from operators.scoring import SparseVector
from pipelines.evaluate import EvaluateJob, run_evaluate
from tests.search_tables import brute_lexical, brute_maxsim, brute_ranking, make_table, random_rows, to_arrow

N = 300
QUERIES = 24
K = 5
SHORTLIST = 20


class KnownEncoder:
    """Stands in for the table's encoder: each query text names the row whose perturbed vectors it gets."""

    model_id = "fake:1"

    def __init__(self, queries: dict) -> None:
        self.queries = queries

    def encode(self, texts, prompt_name=None) -> EncodedBatch:
        assert prompt_name == "query"
        rows = [int(text.split()[-1]) for text in texts]
        columns = {name: np.stack([self.queries[name][r] for r in rows]) for name in (DENSE, "dense_16", "dense_8")}
        columns[SPARSE] = [self.queries[SPARSE][r] for r in rows]
        columns[COLBERT] = [self.queries[COLBERT][r] for r in rows]
        table = to_arrow({"id": [str(r) for r in rows], "text_hash": [""] * len(rows), "model": [""] * len(rows),
                          **columns})
        return EncodedBatch(columns={name: table.column(name).combine_chunks() for name in columns},
                            token_counts=np.ones(len(rows)), truncated=np.zeros(len(rows), bool))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("eval_lake"))
    _table, columns = make_table(path, n=N, seed=11)
    rng = np.random.default_rng(12)
    noise = random_rows(rng, N, start=0)
    queries = {}
    for name in (DENSE, "dense_16", "dense_8"):
        mixed = columns[name] + 0.9 * noise[name]
        queries[name] = (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
    queries[SPARSE] = [{"indices": (row["indices"][:3] + [7, 8]), "values": (row["values"][:3] + [0.2, 0.1])}
                       if 7 not in row["indices"][:3] and 8 not in row["indices"][:3] else row
                       for row in columns[SPARSE]]
    queries[COLBERT] = [np.concatenate([c[:2], n[:2]]) for c, n in zip(columns[COLBERT], noise[COLBERT],
                                                                      strict=True)]
    targets = list(range(0, N, N // QUERIES))[:QUERIES]
    folder = tmp_path_factory.mktemp("labels")
    query_ids = [f"q{t}" for t in targets] + ["q-unjudged"]
    pq.write_table(pa.table({"query_id": query_ids, "text": [f"row {t}" for t in targets] + ["row 1"]}),
                   folder / "queries.parquet")
    qrel_rows = [(f"q{t}", f"doc{t:05d}", 2) for t in targets] + [(f"q{t}", f"doc{t + 1:05d}", 1) for t in targets]
    pq.write_table(pa.table({"query_id": [r[0] for r in qrel_rows], "doc_id": [r[1] for r in qrel_rows],
                             "relevance": pa.array([r[2] for r in qrel_rows], pa.int32())}),
                   folder / "qrels.parquet")
    qrels = {}
    for qid, doc, rel in qrel_rows:
        qrels.setdefault(qid, {})[doc] = rel
    return path, columns, queries, targets, query_ids, qrels, folder


@pytest.fixture(scope="module")
def result(setup, tmp_path_factory):
    path, _columns, queries, _targets, _ids, _qrels, folder = setup
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("operators.search.queries.load_query_encoder", lambda store, model=None: KnownEncoder(queries))
        return run_evaluate(EvaluateJob(path, str(folder / "queries.parquet"), str(folder / "qrels.parquet"),
                                        k=K, shortlist=SHORTLIST, funnel_shortlist=SHORTLIST, tune_weights=True,
                                        report=str(tmp_path_factory.mktemp("report") / "r.json")))


def check(entry: dict, run: dict, query_ids, qrels) -> None:
    expected = evaluate_run(run, qrels, query_ids, K).means
    for name, value in expected.items():
        assert entry[name] == pytest.approx(value, abs=1e-9), name


def test_every_entry_is_reported(result):
    assert {"dense", "dense_16", "dense_8", "funnel_16", "funnel_8", "sparse", "colbert", "hybrid", "hybrid_rrf",
            "hybrid_tuned"} <= set(result)
    assert result["queries"] == QUERIES and result["queries_without_relevant"] == 1
    assert result["dense_8"]["bytes_per_vector"] == 32 and result["dense"]["bytes_per_vector"] == 128
    assert result["sparse"]["bytes_per_vector"] > 0 and result["colbert"]["bytes_per_vector"] > 0
    assert result["hybrid"]["weights"] == [0.4, 0.2, 0.4]
    with open(result["report"]) as handle:
        assert json.load(handle)["hybrid"] == result["hybrid"]


def test_dense_sparse_and_funnel_entries_equal_brute_force(setup, result):
    _path, columns, queries, targets, query_ids, qrels, _ = setup
    ids = columns["id"]
    for name in (DENSE, "dense_16", "dense_8"):
        run = {f"q{t}": brute_ranking(ids, columns[name] @ queries[name][t], K) for t in targets}
        check(result[name], run, query_ids, qrels)
    for small in ("dense_16", "dense_8"):
        run = {}
        for t in targets:
            shortlist = brute_ranking(range(N), columns[small] @ queries[small][t], SHORTLIST)
            rows = [row for row, _ in shortlist]
            run[f"q{t}"] = brute_ranking([ids[r] for r in rows], columns[DENSE][rows] @ queries[DENSE][t], K)
        check(result[f"funnel_{small[6:]}"], run, query_ids, qrels)
    run = {}
    for t in targets:
        query = SparseVector.from_pairs(queries[SPARSE][t]["indices"], queries[SPARSE][t]["values"])
        scores = [brute_lexical(query, row) for row in columns[SPARSE]]
        run[f"q{t}"] = [pair for pair in brute_ranking(ids, scores, N) if pair[1] > 0][:K]
    check(result[SPARSE], run, query_ids, qrels)


def test_colbert_and_hybrid_entries_equal_brute_force(setup, result):
    _path, columns, queries, targets, query_ids, qrels, _ = setup
    ids = columns["id"]
    colbert_run, hybrid_run, scored = {}, {}, {}
    for t in targets:
        query = SparseVector.from_pairs(queries[SPARSE][t]["indices"], queries[SPARSE][t]["values"])
        dense = columns[DENSE] @ queries[DENSE][t]
        lexical = np.array([brute_lexical(query, row) for row in columns[SPARSE]])
        union = {doc for doc, _ in brute_ranking(range(N), dense, SHORTLIST)}
        union |= {doc for doc, s in brute_ranking(range(N), lexical, SHORTLIST) if s > 0}
        rows = sorted(union)
        colbert = np.array([brute_maxsim(queries[COLBERT][t].astype(np.float16).astype(np.float32),
                                         columns[COLBERT][r]) for r in rows])
        colbert_run[f"q{t}"] = brute_ranking([ids[r] for r in rows], colbert, K)
        hybrid = (0.4 * dense[rows] + 0.2 * lexical[rows] + 0.4 * colbert) / 1.0
        hybrid_run[f"q{t}"] = brute_ranking([ids[r] for r in rows], hybrid, K)
        scored[f"q{t}"] = (rows, dense[rows], lexical[rows], colbert)
    check(result[COLBERT], colbert_run, query_ids, qrels)
    check(result["hybrid"], hybrid_run, query_ids, qrels)
    # the tuned weights are the best point of the grid: recompute every point by brute force
    best = -1.0
    for w_dense in range(11):
        for w_sparse in range(11 - w_dense):
            w = (w_dense / 10, w_sparse / 10, (10 - w_dense - w_sparse) / 10)
            run = {qid: brute_ranking([ids[r] for r in rows], (w[0] * d + w[1] * s + w[2] * c) / sum(w), K)
                   for qid, (rows, d, s, c) in scored.items()}
            best = max(best, evaluate_run(run, qrels, query_ids, K).means[f"ndcg@{K}"])
    tuned = result["hybrid_tuned"]
    assert tuned[f"ndcg@{K}"] == pytest.approx(best, abs=1e-9)
    assert tuned[f"ndcg@{K}"] >= result["hybrid"][f"ndcg@{K}"] - 1e-12
    assert sum(tuned["weights"]) == pytest.approx(1.0) and tuned["grid_points"] == 66
    assert all(math.isfinite(v) for v in tuned["heldout"].values())


def test_missing_columns_in_label_files_are_reported(setup, tmp_path):
    path = setup[0]
    pq.write_table(pa.table({"qid": ["a"], "text": ["x"]}), tmp_path / "q.parquet")
    with pytest.raises(ValueError, match="has no column 'query_id' \\(needs query_id, text; columns found: qid"):
        run_evaluate(EvaluateJob(path, str(tmp_path / "q.parquet"), str(tmp_path / "q.parquet")))


def test_search_path_gives_the_same_report_as_the_batched_exact_path(setup, result, tmp_path):
    """--use-index ranks through Retriever (LanceDB search per query, here without an index, so exact):
    the same numbers as the batched exact scans, which is what makes the report describe `search`."""
    path, _columns, queries, _targets, _ids, _qrels, folder = setup
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("operators.search.queries.load_query_encoder", lambda store, model=None: KnownEncoder(queries))
        through_search = run_evaluate(EvaluateJob(path, str(folder / "queries.parquet"),
                                                  str(folder / "qrels.parquet"), k=K, shortlist=SHORTLIST,
                                                  funnel_shortlist=SHORTLIST, use_index=True,
                                                  report=str(tmp_path / "r.json"), plot=False))
    for entry in ("dense", "dense_16", "dense_8", "funnel_16", "funnel_8", "sparse", "colbert", "hybrid"):
        for metric in (f"recall@{K}", f"mrr@{K}", f"ndcg@{K}"):
            assert through_search[entry][metric] == pytest.approx(result[entry][metric], abs=1e-9), (entry, metric)
