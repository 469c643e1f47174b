"""`embedlake index OUTPUT --table T`: ANN indexes on the dense columns (parameters from table size, recall
against exact search reported) and the sparse inverted index brought up to date."""

from __future__ import annotations

import argparse

from operators.search.ann import build_indexes
from operators.search.index_plan import MIN_ROWS, IndexType
from operators.storage import redacted_errors
from pipelines.storage_cli import add_storage_option, storage_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "index", help="build ANN indexes (and the sparse inverted index) for a table",
        description="Build an ANN index per dense vector column with parameters chosen from the table size, "
                    "report each index's recall@k against exact search, and refresh the sparse index.")
    parser.add_argument("output", help="LanceDB URI the table lives in")
    parser.add_argument("--table", default="docs")
    parser.add_argument("--columns", help="comma-separated dense columns (default: every dense column)")
    parser.add_argument("--index-type", choices=list(IndexType), default=IndexType.AUTO)
    parser.add_argument("--min-rows", type=int, default=MIN_ROWS,
                        help=f"skip tables smaller than this (default {MIN_ROWS}): exact search is fast there")
    parser.add_argument("--sample", type=int, default=100, help="queries for the recall measurement")
    parser.add_argument("--k", type=int, default=10)
    add_storage_option(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    storage = storage_from_args(args)
    with redacted_errors(storage):
        return build_indexes(args.output, args.table, columns=columns, index_type=args.index_type,
                             min_rows=args.min_rows, sample=args.sample, k=args.k, storage=storage)
