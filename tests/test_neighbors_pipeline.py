"""`embedlake neighbors` on the session's Ray: the exact graph equals a brute force; the ANN graph goes
through a real index, scores exactly, and its reported recall is what the written table gives."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from operators.neighbors import ID, NEIGHBOR, RANK, SCORE, recall_at_k
from operators.vectors import normalize_rows, to_vector_array
from pipelines.neighbors import NeighborsJob, run_neighbors
from tests.cli_runs import cli_result
from tests.test_neighbors import brute_force, graph_lists, tied_vectors

pytestmark = pytest.mark.ray


def test_cli_writes_the_exact_graph(ray_session, tmp_path):
    matrix, ids = tied_vectors(150, seed=11)
    lancedb.connect(str(tmp_path)).create_table("docs", pa.table({ID: ids, "dense_8": to_vector_array(matrix)}))
    result = cli_result("neighbors", str(tmp_path), "--table", "docs", "--k", "4", "--column", "dense_8", "--json")
    assert result["method"] == "exact" and result["rows"] == 150 and result["edges"] == 600
    written = lancedb.connect(str(tmp_path)).open_table("docs_neighbors").to_arrow()
    assert written.schema.names == [ID, NEIGHBOR, RANK, SCORE]
    found = graph_lists(written)
    expected = brute_force(matrix, ids, 4)
    assert {doc: [n for n, _ in v] for doc, v in found.items()} == {doc: [n for n, _ in v]
                                                                    for doc, v in expected.items()}


def test_ann_graph_through_the_index_with_sampled_recall(ray_session, tmp_path):
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((30, 16)).astype(np.float32)
    matrix = normalize_rows(centres[rng.integers(0, 30, 1200)] + 0.35 * rng.standard_normal((1200, 16)))
    ids = [f"n{i:05d}" for i in rng.permutation(1200)]
    lancedb.connect(str(tmp_path)).create_table("docs", pa.table({ID: ids, "dense": to_vector_array(matrix)}))
    result = run_neighbors(NeighborsJob(uri=str(tmp_path), table="docs", k=10, method="ann", recall_sample=60))
    assert result["method"] == "ann" and result["index"]["index_type"] and result["index"]["build_seconds"] > 0
    assert result["edges"] == 12_000 and result["recall_sample"] == 60
    graph = graph_lists(lancedb.connect(str(tmp_path)).open_table("docs_neighbors").to_arrow())
    position = {doc: i for i, doc in enumerate(ids)}
    for doc in ids[:50]:
        assert doc not in [n for n, _ in graph[doc]]
        np.testing.assert_allclose([s for _, s in graph[doc]],
                                   [float(matrix[position[doc]] @ matrix[position[n]]) for n, _ in graph[doc]],
                                   atol=1e-5)
    exact = brute_force(matrix, ids, 10)
    overall = recall_at_k({d: [n for n, _ in v] for d, v in graph.items()},
                          {d: [n for n, _ in v] for d, v in exact.items()}, 10)
    assert overall >= 0.95 and result["recall@10"] >= 0.9
