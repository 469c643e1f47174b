"""`embedlake neighbors OUTPUT --table T --k 10`: every row's k nearest neighbours, as a Ray job.
Options are NeighborsJob's fields (pipelines/commands/options.py), which hold the defaults."""

from __future__ import annotations

import argparse

from operators.search.index_plan import IndexType
from pipelines.commands.options import add_reader_options, job_from_args

METHODS = ("auto", "exact", "ivf", "ann")  # pipelines/neighbors.py Method (not imported: --help stays light)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "neighbors",
        job="pipelines.neighbors:NeighborsJob",
        help="the k-NN graph: every row's k nearest rows in T_neighbors (id, neighbor, rank, score)",
        description="Every row's k nearest other rows by cosine similarity, written to T_neighbors in one "
        "commit by Ray workers. Exact (ties by id, as search) on tables up to --exact-max-rows rows, else ivf: "
        "rows grouped into ~sqrt(rows) k-means partitions, each partition's rows scored exactly against the "
        "rows of its --probes nearest partitions. ann queries the ANN index of the version read instead (built "
        "for the serving version, and published with it, when missing). ivf and ann report recall@k against "
        "exact search on --recall-sample sampled rows.",
    )
    add_reader_options(parser, table_required=True, ray=True)
    parser.add_argument("--k", type=int, help="neighbours per row")
    parser.add_argument("--column", help="vector column: dense or any dense_<d>")
    parser.add_argument("--method", choices=METHODS, help="auto: exact up to --exact-max-rows rows, ivf beyond; "
                                                          "ann: one ANN index query per row (slower)")
    parser.add_argument("--exact-max-rows", type=int, help="largest table scored exactly by --method auto")
    parser.add_argument("--recall-sample", type=int,
                        help="rows whose exact neighbours check the ANN graph's recall (0: skip)")
    parser.add_argument("--index-type", choices=list(IndexType), help="the ANN index to build when the column has "
                                                                      "none")
    parser.add_argument("--partitions", type=int, help="ivf: k-means partitions (default: ~sqrt(rows))")
    parser.add_argument("--probes", type=int, help="ivf: partitions each partition's rows are scored against, "
                                                   "its own included (more: higher recall, proportionally slower)")
    parser.add_argument("--work-dir", help="ivf: scratch folder every Ray node can read (default: "
                                           "OUTPUT/.embedlake_work for a local OUTPUT, else the temporary folder); "
                                           "removed afterwards")
    parser.add_argument("--seed", type=int, help="the ivf k-means sample and the recall sample")
    parser.add_argument("--actors", type=int, help="scoring actors (default: one per CPU)")
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.neighbors import NeighborsJob, run_neighbors

    return run_neighbors(job_from_args(NeighborsJob, args))
