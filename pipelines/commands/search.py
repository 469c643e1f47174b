"""`embedlake search OUTPUT --table T --query TEXT | --like ID`: the k best rows for one query, or the rows
nearest a stored item, in any mode."""

from __future__ import annotations

import argparse

from operators.scoring import Fusion
from operators.search.retriever import SearchMode
from pipelines.commands.options import add_reader_options, job_from_args, weights_list


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("search", job="pipelines.search:SearchJob", help="query a table written by embed",
                                   description="Query a table: dense (any nested column, optional Matryoshka "
                                               "funnel), sparse, colbert or hybrid. Prints {id, score}, best first.")
    add_reader_options(parser)
    wanted = parser.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--query", help="query text (encoded with the model's query prompt)")
    wanted.add_argument("--like", metavar="ID", help="the items nearest this stored item (itself excluded)")
    parser.add_argument("--mode", choices=list(SearchMode),
                        help="colbert and hybrid re-rank the dense and sparse shortlists; auto picks one per query "
                             "by the table's routing rule (evaluate --tune-routing; without one, the hybrid at "
                             "--weights where the table has a second mode, else dense)")
    parser.add_argument("--column", help="dense mode: vector column, dense (default) or dense_<d>, or a quantised copy "
                                         "(dense_int8, dense_64_bin, ...: embed --quantize); with --funnel, the "
                                         "column that re-ranks the shortlist")
    parser.add_argument("--k", type=int, help="rows to return")
    parser.add_argument("--weights", type=weights_list,
                        help="hybrid weights dense,sparse[,colbert] (with --mode auto: the default rule's, when the "
                             "table keeps no tuned rule)")
    parser.add_argument("--fusion", choices=list(Fusion),
                        help="hybrid: BGE-M3's weighted sum or reciprocal-rank fusion")
    parser.add_argument("--funnel", help="dense mode: shortlist with this nested column (dense_64 or 64) or "
                                         "quantised column (dense_bin, dense_64_bin, dense_int8), re-rank with "
                                         "--column")
    parser.add_argument("--rescore-multiplier", type=int,
                        help="funnel shortlist = k x this (default 100 for _bin, 10 for _int8; a nested float "
                             "funnel uses --funnel-shortlist)")
    parser.add_argument("--shortlist", type=int,
                        help="first-stage candidates for colbert and hybrid (each of dense and sparse)")
    parser.add_argument("--funnel-shortlist", type=int,
                        help="rows the funnel's small nested column shortlists for re-ranking with the full vector")
    parser.add_argument("--exact", action="store_true", help="exact scan even where an ANN index exists")
    parser.add_argument("--group-by", choices=["doc"],
                        help="a passage table (embed --chunk-tokens): documents ranked by their best passage, each "
                             "with that passage and its character span")
    parser.add_argument("--model", help="encoder for the queries when the table carries no metadata")
    return parser


def run(args: argparse.Namespace) -> list[dict]:
    from pipelines.search import SearchJob, run_search

    return run_search(job_from_args(SearchJob, args))


def describe(hits: list[dict], args: argparse.Namespace) -> str:
    from pipelines.search import SearchJob, format_hits, kept_text

    job = job_from_args(SearchJob, args)
    return format_hits(hits, kept_text(job, [hit.get("passage", hit["id"]) for hit in hits]))
