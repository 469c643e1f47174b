"""Spherical k-means on unit vectors: fit on a sample, assign any batch, score the result.

Fitting is the expensive, sequential part, so it runs once on a sample of at most
`max_points_per_centroid * k` rows (what faiss itself would subsample to); assigning a row to its nearest
centroid is cheap and independent per row, so it is a plain batch transform that a pipeline can run on
every row in parallel. Distances are cosine distances (1 - cosine similarity), the geometry SemDeDup and
MTEB clustering use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from operators.schema import CLUSTER, DISTANCE, ID
from operators.vectors import as_matrix, normalize_rows

# faiss' own defaults: 25 Lloyd iterations, at most 256 training points per centroid.
DEFAULT_NITER = 25
DEFAULT_MAX_POINTS_PER_CENTROID = 256
DEFAULT_SEED = 1234
# Silhouette is O(n^2); score it on this many rows at most.
DEFAULT_SILHOUETTE_SAMPLE = 10_000
# sklearn's default 1 GB of distance chunks is most of the job's peak memory; 64 MB chunks are as fast.
SKLEARN_WORKING_MB = 64
# Rows per faiss search call when assigning, so the (rows x k) score matrix stays small.
ASSIGN_CHUNK = 16_384


@dataclass(frozen=True)
class KMeansConfig:
    """How to fit: k centroids, faiss iterations, restarts (the best objective wins), seed, and the
    per-centroid cap on training points."""

    k: int
    niter: int = DEFAULT_NITER
    nredo: int = 1
    seed: int = DEFAULT_SEED
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID

    def __post_init__(self) -> None:
        if self.k < 1:
            msg = f"k must be at least 1, got {self.k}"
            raise ValueError(msg)
        if self.niter < 1 or self.nredo < 1:
            msg = f"niter and nredo must be at least 1, got {self.niter} and {self.nredo}"
            raise ValueError(msg)

    @property
    def sample_rows(self) -> int:
        """How many rows to fit on: faiss would subsample anything larger to this."""
        return self.k * self.max_points_per_centroid


def fit_spherical_kmeans(vectors: np.ndarray, config: KMeansConfig) -> np.ndarray:
    """Unit-length (k, D) float32 centroids of spherical k-means (faiss) on the (normalised) rows."""
    import faiss

    x = normalize_rows(vectors)
    if x.shape[0] < config.k:
        msg = f"cannot fit k={config.k} clusters on {x.shape[0]} rows"
        raise ValueError(msg)
    kmeans = faiss.Kmeans(
        x.shape[1],
        config.k,
        niter=config.niter,
        nredo=config.nredo,
        seed=config.seed,
        spherical=True,
        max_points_per_centroid=config.max_points_per_centroid,
        # k may exceed n / 39 on small inputs; that is allowed, just less stable.
        min_points_per_centroid=1,
        verbose=False,
    )
    kmeans.train(x)
    return normalize_rows(kmeans.centroids)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row by cosine: (cluster int32, cosine distance float32)."""
    import faiss

    x = normalize_rows(vectors)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    clusters = np.empty(x.shape[0], dtype=np.int32)
    distances = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], ASSIGN_CHUNK):
        scores, ids = index.search(x[start : start + ASSIGN_CHUNK], 1)
        clusters[start : start + ASSIGN_CHUNK] = ids[:, 0]
        distances[start : start + ASSIGN_CHUNK] = 1.0 - scores[:, 0]
    np.clip(distances, 0.0, 2.0, out=distances)
    return clusters, distances


class CentroidAssigner:
    """Batch transform: (id, vector column, passthrough...) -> (id, cluster, distance, passthrough...).

    Holds the fitted centroids, so a pipeline ships them to each worker once.
    """

    def __init__(self, centroids: np.ndarray, column: str, passthrough: tuple[str, ...] = ()) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.column = column
        self.passthrough = passthrough

    def __call__(self, batch: pa.Table) -> pa.Table:
        clusters, distances = assign(as_matrix(batch.column(self.column)), self.centroids)
        columns = {ID: batch.column(ID), CLUSTER: pa.array(clusters), DISTANCE: pa.array(distances)}
        columns.update({name: batch.column(name) for name in self.passthrough})
        return pa.table(columns)


def cluster_sizes(clusters: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(clusters, dtype=np.int64), minlength=k)


def internal_metrics(
    vectors: np.ndarray,
    clusters: np.ndarray,
    silhouette_sample: int = DEFAULT_SILHOUETTE_SAMPLE,
    seed: int = DEFAULT_SEED,
) -> dict[str, float | None]:
    """Silhouette (cosine, on at most `silhouette_sample` rows) and Davies-Bouldin (Euclidean, all rows).

    Both are sklearn's definitions; each is None where it is undefined (fewer than 2 clusters, or every row
    its own cluster).
    """
    import sklearn
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    x = normalize_rows(vectors)
    n_labels = len(np.unique(clusters))
    if not 2 <= n_labels < x.shape[0]:
        return {"silhouette": None, "davies_bouldin": None}
    sample = None if x.shape[0] <= silhouette_sample else silhouette_sample
    with sklearn.config_context(working_memory=SKLEARN_WORKING_MB):
        silhouette = silhouette_score(x, clusters, metric="cosine", sample_size=sample, random_state=seed)
    return {"silhouette": float(silhouette), "davies_bouldin": float(davies_bouldin_score(x, clusters))}


def label_codes(labels: np.ndarray | list | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Integer codes for labels of any type (nulls get their own code). sklearn's label metrics sort object
    arrays of strings three times over; on a million rows hashing them once in Arrow is ~100x faster."""
    if isinstance(labels, np.ndarray) and np.issubdtype(labels.dtype, np.integer):
        return labels
    array = (
        labels if isinstance(labels, pa.Array | pa.ChunkedArray) else pa.array(np.asarray(labels).tolist())
    )
    encoded = array.dictionary_encode()
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()


def label_metrics(
    labels: np.ndarray | list | pa.Array | pa.ChunkedArray, clusters: np.ndarray
) -> dict[str, float]:
    """Agreement with known labels: NMI, ARI and V-measure (sklearn), each 1.0 for a perfect match."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, v_measure_score

    labels = label_codes(labels)
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "v_measure": float(v_measure_score(labels, clusters)),
    }
