"""`embedlake cluster OUTPUT --table T --k N`: spherical k-means over a vector column, assigned by Ray."""

from __future__ import annotations

import argparse

from pipelines.commands.options import add_reader_options, job_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cluster",
        job="pipelines.cluster:ClusterJob",
        help="cluster a vector column with spherical k-means; writes T_clusters and T_centroids",
        description="Fit spherical k-means (faiss) on a sample of at most 256*k rows, assign every row in "
        "parallel with Ray Data, write T_clusters (id, cluster, distance) and T_centroids, and report "
        "silhouette and Davies-Bouldin (on the fitted sample), cluster sizes, and NMI/ARI/V-measure against "
        "--labels-column. PNGs and the JSON go to OUTPUT/T_cluster_report/ (or --plot-dir).",
    )
    add_reader_options(parser, table_required=True, ray=True)
    parser.add_argument("--k", type=int, required=True, help="number of clusters")
    parser.add_argument("--column", help="vector column: dense or any dense_<d>")
    parser.add_argument("--labels-column", help="known labels to score against (NMI, ARI, V)")
    parser.add_argument("--niter", type=int, help="k-means iterations")
    parser.add_argument("--nredo", type=int, help="k-means restarts; the best objective wins")
    parser.add_argument("--seed", type=int, help="seed of the sample and of k-means")
    parser.add_argument("--max-points-per-centroid", type=int,
                        help="fit on at most this many sampled rows per cluster (faiss' own cap)")
    parser.add_argument("--plot-dir", help="folder for the PNGs and JSON report")
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.cluster import ClusterJob, run_cluster

    return run_cluster(job_from_args(ClusterJob, args))
