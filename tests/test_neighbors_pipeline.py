"""`embedlake neighbors` on the session's Ray: the exact graph equals a brute force; the ANN graph goes
through a real index, scores exactly, and its reported recall is what the written table gives."""

from __future__ import annotations

import os

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest

from operators.neighbors import ID, NEIGHBOR, RANK, SCORE, recall_at_k
from operators.tables import SERVING
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


def clustered(rows: int = 1200, seed: int = 2, prefix: str = "n") -> tuple[np.ndarray, list[str]]:
    """Unit vectors around 30 centres (an index has structure to find), ids shuffled."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(2).standard_normal((30, 16)).astype(np.float32)
    matrix = normalize_rows(centres[rng.integers(0, 30, rows)] + 0.35 * rng.standard_normal((rows, 16)))
    return matrix, [f"{prefix}{i:05d}" for i in rng.permutation(rows)]


def test_ann_graph_through_the_index_with_sampled_recall(ray_session, tmp_path):
    matrix, ids = clustered()
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


def test_ivf_graph_with_every_partition_probed_is_the_exact_graph(ray_session, tmp_path):
    """--method ivf through Ray (scratch buckets, one scoring task per bucket): probing every partition gives
    the exact graph, ties by id included; the scratch folder is removed."""
    matrix, ids = tied_vectors(150, seed=11)
    lancedb.connect(str(tmp_path)).create_table("docs", pa.table({ID: ids, "dense_8": to_vector_array(matrix)}))
    result = cli_result("neighbors", str(tmp_path), "--table", "docs", "--k", "4", "--column", "dense_8",
                        "--method", "ivf", "--partitions", "5", "--probes", "5", "--json")
    assert result["method"] == "ivf" and result["edges"] == 600 and result["recall@4"] == 1.0
    assert result["ivf"]["partitions"] == 5 and result["ivf"]["candidates_per_row"] == 150
    found = graph_lists(lancedb.connect(str(tmp_path)).open_table("docs_neighbors").to_arrow())
    expected = brute_force(matrix, ids, 4)
    assert {doc: [n for n, _ in v] for doc, v in found.items()} == {doc: [n for n, _ in v]
                                                                    for doc, v in expected.items()}
    assert not os.listdir(tmp_path / ".embedlake_work")


def test_auto_beyond_the_exact_threshold_is_ivf_with_its_recall(ray_session, tmp_path):
    matrix, ids = clustered()
    served_table(str(tmp_path), matrix, ids)
    result = run_neighbors(NeighborsJob(uri=str(tmp_path), table="docs", k=10, exact_max_rows=100,
                                        recall_sample=60, probes=3))
    assert result["method"] == "ivf" and result["edges"] == 12_000 and result["recall_sample"] == 60
    assert result["ivf"]["partitions"] == 35 and result["ivf"]["buckets"] >= 1
    assert result["ivf"]["candidates_per_row"] < 1200 / 2  # a fraction of the table is scored per row
    graph = graph_lists(lancedb.connect(str(tmp_path)).open_table("docs_neighbors").to_arrow())
    exact = brute_force(matrix, ids, 10)
    overall = recall_at_k({d: [n for n, _ in v] for d, v in graph.items()},
                          {d: [n for n, _ in v] for d, v in exact.items()}, 10)
    assert overall >= 0.95 and result["recall@10"] >= 0.9
    assert not lance.dataset(f"{tmp_path}/docs.lance").list_indices()  # no index built, serving unmoved


def served_table(uri: str, matrix: np.ndarray, ids: list[str]) -> lance.LanceDataset:
    """A table as embed leaves it: readers pinned to the `serving` tag at its only version."""
    lancedb.connect(uri).create_table("docs", pa.table({ID: ids, "dense": to_vector_array(matrix)}))
    dataset = lance.dataset(f"{uri}/docs.lance")
    dataset.tags.create(SERVING, dataset.version)
    return dataset


def indexed_columns(dataset: lance.LanceDataset) -> set[str]:
    return {field for index in dataset.list_indices() for field in index["fields"]}


def test_ann_on_a_served_table_uses_the_index_of_the_snapshot_it_reads(ray_session, tmp_path):
    """Readers read `serving` (issue 13's lifecycle). --method ann on a served table without an index: the index
    is built for the serving version and published with it (same rows), and the graph is read there. With an
    unfinished run on top, the graph is still the serving version's, through that version's index; a serving
    version without an index under an unfinished run, or a pinned version without one, is refused rather than
    indexed on a version readers do not read (nothing is written)."""
    matrix, ids = clustered()
    extra, extra_ids = clustered(200, seed=5, prefix="x")
    uri = str(tmp_path / "indexed")
    served_table(uri, matrix, ids)
    built = run_neighbors(NeighborsJob(uri=uri, table="docs", k=5, method="ann", recall_sample=40))
    assert built["method"] == "ann" and built["index"]["build_seconds"] > 0
    dataset = lance.dataset(f"{uri}/docs.lance")
    served = dataset.tags.list()[SERVING]["version"]
    assert built["table_version"] == served == dataset.version  # readers now read the version with the index
    assert "dense" in indexed_columns(lance.dataset(f"{uri}/docs.lance", version=SERVING))
    assert dataset.count_rows() == 1200 and built["edges"] == 6000 and built["recall@5"] >= 0.9

    lancedb.connect(uri).open_table("docs").add(pa.table({ID: extra_ids, "dense": to_vector_array(extra)}))
    latest = lance.dataset(f"{uri}/docs.lance").version  # an unfinished run's commit on the main line
    result = run_neighbors(NeighborsJob(uri=uri, table="docs", k=5, method="ann", recall_sample=40))
    assert result["table_version"] == served and "build_seconds" not in result["index"]
    assert result["rows"] == 1200 and result["edges"] == 6000 and result["recall@5"] >= 0.9
    graph = graph_lists(lancedb.connect(uri).open_table("docs_neighbors").to_arrow())
    assert set(graph) == set(ids) and not {n for lst in graph.values() for n, _ in lst} & set(extra_ids)
    assert lance.dataset(f"{uri}/docs.lance").version == latest

    lance.dataset(f"{uri}/docs.lance").tags.create("golden", served)  # a pin of the user's, with its index
    pinned = run_neighbors(NeighborsJob(uri=uri, table="docs", k=5, method="ann", recall_sample=0, tag="golden"))
    assert pinned["table_version"] == served and pinned["edges"] == 6000

    uri = str(tmp_path / "plain")  # no index anywhere, an unfinished run on top of the serving version
    first = served_table(uri, matrix, ids).version
    lancedb.connect(uri).open_table("docs").add(pa.table({ID: extra_ids, "dense": to_vector_array(extra)}))
    latest = lance.dataset(f"{uri}/docs.lance").version
    with pytest.raises(ValueError, match="no ANN index .* unfinished run"):
        run_neighbors(NeighborsJob(uri=uri, table="docs", k=5, method="ann", recall_sample=0))
    with pytest.raises(ValueError, match=f"no ANN index .* at version {first} \\(version {first}\\)"):
        run_neighbors(NeighborsJob(uri=uri, table="docs", k=5, method="ann", recall_sample=0, version=first))
    assert lance.dataset(f"{uri}/docs.lance").version == latest  # no index built on the main line
