"""`embedlake evaluate OUTPUT --table T --queries Q.parquet --qrels R.parquet`: Recall/MRR/nDCG@k of every
stored column and mode on labelled queries, a JSON report and a PNG plot next to it."""

from __future__ import annotations

import argparse

from pipelines.commands.options import add_reader_options, job_from_args, weights_list


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", job="pipelines.evaluate:EvaluateJob",
        help="retrieval quality of every column and mode on labelled queries; STS on scored pairs",
        description="Recall@k, MRR@k and nDCG@k of every stored vector column (dense, dense_<d>, their "
                    "_int8/_bin copies, sparse, colbert), the funnel at each nested size and through each quantised "
                    "column, and the hybrid, on queries with relevance labels, with bytes per row; per (query "
                    "language, document language) pair when they carry languages; and with --pairs the STS "
                    "correlations of similarity with human scores.")
    add_reader_options(parser)
    parser.add_argument("--queries", help="Parquet with query_id, text (and language: metrics per language pair)")
    parser.add_argument("--qrels", help="Parquet with query_id, doc_id, relevance (>0 relevant)")
    parser.add_argument("--pairs", help="Parquet with text_a, text_b, score: Spearman and Pearson correlation of "
                                        "the similarity with the scores at every nested size (STS)")
    parser.add_argument("--language-column", help="the table's column of document languages (embed "
                                                  "--keep-columns; default: 'language' when the table has it)")
    parser.add_argument("--k", type=int, help="cut-off of Recall@k, MRR@k and nDCG@k")
    parser.add_argument("--tune-weights", action="store_true",
                        help="grid-search hybrid weights on the qrels (with a 2-fold held-out estimate)")
    parser.add_argument("--tune-routing", action="store_true",
                        help="learn search --mode auto's rule (which mode suits which query) on the qrels, report "
                             "it against the best fixed mode with a 5-fold held-out estimate (JSON entry 'routing', "
                             "PNG .routing.png), and store it in the table's metadata (serving version only)")
    parser.add_argument("--weights", type=weights_list, help="hybrid weights dense,sparse[,colbert]")
    parser.add_argument("--shortlist", type=int,
                        help="first-stage candidates for colbert and hybrid (each of dense and sparse)")
    parser.add_argument("--funnel-shortlist", type=int,
                        help="rows the funnel's small nested column shortlists for re-ranking with the full vector")
    parser.add_argument("--rescore-multiplier", type=int,
                        help="quantised funnels (funnel_dense_bin, ...) shortlist k x this (default 100 for _bin, "
                             "10 for _int8)")
    parser.add_argument("--report", help="JSON report path (default OUTPUT/<table>.evaluation.json); "
                                         "the plot is written next to it as .png")
    parser.add_argument("--use-index", action="store_true",
                        help="rank dense columns with the ANN index, as search does, instead of exactly")
    parser.add_argument("--limit", type=int, help="evaluate only the first N queries")
    parser.add_argument("--model", help="encoder for the queries when the table carries no metadata")
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.evaluate import EvaluateJob, run_evaluate

    return run_evaluate(job_from_args(EvaluateJob, args))
