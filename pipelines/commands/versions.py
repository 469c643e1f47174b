"""`embedlake versions OUTPUT --table T`: the versions of a table a reader can pin (serving, previous runs,
tagged ones), with model, time, rows and bytes, and the recent runs; `--tag NAME` pins a version for good."""

from __future__ import annotations

import argparse

from operators.maintenance import bytes_on_disk
from operators.run_log import read_runs
from operators.serving import SERVING, list_versions, pin_tag, serving_version, unpin_tag
from pipelines.commands.options import add_reader_options, opened_table

RECENT_RUNS = 10


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "versions", help="list a table's serving and previous runs' versions; tag one to keep it",
        description="List the versions of a table readers can pin (--version N / --tag NAME on search, evaluate, "
                    "cluster, dedup, classify, neighbors): the serving one, earlier runs' that maintain keeps, "
                    "tagged ones, and an unfinished run's, with model, time, rows and bytes, and the table's recent "
                    "runs (<T>_runs). "
                    "--tag NAME [--version N] tags a version (default the serving one) so that maintain never "
                    "removes it; --untag NAME removes such a tag.")
    add_reader_options(parser, pin=False)  # its own --tag/--version name the version to tag
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--tag", default=None, metavar="NAME", help="tag a version NAME (kept by maintain)")
    action.add_argument("--untag", default=None, metavar="NAME", help="remove your tag NAME")
    parser.add_argument("--version", type=int, default=None, metavar="N", help="with --tag: the version to tag")
    return parser


def run(args: argparse.Namespace) -> dict | None:
    with opened_table(args) as target:
        lake = target.lake
        if args.version is not None and args.tag is None:
            msg = "--version goes with --tag NAME (the version to tag)"
            raise ValueError(msg)
        if args.tag is not None:
            return pin_tag(target, args.tag, args.version)
        if args.untag is not None:
            return unpin_tag(target, args.untag)
        runs = read_runs(lake, target.name)
        dataset = target.dataset()
        result = {
            "table": target.name,
            "uri": args.uri,
            "serving_version": serving_version(dataset),
            "latest_version": dataset.version,
            "versions_stored": len(dataset.versions()),
            "bytes_on_disk": bytes_on_disk(lake, target.name),
            "versions": list_versions(target, [run for run in runs if run["job"] == "embed"]),
            "runs": [_run_row(run) for run in runs[-RECENT_RUNS:]][::-1],
        }
    if args.json:
        return result
    print(_text(result))
    return None


def _run_row(run: dict) -> dict:
    counts = run["counts"]
    return {"run_id": run["run_id"], "job": run["job"], "status": run["status"], "started_at": str(run["started_at"]),
            "finished_at": str(run["finished_at"]) if run["finished_at"] else None, "model": run["model"] or None,
            **{key: counts[key] for key in ("rows_written", "rows_unchanged", "version", "serving_version",
                                            "bytes_after") if key in counts},
            **({"error": run["error"]} if run["error"] else {})}


def _text(result: dict) -> str:
    """The listing as a reader scans it: one line per version, then the recent runs."""
    lines = [f"table {result['table']} at {result['uri']}: serving version {result['serving_version']}, latest "
             f"{result['latest_version']}, {result['versions_stored']} versions stored, "
             f"{result['bytes_on_disk']:,} bytes on disk", "",
             f"{'version':>8}  {'state':<15} {'rows':>12} {'bytes':>14}  {'finished':<19}  {'tags':<24} model"]
    for entry in result["versions"]:
        rows = "" if entry["rows"] is None else f"{entry['rows']:,}"
        size = "" if entry["bytes"] is None else f"{entry['bytes']:,}"
        when = (entry["finished_at"] or entry["committed_at"] or "")[:19]
        tags = ", ".join(t for t in entry["tags"] if t != SERVING)
        lines.append(f"{entry['version']:>8}  {entry['state']:<15} {rows:>12} {size:>14}  {when:<19}  {tags:<24} "
                     f"{entry['model'] or ''}")
    lines += ["", "recent runs:"]
    for run in result["runs"]:
        lines.append(f"  {run['started_at'][:19]}  {run['job']:<8} {run['status']:<9} {run['run_id']}  "
                     f"{run['model'] or ''}" + (f"  {run['error'][:160]}" if run.get("error") else ""))
    return "\n".join(lines)
