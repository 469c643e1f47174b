"""The clustering job: fit spherical k-means on a sample of a table's vectors, assign every row with Ray Data.

Reads table T's vector column, fits on at most `256 * k` sampled rows (the driver), ships the centroids to
Ray Data tasks that assign every row, and streams (id, cluster, distance) into T_clusters in one commit;
T_centroids gets the centroids and their sizes. Quality: cluster sizes (and NMI / ARI / V-measure against
a labels column) over all rows; silhouette and Davies-Bouldin on the fitted sample, which is every row when
the table has at most 256 * k rows. PNGs of the sizes and of a 2-D projection, plus the JSON, go to a report
folder: OUTPUT/<T>_cluster_report/ for a local OUTPUT, ./<T>_cluster_report/ otherwise, or --plot-dir.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from operators.cluster import (
    DEFAULT_MAX_POINTS_PER_CENTROID,
    DEFAULT_NITER,
    DEFAULT_SEED,
    DEFAULT_SILHOUETTE_SAMPLE,
    CentroidAssigner,
    KMeansConfig,
    assign,
    cluster_sizes,
    fit_spherical_kmeans,
    internal_metrics,
    label_metrics,
)
from operators.cluster_plots import plot_projection, plot_sizes
from operators.errors import check_positive
from operators.schema import (
    CENTROID,
    CLUSTER,
    CLUSTERS_SCHEMA,
    DENSE,
    ID,
    SIZE,
    centroids_schema,
    centroids_table_name,
    clusters_table_name,
    require_columns,
    vector_dim,
)
from operators.tables import Lake, Pin, check_table_name
from operators.vectors import as_matrix, to_vector_array
from pipelines.downstream import Stopwatch, is_local_uri, local_path, read_ray_dataset, sample_rows, using_ray

log = logging.getLogger(__name__)

# The projection plot shows at most this many sampled rows.
PROJECTION_SAMPLE = 5_000


@dataclass(frozen=True)
class ClusterJob:
    """One clustering run's options (pipelines/commands/cluster.py says what each means)."""

    uri: str
    table: str
    k: int
    column: str = DENSE
    labels_column: str | None = None
    niter: int = DEFAULT_NITER
    nredo: int = 1
    seed: int = DEFAULT_SEED
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID
    silhouette_sample: int = DEFAULT_SILHOUETTE_SAMPLE
    plot_dir: str | None = None
    address: str | None = None
    version: int | None = None  # read this table version instead of the serving one
    tag: str | None = None  # or the version with this tag
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)
        check_positive(self, "k", "niter", "nredo", "max_points_per_centroid", "silhouette_sample")


def report_dir(uri: str, table: str, plot_dir: str | None) -> str:
    """Where the PNGs and JSON go: --plot-dir, else beside the tables for a local OUTPUT, else ./"""
    if plot_dir:
        return plot_dir
    base = local_path(uri) if is_local_uri(uri) else "."
    return os.path.join(base, f"{table}_cluster_report")


