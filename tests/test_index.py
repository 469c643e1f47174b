"""`embedlake index`: ANN indexes with size-based parameters, recall against exact search, and search
through the index still reporting exact scores."""

from __future__ import annotations

import numpy as np
import pytest

from operators.schema import DENSE
from operators.scoring import QueryVectors
from operators.search.index_plan import IndexType, plan_index
from operators.search.retriever import Retriever
from operators.search.store import TableStore
from pipelines.index import IndexJob, run_index
from tests.cli_runs import cli_result
from tests.search_tables import make_table


def test_plans_follow_table_size():
    small = plan_index(DENSE, 50_000, 384)
    assert (small.index_type, small.num_partitions) == (IndexType.IVF_HNSW_SQ, 1)
    big = plan_index(DENSE, 3_000_000, 1024)
    assert (big.index_type, big.num_partitions, big.nprobes) == (IndexType.IVF_HNSW_SQ, 3, 3)
    pq = plan_index(DENSE, 1_000_000, 384, IndexType.IVF_PQ)
    assert (pq.num_partitions, pq.num_sub_vectors, pq.nprobes, pq.refine_factor) == (1000, 48, 100, 10)
    assert plan_index(DENSE, 10_000, 100, IndexType.IVF_PQ).num_sub_vectors == 10  # divides the dimension
    with pytest.raises(ValueError, match="unknown index type"):
        plan_index(DENSE, 10, 8, "LSH")


def test_small_tables_are_skipped_with_a_reason(tmp_path):
    make_table(str(tmp_path), n=50)
    result = cli_result("index", str(tmp_path), "--table", "docs", "--json")
    assert "exact search is fast" in result["columns"][DENSE]["skipped"]
    assert result["sparse_index"]["rows"] == 50


def test_index_recall_and_search_through_it(tmp_path):
    path = str(tmp_path)
    _table, columns = make_table(path, n=3000, seed=1, sparse=False, colbert=False)
    result = run_index(IndexJob(path, "docs", columns=[DENSE, "dense_8"], min_rows=1000, sample=40))
    for column in (DENSE, "dense_8"):
        entry = result["columns"][column]
        assert entry["index_type"] == IndexType.IVF_HNSW_SQ
        assert entry["recall@10"] >= 0.95, entry  # 1.0 measured: refine_factor re-ranks on float vectors
    store = TableStore(path, "docs")
    assert store.vector_index(DENSE) == ("IVF_HNSW_SQ", "l2")
    retriever = Retriever(path, "docs")
    query = QueryVectors(dense={DENSE: columns[DENSE][17]})
    hits = retriever.search(query, k=5)
    # scores are exact dot products whatever the index returned
    for hit in hits:
        position = int(hit["id"][3:])
        assert hit["score"] == pytest.approx(float(columns[DENSE][position] @ columns[DENSE][17]), abs=1e-6)
    assert hits[0]["id"] == "doc00017"
    exact = Retriever(path, "docs", exact=True).search(query, k=5)
    assert len({h["id"] for h in hits} & {h["id"] for h in exact}) >= 4
    np.testing.assert_allclose(exact[0]["score"], 1.0, atol=1e-6)


def test_index_rejects_non_dense_columns(tmp_path):
    make_table(str(tmp_path), n=20)
    with pytest.raises(ValueError, match="not a dense vector column"):
        run_index(IndexJob(str(tmp_path), "docs", columns=["sparse"]))


def test_rows_committed_during_the_build_are_not_published(tmp_path, monkeypatch):
    """An embed run that commits while `index` builds: serving must not move onto its rows."""
    import pipelines.index as index_module
    from operators.serving import SERVING, serving_version
    from operators.tables import Lake

    path = str(tmp_path)
    make_table(path, n=1200, seed=2, sparse=False, colbert=False)
    target = Lake(path).table("docs")
    target.dataset().tags.create(SERVING, target.dataset().version)  # served, as embed leaves a table
    served = serving_version(target.dataset())
    build = index_module.create_index

    def build_while_a_run_commits(table, plan):
        seconds = build(table, plan)
        target.dataset().delete("id = 'doc00003'")  # a concurrent writer's commit between two index builds
        return seconds

    monkeypatch.setattr(index_module, "create_index", build_while_a_run_commits)
    with pytest.raises(ValueError, match="rows were committed while the indexes were built"):
        run_index(IndexJob(path, "docs", columns=[DENSE], min_rows=1000, sample=10))
    assert serving_version(target.dataset()) == served
    assert "doc00003" in target.snapshot().to_table(columns=["id"]).column("id").to_pylist()
