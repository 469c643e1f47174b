"""The `embedlake` command line (docs/cli.md, generated from these parsers).

Every command takes `--json` (one JSON object or list as the last line of stdout; progress on stderr)
and `--config FILE` (YAML whose keys are option names; command-line options win). A failure is one
`embedlake: ...` line on stderr and an exit status: 2 for usage (options, names, the config file), 1 for a
failure at run time, 130 when interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

import yaml

from operators.errors import Terminated, UsageError, interrupt_on_sigterm, one_line
from operators.storage import redacted_errors
from pipelines.commands.options import JobParser
from pipelines.stderr_filter import quiet_stderr_lines
from pipelines.storage_cli import storage_from_args

# Each name is a module in pipelines.commands with add_parser(subparsers) and run(args) -> result
# (pipelines/commands/__init__.py).
COMMANDS = ("embed", "train", "search", "evaluate", "index", "cluster", "dedup", "classify", "neighbors", "versions",
            "rollback", "maintain", "submit")


__all__ = ["COMMANDS", "UsageError", "build_parser", "main", "parse_args"]


def _available_commands() -> dict[str, object]:
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"pipelines.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"pipelines.commands.{name}":
                raise
    return modules


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = JobParser(prog="embedlake", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=JobParser)
    modules = _available_commands()
    for module in modules.values():
        sub = module.add_parser(subparsers)
        sub.add_argument("--json", action="store_true", default=False,
                         help="print one JSON result as the last line of stdout")
        sub.add_argument("--config", default=None,
                         help="YAML file of option values (conf/); command-line options override it")
        sub.add_argument("--verbose", action="store_true", default=False, help="debug logging on stderr")
    return parser, modules


def load_config(path: str) -> dict:
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except OSError as error:
        msg = f"config {path}: {error.strerror or one_line(error)}"
        raise UsageError(msg) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        msg = f"config {path} is not valid YAML{where}: {getattr(error, 'problem', None) or one_line(error)}"
        raise UsageError(msg) from None
    if not isinstance(config, dict):
        msg = f"config {path} must be a YAML mapping of option names to values"
        raise UsageError(msg)
    return config


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, object]]:
    """Parse twice: once to find --config, then with the file's values as defaults."""
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        config = load_config(args.config)
        subparser = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
        known = {action.dest for action in subparser._actions}  # noqa: SLF001
        unknown = sorted(str(key) for key in config if str(key).replace("-", "_") not in known)
        if unknown:
            msg = f"config {args.config} has options that '{args.command}' does not take: {', '.join(unknown)}"
            raise UsageError(msg)
        subparser.set_defaults(**{key.replace("-", "_"): value for key, value in config.items()})
        args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args, modules


# No model hub at run time, and no download/loading progress bars on a terminal meant for our own.
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def main(argv: Sequence[str] | None = None) -> int:
    import os

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    interrupt_on_sigterm()
    try:
        args, modules = parse_args(argv)
    except UsageError as error:
        print(f"embedlake: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        return interrupted(stop)
    try:
        with quiet_stderr_lines(enabled=not args.verbose), redacted_errors(storage_from_args(args)):
            logging.basicConfig(  # inside: the handler writes where Python's stderr goes while Ray's is filtered
                level=logging.DEBUG if args.verbose else logging.INFO,
                stream=sys.stderr,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            result = modules[args.command].run(args)  # no failure message may echo a credential (redacted_errors)
    except KeyboardInterrupt as stop:
        return interrupted(stop)
    except Exception as error:  # noqa: BLE001 - the CLI reports every failure as one line
        if args.verbose:
            logging.getLogger(__name__).exception("command failed")
        print(f"embedlake: error: {one_line(error)}", file=sys.stderr)
        code = getattr(error, "exit_code", None)  # e.g. a submitted job's own exit status
        return code if isinstance(code, int) and code > 0 else 1
    emit(result, as_json=args.json, describe=_describer(modules[args.command], args), full=args.verbose)
    return 0


def interrupted(stop: BaseException | None = None) -> int:
    """Ctrl-C or SIGTERM: one line, status 130 (what a shell reports for an interrupted command)."""
    what = "SIGTERM" if isinstance(stop, Terminated) else "interrupt"
    print(f"embedlake: interrupted ({what}); committed work is kept, the same command again finishes it",
          file=sys.stderr)
    return 130


def _describer(module: object, args: argparse.Namespace):
    """The command's own readable text (its `describe(result, args)`), if it has one; with --verbose the
    full result follows it."""
    describe = getattr(module, "describe", None)
    if describe is None:
        return None
    return lambda result: describe(result, args)


def emit(result: object, as_json: bool, describe=None, full: bool = False) -> None:
    """Print the result: one JSON line for --json, the command's readable text otherwise (followed by the
    full result with --verbose), else the plain key/value dump."""
    from operators.metrics import json_safe

    if describe is not None and not as_json:
        print(describe(result))
        if not full:
            return
    result = json_safe(result)  # NaN and infinities as null: the line stays valid JSON
    if as_json:
        print(json.dumps(result, default=_json_default, allow_nan=False))
        return
    if isinstance(result, list):
        for row in result:
            print("\t".join(f"{key}={value}" for key, value in row.items()))
    elif isinstance(result, dict):
        for key, value in result.items():
            print(f"{key}: {json.dumps(value, default=_json_default)}")
    elif result is not None:
        print(result)


def _json_default(value: object) -> object:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
