"""The k-NN graph by partition: rows grouped by their nearest k-means centroid, each partition's rows scored
exactly against the rows of its `probes` nearest partitions with one matrix product, top-k per row.

Why: a per-row ANN query costs milliseconds of index overhead for 64 multiply-adds of useful work per
candidate; scoring a whole partition against its probed neighbours is a BLAS product whose cost is the
candidates themselves (~10^4 per row), so the graph costs a small fraction of one query per row, and its
recall is IVF's at the same probes (a row's true neighbours lie in its own or a nearby partition). The probe
lists are per partition (its centroid's nearest centroids), not per row: rows on a partition's border miss
neighbours in a partition the centroid does not probe, which the sampled recall check measures.

- `partition_count`, `fit_centroids`: ~sqrt(rows) partitions from k-means on a sample.
- `bucket_of_partitions`: nearby partitions grouped into scratch buckets (k-means on the centroids), so a
  bucket's probe lists mostly stay inside it and a scoring task reads few buckets.
- `PartitionAssigner`: a batch's rows with their partition and bucket (Ray workers write them to scratch).
- `probe_lists`: each partition's nearest non-empty partitions, itself first, enough of them for k + 1 rows.
- `PartitionedNeighbors`: the edges of some partitions' rows from the rows of their probe lists, self
  excluded, ties by id: exactly `ExactNeighbors` restricted to the probed candidates.
Plain numpy and faiss, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from operators.cluster import KMeansConfig, assign, fit_spherical_kmeans
from operators.neighbors import NEIGHBORS_SCHEMA, graph_rows, id_ranks, ordered_topk
from operators.schema import ID
from operators.vectors import as_matrix

PARTITION = "partition"
BUCKET = "bucket"
DEFAULT_PROBES = 16  # 1M x 64 clustered rows: recall@10 0.926 with 8, 0.957 with 16, 0.976 with 32 (RESULTS.md)
KMEANS_NITER = 10  # partitions only need to be compact, not optimal: recall is checked on a sample
POINTS_PER_CENTROID = 64  # k-means sample: rows per centroid (faiss' own minimum is 39)
SCORE_BLOCK = 1 << 25  # scores held at once while scoring a partition (128 MB of float32)


def partition_count(rows: int, partitions: int | None = None) -> int:
    """~sqrt(rows) partitions (1M rows: 1,000 of ~1,000 rows), so the centroids and probe lists the driver
    holds grow as sqrt(rows) and each row is scored against probes x sqrt(rows) candidates."""
    wanted = partitions or round(math.sqrt(rows))
    return max(1, min(wanted, rows))


def fit_centroids(sample: np.ndarray, partitions: int, seed: int) -> np.ndarray:
    """Unit-length (partitions, dim) centroids of spherical k-means on the sampled rows."""
    config = KMeansConfig(k=min(partitions, len(sample)), niter=KMEANS_NITER, seed=seed,
                          max_points_per_centroid=POINTS_PER_CENTROID)
    return fit_spherical_kmeans(sample, config)


def bucket_of_partitions(centroids: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """Each partition's scratch bucket (int32): nearby partitions together, from k-means on the centroids."""
    partitions = len(centroids)
    if buckets >= partitions:
        return np.arange(partitions, dtype=np.int32)
    if buckets <= 1:
        return np.zeros(partitions, dtype=np.int32)
    coarse = fit_spherical_kmeans(centroids, KMeansConfig(k=buckets, niter=KMEANS_NITER, seed=seed))
    bucket, _ = assign(centroids, coarse)
    _, dense = np.unique(bucket, return_inverse=True)  # no empty bucket numbers
    return dense.astype(np.int32)


class PartitionAssigner:
    """Batch transform: (id, vector) -> (id, partition, bucket, vector), the row's nearest centroid."""

    def __init__(self, centroids: np.ndarray, bucket_of: np.ndarray, column: str) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.bucket_of = np.asarray(bucket_of, dtype=np.int32)
        self.column = column

    def __call__(self, batch: pa.Table) -> pa.Table:
        partition, _ = assign(as_matrix(batch.column(self.column)), self.centroids)
        return pa.table({ID: batch.column(ID), PARTITION: pa.array(partition, pa.int32()),
                         BUCKET: pa.array(self.bucket_of[partition], pa.int32()),
                         self.column: batch.column(self.column)})