def run_cluster(job: ClusterJob) -> dict:
    """Fit, assign every row, write T_clusters and T_centroids, score, plot; returns the JSON summary."""
    watch = Stopwatch()
    config = KMeansConfig(
        k=job.k,
        niter=job.niter,
        nredo=job.nredo,
        seed=job.seed,
        max_points_per_centroid=job.max_points_per_centroid,
    )
    lake = Lake(job.uri, job.storage)
    dataset = lake.table(job.table).snapshot(Pin(job.version, job.tag))
    where = f"table {job.table!r}"
    dim = vector_dim(dataset.schema, job.column, where)
    if job.labels_column:
        require_columns(dataset.schema, [job.labels_column], where, "--labels-column")
    rows = dataset.count_rows()
    if rows < job.k:
        msg = f"table {job.table!r} has {rows} rows, fewer than k={job.k}"
        raise ValueError(msg)

    with watch.stage("sample"):
        sample_columns = [job.column] + ([job.labels_column] if job.labels_column else [])
        sample = sample_rows(dataset, config.sample_rows, sample_columns, job.seed)
        sample_vectors = as_matrix(sample.column(job.column))
    log.info("fitting k=%d on %d of %d rows (%s, %d-d)", job.k, len(sample_vectors), rows, job.column, dim)
    with watch.stage("fit"):
        centroids = fit_spherical_kmeans(sample_vectors, config)

    passthrough = (job.labels_column,) if job.labels_column else ()
    collected = _Collector(job.k, job.labels_column)
    with using_ray(job.address, watch), watch.stage("assign_and_write"):
        assigned = read_ray_dataset(lake, dataset, [ID, job.column, *passthrough], dim).map_batches(
            CentroidAssigner(centroids, job.column, passthrough), batch_format="pyarrow", batch_size=None
        )
        lake.write_table(clusters_table_name(job.table), CLUSTERS_SCHEMA, collected.consume(assigned))
        sizes = collected.sizes
        centroid_rows = {
            CLUSTER: pa.array(np.arange(job.k, dtype=np.int32)),
            CENTROID: to_vector_array(centroids),
            SIZE: pa.array(sizes.astype(np.int64)),
        }
        lake.write_table(centroids_table_name(job.table), centroids_schema(dim), [pa.table(centroid_rows)])

    result = {
        "table": job.table,
        "uri": job.uri,
        "table_version": dataset.version,
        "column": job.column,
        "k": job.k,
        "rows": int(sizes.sum()),
    }
    with watch.stage("metrics"):
        sample_clusters, _ = assign(sample_vectors, centroids)
        result.update(internal_metrics(sample_vectors, sample_clusters, job.silhouette_sample, job.seed))
        result["metrics_sample_rows"] = int(len(sample_vectors))
        result["silhouette_sample_rows"] = int(min(len(sample_vectors), job.silhouette_sample))
        result["sizes"] = sizes.tolist()
        result["empty_clusters"] = int(np.count_nonzero(sizes == 0))
        if job.labels_column:
            result.update(label_metrics(collected.labels(), collected.clusters()))
            result["labels_column"] = job.labels_column
    result["clusters_table"] = clusters_table_name(job.table)
    result["centroids_table"] = centroids_table_name(job.table)
    with watch.stage("plots"):
        labels = sample.column(job.labels_column) if job.labels_column else None
        result["plots"] = _plots(job, sizes, sample_vectors, sample_clusters, labels)
    result["seconds"] = watch.summary()
    _write_report(result)
    return result


class _Collector:
    """Passes assigned batches on to the writer while keeping what the metrics need: per-cluster counts,
    and the cluster and label of every row when labels are scored (two small columns, never the vectors)."""

    def __init__(self, k: int, labels_column: str | None) -> None:
        self.sizes = np.zeros(k, dtype=np.int64)
        self.labels_column = labels_column
        self._clusters: list[np.ndarray] = []
        self._labels: list[pa.ChunkedArray | pa.Array] = []

    def consume(self, dataset):
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            clusters = batch.column(CLUSTER).to_numpy()
            self.sizes += cluster_sizes(clusters, len(self.sizes))
            if self.labels_column:
                self._clusters.append(clusters)
                self._labels.append(batch.column(self.labels_column))
            yield batch

    def clusters(self) -> np.ndarray:
        return np.concatenate(self._clusters) if self._clusters else np.empty(0, dtype=np.int32)

    def labels(self) -> pa.ChunkedArray:
        chunks = [c for part in self._labels for c in (part.chunks if isinstance(part, pa.ChunkedArray) else [part])]
        return pa.chunked_array(chunks)


def _plots(job: ClusterJob, sizes, vectors, clusters, labels) -> dict[str, str]:
    folder = report_dir(job.uri, job.table, job.plot_dir)
    os.makedirs(folder, exist_ok=True)
    title = f"{job.table}.{job.column} k={job.k}"
    shown = np.random.default_rng(job.seed).permutation(len(vectors))[:PROJECTION_SAMPLE]
    return {
        "sizes": plot_sizes(sizes, os.path.join(folder, "cluster_sizes.png"), title),
        "projection": plot_projection(
            vectors[shown],
            clusters[shown],
            os.path.join(folder, "projection.png"),
            title,
            labels=None if labels is None else labels.take(pa.array(shown)).to_numpy(zero_copy_only=False),
            seed=job.seed,
        ),
    }


def _write_report(result: dict) -> None:
    folder = os.path.dirname(result["plots"]["sizes"])
    path = os.path.join(folder, "cluster_report.json")
    result["report"] = path
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
