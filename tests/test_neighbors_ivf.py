"""The ivf k-NN graph's operators (no Ray): with every partition probed it is the exact graph (self excluded,
ties by id); with a few probes on clustered rows it keeps nearly all true neighbours; probe lists grow until
they hold k + 1 rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators import neighbors_ivf as ivf
from operators.neighbors import ID, recall_at_k
from operators.vectors import normalize_rows, to_vector_array
from tests.test_neighbors import brute_force, graph_lists, tied_vectors


def assigned(matrix: np.ndarray, ids: list[str], partitions: int, seed: int = 1) -> tuple[pa.Table, np.ndarray]:
    centroids = ivf.fit_centroids(matrix, partitions, seed)
    rows = ivf.PartitionAssigner(centroids, np.zeros(len(centroids), np.int32), "v")(
        pa.table({ID: ids, "v": to_vector_array(matrix)}))
    return rows, centroids


def graph(rows: pa.Table, centroids: np.ndarray, probes: int, k: int, split: int = 2) -> dict:
    sizes = np.bincount(rows.column(ivf.PARTITION).to_numpy(), minlength=len(centroids))
    lists = ivf.probe_lists(centroids, sizes, probes, k)
    targets = [p for p in range(len(centroids)) if sizes[p]]
    op = ivf.PartitionedNeighbors("v", k)
    parts = [op(rows, chunk.tolist(), [lists[p] for p in chunk]) for chunk in np.array_split(targets, split)]
    return graph_lists(pa.concat_tables(parts))


@pytest.mark.parametrize("k", [1, 5])
def test_every_partition_probed_is_the_exact_graph_with_ties_by_id(k):
    matrix, ids = tied_vectors()
    rows, centroids = assigned(matrix, ids, 6)
    found = graph(rows, centroids, probes=len(centroids), k=k)
    expected = brute_force(matrix, ids, k)
    assert found.keys() == expected.keys()
    for doc in ids:
        assert [n for n, _ in found[doc]] == [n for n, _ in expected[doc]], doc
        np.testing.assert_allclose([s for _, s in found[doc]], [s for _, s in expected[doc]], atol=1e-6)


def test_few_probes_on_clustered_rows_keep_the_true_neighbours():
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((25, 16)).astype(np.float32)
    matrix = normalize_rows(centres[rng.integers(0, 25, 1500)] + 0.3 * rng.standard_normal((1500, 16)))
    ids = [f"r{i:04d}" for i in rng.permutation(1500)]
    rows, centroids = assigned(matrix, ids, ivf.partition_count(1500))
    found = graph(rows, centroids, probes=4, k=10, split=3)
    assert all(len(found[doc]) == 10 and doc not in [n for n, _ in found[doc]] for doc in ids)
    exact = brute_force(matrix, ids, 10)
    assert recall_at_k({d: [n for n, _ in v] for d, v in found.items()},
                       {d: [n for n, _ in v] for d, v in exact.items()}, 10) >= 0.95


def test_probe_lists_start_with_the_partition_skip_empty_ones_and_hold_k_plus_one_rows():
    centroids = normalize_rows(np.asarray([[1, 0], [0.9, 0.1], [0, 1], [-1, 0], [0.8, 0.3]], dtype=np.float32))
    sizes = np.asarray([2, 0, 3, 5, 1])
    lists = ivf.probe_lists(centroids, sizes, probes=2, k=1)
    assert lists[0].tolist() == [0, 4]  # partition 1 is empty
    lists = ivf.probe_lists(centroids, sizes, probes=1, k=6)  # 7 rows needed
    assert lists[0].tolist() == [0, 4, 2, 3] and lists[3].tolist() == [3, 2]
    assert lists[1][0] == 1  # an empty partition's list still starts with it


def test_partitions_and_buckets():
    assert ivf.partition_count(1_000_000) == 1000 and ivf.partition_count(3) == 2 and ivf.partition_count(10, 50) == 10
    centroids = normalize_rows(np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    bucket = ivf.bucket_of_partitions(centroids, 5, seed=1)
    assert bucket.shape == (40,) and set(bucket.tolist()) == set(range(bucket.max() + 1)) and bucket.max() < 5
    assert ivf.bucket_of_partitions(centroids, 50, 1).tolist() == list(range(40))
    assert ivf.PartitionedNeighbors("v", 3)(pa.table({ID: ["a"], ivf.PARTITION: pa.array([0], pa.int32()),
                                                  "v": to_vector_array(np.ones((1, 2), np.float32))}),
                                         [0], [np.asarray([0])]).num_rows == 0  # one row: no neighbours
