"""`embedlake rollback OUTPUT --table T`: readers go back to an earlier run's version (operators/serving.py)."""

from __future__ import annotations

import argparse

from operators.serving import rollback
from pipelines.commands.options import add_reader_options, opened_table, run_logged


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "rollback", help="serve an earlier run's version of a table again",
        description="Move the table's serving version back to the run before it (or --to-version / --to-run): "
                    "every reader answers as it did then, with that run's model, vectors and indexes. The next "
                    "embed run builds on it; a scheduled run with the rolled-back model re-applies that model.")
    add_reader_options(parser, pin=False)  # moves the serving version (--to-version / --to-run)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--to-version", type=int, default=None, metavar="N", help="serve version N")
    target.add_argument("--to-run", default=None, metavar="RUN_ID", help="serve the version this run published")
    return parser


def run(args: argparse.Namespace) -> dict:
    with opened_table(args) as target:
        return run_logged(target, args, "rollback", {"to_version": args.to_version, "to_run": args.to_run},
                          lambda: rollback(target, args.to_version, args.to_run))
