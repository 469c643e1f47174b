"""k-NN graph operators (no Ray): exact neighbours equal a numpy brute force (self excluded, ties by id),
the ANN path proposes through a real LanceDB index and rescores exactly, the sampled recall check."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from operators.neighbors import (
    ID,
    NEIGHBOR,
    RANK,
    SCORE,
    AnnNeighbors,
    ExactNeighbors,
    SampleTopK,
    best_of,
    id_ranks,
    ordered_topk,
    recall_at_k,
)
from operators.search.ann import create_index
from operators.search.index_plan import plan_index
from operators.vectors import normalize_rows, to_vector_array


def brute_force(matrix: np.ndarray, ids: list[str], k: int) -> dict[str, list[tuple[str, float]]]:
    """Every row's k best other rows by dot product, ties by id: the definition."""
    result = {}
    for i, doc in enumerate(ids):
        scores = matrix @ matrix[i]
        others = sorted((j for j in range(len(ids)) if j != i), key=lambda j: (-float(scores[j]), ids[j]))
        result[doc] = [(ids[j], float(scores[j])) for j in others[:k]]
    return result


def tied_vectors(rows: int = 120, dim: int = 8, seed: int = 3) -> tuple[np.ndarray, list[str]]:
    """Vectors of small multiples of 1/4 (every dot product exact in float32) with repeated rows, so many
    scores tie exactly and the id decides; ids shuffled so id order is not position order."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, size=(rows // 3, dim)).astype(np.float32) / 4
    matrix = np.concatenate([base, base[: rows // 3], rng.integers(-2, 3, size=(rows - 2 * (rows // 3), dim))
                             .astype(np.float32) / 4])
    ids = [f"doc{n:04d}" for n in rng.permutation(rows)]
    return matrix, ids


def graph_lists(table: pa.Table) -> dict[str, list[tuple[str, float]]]:
    lists: dict[str, list] = {}
    rows = zip(*(table.column(c).to_pylist() for c in (ID, NEIGHBOR, RANK, SCORE)), strict=True)
    for doc, neighbor, _rank, score in sorted(rows, key=lambda r: (r[0], r[2])):
        lists.setdefault(doc, []).append((neighbor, score))
    return lists


@pytest.mark.parametrize("k", [1, 5, 10])
def test_exact_neighbors_equal_brute_force_with_ties_by_id(k):
    matrix, ids = tied_vectors()
    op = ExactNeighbors(matrix, np.asarray(ids, dtype=object), k)
    batch = pa.table({ID: ids, "dense": to_vector_array(matrix)})
    found = graph_lists(pa.concat_tables([op(batch.slice(0, 50), "dense"), op(batch.slice(50), "dense")]))
    expected = brute_force(matrix, ids, k)
    assert found.keys() == expected.keys()
    for doc in ids:
        assert [n for n, _ in found[doc]] == [n for n, _ in expected[doc]], doc
        np.testing.assert_allclose([s for _, s in found[doc]], [s for _, s in expected[doc]], atol=1e-6)
        assert doc not in [n for n, _ in found[doc]]


def test_exact_neighbors_of_a_tiny_table_and_ranks():
    matrix = normalize_rows(np.eye(3, dtype=np.float32) + 0.1)
    op = ExactNeighbors(matrix, np.asarray(["c", "b", "a"], dtype=object), k=10)
    table = op(pa.table({ID: ["c", "b", "a"], "v": to_vector_array(matrix)}), "v")
    assert table.num_rows == 6  # each row has the other two, never itself
    assert sorted(set(table.column(RANK).to_pylist())) == [1, 2]


def test_ordered_topk_breaks_ties_straddling_the_kth_place_by_id():
    scores = np.asarray([[0.5, 0.9, 0.5, 0.5, 0.1]], dtype=np.float32)
    ranks = id_ranks(np.asarray(["e", "a", "d", "b", "c"], dtype=object))
    positions, best = ordered_topk(scores, ranks, 2)
    assert positions.tolist() == [[1, 3]]  # 0.9, then the smallest id among the three 0.5s ("b")
    assert best[0].tolist() == pytest.approx([0.9, 0.5])


@pytest.fixture(scope="module")
def indexed_table(tmp_path_factory):
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((20, 16)).astype(np.float32)
    matrix = normalize_rows(centres[rng.integers(0, 20, 1500)] + 0.3 * rng.standard_normal((1500, 16)))
    ids = [f"r{i}" for i in range(len(matrix))]
    db = lancedb.connect(str(tmp_path_factory.mktemp("ann")))
    table = db.create_table("t", pa.table({ID: ids, "dense": to_vector_array(matrix)}))
    create_index(table, plan_index("dense", len(ids), 16))
    return db.open_table("t"), matrix, ids


def test_ann_neighbors_rescore_exactly_exclude_self_and_find_the_true_neighbours(indexed_table):
    table, matrix, ids = indexed_table
    op = AnnNeighbors(table, "dense", k=10, metric="l2", nprobes=1, refine_factor=10, queries_per_call=64)
    picked = list(range(0, 1500, 15))
    batch = pa.table({ID: [ids[i] for i in picked], "dense": to_vector_array(matrix[picked])})
    found = graph_lists(op(batch))
    expected = brute_force(matrix, ids, 10)
    position = {doc: i for i, doc in enumerate(ids)}
    for doc, neighbours in found.items():
        assert doc not in [n for n, _ in neighbours] and len(neighbours) == 10
        for neighbor, score in neighbours:  # every reported score is the exact dot product
            assert score == pytest.approx(float(matrix[position[doc]] @ matrix[position[neighbor]]), abs=1e-5)
        assert [s for _, s in neighbours] == sorted((s for _, s in neighbours), reverse=True)
    truth = {doc: [n for n, _ in expected[doc]] for doc in found}
    assert recall_at_k({doc: [n for n, _ in v] for doc, v in found.items()}, truth, 10) >= 0.95


def test_sample_topk_blocks_merge_to_the_exact_neighbours():
    matrix, ids = tied_vectors(90, seed=8)
    sample = [4, 40, 77]
    op = SampleTopK(matrix[sample], [ids[i] for i in sample], "v", 5, chunk_rows=7)  # chunks inside a batch
    parts = [op(pa.table({ID: ids[a:b], "v": to_vector_array(matrix[a:b])})) for a, b in ((0, 30), (30, 60),
                                                                                           (60, 90))]
    assert all(part.num_rows <= 3 * 5 for part in parts)
    best = best_of(parts, 5)
    expected = brute_force(matrix, ids, 5)
    for q, row in enumerate(sample):
        mine = best.filter(pa.compute.equal(best.column("query"), q))
        assert mine.column(ID).to_pylist() == [n for n, _ in expected[ids[row]]]
        np.testing.assert_allclose(mine.column(SCORE).to_numpy(), [s for _, s in expected[ids[row]]], atol=1e-6)


def test_recall_at_k_counts_the_overlap():
    assert recall_at_k({"a": ["x", "y"], "b": ["z"]}, {"a": ["x", "q"], "b": ["z", "w"]}, 2) == pytest.approx(0.5)


def test_cli_pin_options_reach_the_job(tmp_path):
    """`neighbors --version N / --tag NAME` read that snapshot (the job's pin; the pipeline's tests run it), one
    or the other; `--tag serving` is the default read, not a pin."""
    from operators.tables import Pin
    from pipelines.cli import parse_args
    from pipelines.commands.options import job_from_args
    from pipelines.neighbors import NeighborsJob
    from tests.cli_runs import cli_error

    def job(*options: str) -> NeighborsJob:
        args, _ = parse_args(["neighbors", str(tmp_path), "--table", "docs", *options])
        return job_from_args(NeighborsJob, args)

    assert job("--tag", "golden").pin == Pin(tag="golden")
    assert job("--version", "3").pin == Pin(version=3)
    assert job().pin == job("--tag", "serving").pin == Pin()
    assert "not allowed with argument" in cli_error("neighbors", str(tmp_path), "--table", "docs", "--version", "2",
                                                    "--tag", "x", status=2, alone=True)
