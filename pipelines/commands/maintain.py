"""`embedlake maintain OUTPUT --table T`: compact, bring indexes up to date, and remove the versions no retained
run needs (operators/maintenance.py); reports bytes before and after. Embed runs do this at their end."""

from __future__ import annotations

import argparse

from operators.maintenance import DEFAULT_KEEP_RUNS, Retention, maintain, parse_age
from pipelines.commands.options import add_reader_options, age, opened_table, positive_int, run_logged


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "maintain", help="compact a table, refresh its indexes and remove versions no retained run needs",
        description="Compact fragments and refresh the key, ANN and sparse indexes of the serving version (readers "
                    "move to the result, same rows), keep the versions of the last --keep-runs runs, the serving "
                    "one and every tagged one, and remove every other version older than --older-than from the "
                    "table and its _files, _runs and _quarantine tables. Reports bytes on disk before and after.")
    add_reader_options(parser, pin=False)  # maintains the serving version
    parser.add_argument("--keep-runs", type=positive_int, default=DEFAULT_KEEP_RUNS,
                        help=f"runs whose versions are kept, the serving one included (default {DEFAULT_KEEP_RUNS})")
    parser.add_argument("--older-than", type=age, default="0", metavar="AGE",
                        help="remove only versions older than this: 7d, 12h, 30m (default 0: any age)")
    return parser


def run(args: argparse.Namespace) -> dict:
    retention = Retention(args.keep_runs, parse_age(args.older_than))
    with opened_table(args) as target:
        return run_logged(target, args, "maintain", {"keep_runs": args.keep_runs, "older_than": args.older_than},
                          lambda: maintain(target.lake, target.name, retention))