def probe_lists(centroids: np.ndarray, sizes: np.ndarray, probes: int, k: int,
                chunk: int = 256) -> list[np.ndarray]:
    """For each partition, the partitions its rows are scored against: itself first, then the nearest
    non-empty ones by centroid similarity (ties by number), at least `probes` partitions (all when fewer) and
    more while they hold fewer than k + 1 rows, so every row gets k neighbours when the table has them."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    sizes = np.asarray(sizes, dtype=np.int64)
    count = len(centroids)
    nearest = min(count, max(4 * probes, 64))  # ranked in full only where these hold too few rows
    lists: list[np.ndarray] = []
    for start in range(0, count, chunk):
        scores = centroids[start:start + chunk] @ centroids.T
        scores[:, sizes == 0] = -np.inf
        own = np.arange(start, min(start + chunk, count))
        scores[own - start, own] = np.inf
        top = np.argpartition(-scores, nearest - 1, axis=1)[:, :nearest] if nearest < count else \
            np.broadcast_to(np.arange(count), scores.shape)
        for row, picked in enumerate(top):
            lists.append(_ranked(scores[row], picked, sizes, probes, k) if nearest == count else
                         _ranked(scores[row], picked, sizes, probes, k, np.arange(count)))
    return lists


def _ranked(scores: np.ndarray, picked: np.ndarray, sizes: np.ndarray, probes: int, k: int,
            everything: np.ndarray | None = None) -> np.ndarray:
    """The probe list from the `picked` partitions (best first, ties by number), from `everything` when the
    picked ones hold fewer than k + 1 rows."""
    ranked = picked[np.lexsort((picked, -scores[picked]))]
    ranked = ranked[scores[ranked] > -np.inf]
    enough = int(np.searchsorted(np.cumsum(sizes[ranked]), k + 1)) + 1  # partitions holding k + 1 rows
    if enough > len(ranked) and everything is not None:
        return _ranked(scores, everything, sizes, probes, k)
    return ranked[:max(probes, enough)].astype(np.int32)


class PartitionedNeighbors:
    """Edges (id, neighbor, rank, score) of the rows of some partitions: each row's k best by dot product among
    the rows of its partition's probe list, itself excluded, ties by the smaller id (`ordered_topk`)."""

    def __init__(self, column: str, k: int) -> None:
        if k < 1:
            msg = f"--k must be at least 1, got {k}"
            raise ValueError(msg)
        self.column = column
        self.k = k

    def __call__(self, rows: pa.Table, targets: Iterable[int], probes: Sequence[np.ndarray]) -> pa.Table:
        """`rows`: (id, partition, vector) of every partition named in `probes`; `probes[i]`: the probe list
        of `targets[i]`, which starts with that partition."""
        ids = np.asarray(rows.column(ID).to_pylist(), dtype=object)
        matrix = as_matrix(rows.column(self.column))
        partition = rows.column(PARTITION).to_numpy()
        order = np.argsort(partition, kind="stable")
        bounds = np.searchsorted(partition[order], np.arange(partition.max(initial=-1) + 2))
        ranks = id_ranks(ids)
        parts = []
        for target, probe in zip(targets, probes, strict=True):
            if probe[0] != target:
                msg = f"the probe list of partition {target} must start with it, got {probe[:3]}"
                raise ValueError(msg)
            members = [order[bounds[p]:bounds[p + 1]] for p in probe if p + 1 < len(bounds)]
            if not members or len(members[0]) == 0:
                continue
            candidates = np.concatenate(members)  # the partition's own rows first: row i is candidate i
            parts.append(self._score(ids, matrix, ranks, candidates, len(members[0])))
        return pa.concat_tables(parts) if parts else NEIGHBORS_SCHEMA.empty_table()

    def _score(self, ids: np.ndarray, matrix: np.ndarray, ranks: np.ndarray, candidates: np.ndarray,
               queries: int) -> pa.Table:
        k = min(self.k, len(candidates) - 1)
        if k < 1:
            return NEIGHBORS_SCHEMA.empty_table()
        vectors = matrix[candidates]
        candidate_ranks = ranks[candidates]
        step = max(1, SCORE_BLOCK // len(candidates))
        positions = np.empty((queries, k), dtype=np.int64)
        scores = np.empty((queries, k), dtype=np.float32)
        for start in range(0, queries, step):
            stop = min(start + step, queries)
            block = vectors[start:stop] @ vectors.T
            block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # the row itself
            positions[start:stop], scores[start:stop] = ordered_topk(block, candidate_ranks, k)
        return graph_rows(ids[candidates[:queries]].tolist(), ids[candidates[positions]], scores)
