"""`embedlake cluster OUTPUT --table T --k N`: spherical k-means over a vector column, assigned by Ray."""

from __future__ import annotations

import argparse

from operators.cluster import DEFAULT_MAX_POINTS_PER_CENTROID, DEFAULT_NITER, DEFAULT_SEED
from operators.schema import DENSE
from operators.storage import redacted_errors
from pipelines.storage_cli import add_storage_option, storage_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cluster",
        help="cluster a vector column with spherical k-means; writes T_clusters and T_centroids",
        description="Fit spherical k-means (faiss) on a sample of at most 256*k rows, assign every row in "
        "parallel with Ray Data, write T_clusters (id, cluster, distance) and T_centroids, and report "
        "silhouette and Davies-Bouldin (on the fitted sample), cluster sizes, and NMI/ARI/V-measure against "
        "--labels-column. PNGs and the JSON go to OUTPUT/T_cluster_report/ (or --plot-dir).",
    )
    parser.add_argument("output", help="LanceDB URI: a local folder or s3://bucket/path")
    parser.add_argument("--table", required=True)
    parser.add_argument("--k", type=int, required=True, help="number of clusters")
    parser.add_argument("--column", default=DENSE, help="vector column: dense or any dense_<d> (default dense)")
    parser.add_argument("--labels-column", default=None, help="known labels to score against (NMI, ARI, V)")
    parser.add_argument("--niter", type=int, default=DEFAULT_NITER, help="k-means iterations")
    parser.add_argument("--nredo", type=int, default=1, help="k-means restarts; the best objective wins")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--max-points-per-centroid",
        type=int,
        default=DEFAULT_MAX_POINTS_PER_CENTROID,
        help="fit on at most this many sampled rows per cluster (faiss' default 256)",
    )
    parser.add_argument("--plot-dir", default=None, help="folder for the PNGs and JSON report")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    add_storage_option(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.cluster import ClusterJob, run_cluster

    job = ClusterJob(
        uri=args.output,
        table=args.table,
        k=args.k,
        column=args.column,
        labels_column=args.labels_column,
        niter=args.niter,
        nredo=args.nredo,
        seed=args.seed,
        max_points_per_centroid=args.max_points_per_centroid,
        plot_dir=args.plot_dir,
        address=args.address,
        storage=storage_from_args(args),
    )
    with redacted_errors(job.storage):
        return run_cluster(job)
