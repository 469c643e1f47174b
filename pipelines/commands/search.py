"""`embedlake search OUTPUT --table T --query TEXT`: the k best rows for one query, in any mode."""

from __future__ import annotations

import argparse

from operators.search.hybrid import FUSIONS, WEIGHTED, parse_weights
from operators.search.retriever import DEFAULT_FUNNEL_SHORTLIST, DEFAULT_SHORTLIST, SEARCH_MODES, search
from operators.storage import redacted_errors
from pipelines.storage_cli import add_storage_option, storage_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("search", help="query a table written by embed",
                                   description="Query a table: dense (any nested column, optional Matryoshka "
                                               "funnel), sparse, colbert or hybrid. Prints {id, score}, best first.")
    parser.add_argument("output", help="LanceDB URI the table lives in")
    parser.add_argument("--table", default="docs")
    wanted = parser.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--query", help="query text (encoded with the model's query prompt)")
    wanted.add_argument("--like", metavar="ID", help="the items nearest this stored item (itself excluded)")
    parser.add_argument("--mode", choices=SEARCH_MODES, default="dense")
    parser.add_argument("--column", help="dense mode: vector column, dense (default) or dense_<d>")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--weights", help="hybrid weights dense,sparse[,colbert] (default 0.4,0.2,0.4)")
    parser.add_argument("--fusion", choices=FUSIONS, default=WEIGHTED,
                        help="hybrid: BGE-M3's weighted sum (default) or reciprocal-rank fusion")
    parser.add_argument("--funnel", help="dense mode: shortlist with this nested column (dense_64 or 64), "
                                         "re-rank with --column")
    parser.add_argument("--shortlist", type=int, default=DEFAULT_SHORTLIST,
                        help="first-stage candidates for colbert and hybrid (each of dense and sparse)")
    parser.add_argument("--funnel-shortlist", type=int, default=DEFAULT_FUNNEL_SHORTLIST,
                        help="rows the funnel's small nested column shortlists for re-ranking with the full vector")
    parser.add_argument("--exact", action="store_true", help="exact scan even where an ANN index exists")
    parser.add_argument("--model", help="encoder for the queries when the table carries no metadata")
    add_storage_option(parser)
    return parser


def run(args: argparse.Namespace) -> list[dict]:
    storage = storage_from_args(args)
    with redacted_errors(storage):
        return _search(args, storage)


def _search(args: argparse.Namespace, storage: dict) -> list[dict]:
    if args.like is not None:
        return _like(args, storage)
    return search(
        args.output,
        args.table,
        args.query,
        mode=args.mode,
        column=args.column,
        k=args.k,
        weights=parse_weights(args.weights),
        fusion=args.fusion,
        funnel=args.funnel,
        shortlist=args.shortlist,
        funnel_shortlist=args.funnel_shortlist,
        exact=args.exact,
        model=args.model,
        storage=storage,
    )


def _like(args: argparse.Namespace, storage: dict) -> list[dict]:
    from operators.search.like import search_like
    from operators.search.retriever import Retriever

    retriever = Retriever(args.output, args.table, model=args.model, shortlist=args.shortlist, exact=args.exact,
                          funnel_shortlist=args.funnel_shortlist, storage=storage)
    return search_like(retriever, args.like, k=args.k, mode=args.mode, column=args.column,
                       weights=parse_weights(args.weights), fusion=args.fusion, funnel=args.funnel)
