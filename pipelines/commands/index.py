"""`embedlake index OUTPUT --table T`: ANN indexes on the dense columns (parameters from table size, recall
against exact search reported) and the sparse inverted index brought up to date."""

from __future__ import annotations

import argparse

from operators.search.index_plan import IndexType
from pipelines.commands.options import add_reader_options, job_from_args, name_list


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "index", job="pipelines.index:IndexJob", help="build ANN indexes (and the sparse inverted index) for a table",
        description="Build an ANN index per dense vector column with parameters chosen from the table size, "
                    "report each index's recall@k against exact search, and refresh the sparse index.")
    add_reader_options(parser, pin=False)  # indexes are built for the serving version only
    parser.add_argument("--columns", type=name_list, help="comma-separated dense columns (default: every dense column)")
    parser.add_argument("--index-type", choices=list(IndexType), help="auto is IVF_HNSW_SQ")
    parser.add_argument("--min-rows", type=int, help="skip tables smaller than this: exact search is fast there")
    parser.add_argument("--sample", type=int, help="queries for the recall measurement")
    parser.add_argument("--k", type=int, help="cut-off of the recall measurement")
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.index import IndexJob, run_index

    return run_index(job_from_args(IndexJob, args))
