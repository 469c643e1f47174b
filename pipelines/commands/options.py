"""From the command line to a job: options are the job dataclass's fields, and their types.

Each command (pipelines/commands/<name>.py) declares its options with argparse (names, flags, help); an
option's `dest` is a field of the command's job dataclass (pipelines/<job>.py), which alone holds the
defaults: an option the user does not give stays out of the parsed namespace, so `job_from_args(Job, args)`
builds the job from what was given and the dataclass fills in the rest. The CLI and the Python API cannot
drift, and nothing is copied by hand: adding an option is a field on the job plus one `add_argument` line,
and an option that names no field fails the command. `--help` shows the job's defaults (reading the job
module then, so that a command line never imports the heavy modules of jobs it does not run).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, TypeVar

from pipelines.storage_cli import STORAGE_DEST, add_storage_option, storage_from_args

if TYPE_CHECKING:
    from operators.tables import TableRef

Job = TypeVar("Job")

# What the CLI itself parses (pipelines/cli.py), never a job's field.
CLI_DESTS = frozenset({"command", "json", "config", "verbose", "argv", "help"})


def field_defaults(job_type: type) -> dict[str, object]:
    """Each field's default value (a fresh one for fields with a default factory)."""
    defaults = {}
    for spec in fields(job_type):
        if spec.default is not MISSING:
            defaults[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            defaults[spec.name] = spec.default_factory()
    return defaults


class JobHelpFormatter(argparse.HelpFormatter):
    """Shows an option's default unless it is empty or the help already speaks of it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if not action.option_strings or hidden or "default" in text:
            return text
        if isinstance(default, list | tuple | dict):
            if not default:
                return text
            default = ",".join(str(value) for value in default)
        shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"default: {shown}"


class JobParser(argparse.ArgumentParser):
    """A sub-command's parser. With `job` ("module:Class") its options default to nothing, so the job's own
    field defaults apply; --help reads them from the job."""

    def __init__(self, *args, job: str | None = None, **kwargs) -> None:
        if job is not None:
            kwargs.setdefault("argument_default", argparse.SUPPRESS)
        kwargs.setdefault("formatter_class", JobHelpFormatter)
        super().__init__(*args, **kwargs)
        self.job = job

    def error(self, message: str):
        """Argparse's usage errors as one line (the CLI prints `embedlake: error: ...` and exits 2) instead of
        a usage block followed by the message."""
        from operators.errors import UsageError

        msg = f"{self.prog}: {message} (see {self.prog} --help)"
        raise UsageError(msg)

    def job_type(self) -> type:
        module, _, name = self.job.partition(":")
        return getattr(importlib.import_module(module), name)

    def format_help(self) -> str:
        if self.job is None:
            return super().format_help()
        defaults = field_defaults(self.job_type())
        shown = [action for action in self._actions
                 if action.default is argparse.SUPPRESS and action.dest in defaults and action.dest != STORAGE_DEST]
        for action in shown:
            action.default = defaults[action.dest]
        try:
            return super().format_help()
        finally:
            for action in shown:
                action.default = argparse.SUPPRESS


def job_from_args(job_type: type[Job], args: argparse.Namespace, **values: object) -> Job:
    """The job for parsed options: every option given (or set by --config) is the field of the same name,
    `storage` is resolved (environment, then config and --storage), `values` are the command's own."""
    names = {spec.name for spec in fields(job_type) if spec.init}
    given = {name: value for name, value in vars(args).items() if name not in CLI_DESTS and name not in values}
    unknown = sorted(set(given) - names)
    if unknown:
        msg = f"options {unknown} are not fields of {job_type.__name__}"
        raise TypeError(msg)
    if STORAGE_DEST in names:
        given[STORAGE_DEST] = storage_from_args(args)
    return job_type(**given, **values)


def add_reader_options(parser: argparse.ArgumentParser, *, table_required: bool = False, pin: bool = True,
                       ray: bool = False) -> None:
    """The options every command that reads a table embed wrote shares, declared once: OUTPUT and --table, with
    `pin` --version N / --tag NAME (the snapshot read instead of the serving one), with `ray` --address, and
    --storage. (--json, --config and --verbose are every command's: pipelines/cli.py.)"""
    add_table_arguments(parser, required=table_required)
    if pin:
        add_pin_options(parser)
    if ray:
        add_address_option(parser)
    add_storage_option(parser)


@contextmanager
def opened_table(args: argparse.Namespace) -> Iterator[TableRef]:
    """The table a table command (versions, rollback, maintain) works on: `--storage` resolved, the table
    checked to exist, storage errors redacted (no credential in a message)."""
    from operators.storage import redacted_errors

    storage = storage_from_args(args)
    with redacted_errors(storage):
        yield existing_table(args, storage)


def add_table_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """OUTPUT (the job's `uri`) and --table, for the commands that read a table embed wrote."""
    parser.add_argument("uri", metavar="OUTPUT", help="LanceDB URI the table lives in: a local folder or s3://...")
    parser.add_argument("--table", required=required, help="the table embed wrote")


def add_address_option(parser: argparse.ArgumentParser) -> None:
    """--address, for the commands that run on Ray."""
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")


# -- value types -------------------------------------------------------------------------------
def int_list(value: str) -> list[int]:
    return _number_list(value, int, "integers")


def float_list(value: str) -> list[float]:
    return _number_list(value, float, "numbers")


def _number_list(value: str, kind: type, what: str) -> list:
    try:
        return [kind(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        msg = f"expected comma-separated {what}, got {value!r}"
        raise argparse.ArgumentTypeError(msg) from error


def precision_list(value: str) -> list[str]:
    """`int8,binary`: the quantised copies `embed --quantize` stores (operators/quantize.py PRECISIONS)."""
    from operators.quantize import parse_precisions

    try:
        return parse_precisions(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def at_least(minimum: float, kind: type = int):
    """A number of `kind` that is at least `minimum`."""

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            msg = f"expected a number >= {minimum}, got {value!r}"
            raise argparse.ArgumentTypeError(msg)
        return number

    return parse


def name_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def weights_list(value: str) -> tuple[float, ...]:
    """Hybrid weights `dense,sparse[,colbert]` (operators/scoring.py parse_weights)."""
    from operators.scoring import parse_weights

    try:
        return parse_weights(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def resource_amounts(value: str) -> dict[str, float]:
    """`encoder=1,accelerator_type:A10G=0.01` into {name: amount}."""
    amounts = {}
    for part in name_list(value):
        name, sep, amount = part.rpartition("=")
        msg = f"expected NAME=AMOUNT pairs, got {part!r}"
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(msg)
        try:
            amounts[name.strip()] = float(amount)
        except ValueError as error:
            raise argparse.ArgumentTypeError(msg) from error
    return amounts


SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def object_store_size(value: str) -> int:
    """An object store size: '2GB', '512MiB' or a number of bytes, at least Ray's minimum of 64 MiB."""
    text = value.strip().upper()
    number = text.rstrip("KMGIB")
    unit = text[len(number):]
    try:
        size = int(float(number) * SIZE_UNITS[unit])
    except (KeyError, ValueError):
        msg = f"not a size: {value!r} (use e.g. 2GB, 512MiB or a number of bytes)"
        raise argparse.ArgumentTypeError(msg) from None
    if size < 2**26:
        msg = f"object store of {value!r} is too small for Ray (at least 64MiB)"
        raise argparse.ArgumentTypeError(msg)
    return size


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        msg = f"expected a whole number of at least 1, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return number


def age(value: str) -> str:
    """A retention age as given (`7d`, `12h`, `30m`, `90s`, `2w`, `0`), checked here (operators/maintenance.py)."""
    from operators.maintenance import parse_age

    try:
        parse_age(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def existing_table(args: argparse.Namespace, storage: dict):
    """The table `args` names (`docs` by default), or a one-line error when it is not there."""
    from operators.tables import Lake

    table = args.table or "docs"
    target = Lake(args.uri, storage).table(table)
    if not target.exists():
        msg = f"no table {table!r} in {args.uri}"
        raise ValueError(msg)
    return target


def run_logged(target, args: argparse.Namespace, job: str, config: dict, action) -> dict:
    """`action()` recorded in the table's run log (`<T>_runs`) as a run of `job`, with its result or error."""
    from operators.run_log import RunLog

    run_log = RunLog.for_table(target.lake, target.name, job=job, command=["embedlake", *args.argv], config=config)
    return run_log.record(action, target.lake.storage)


def add_pin_options(parser: argparse.ArgumentParser) -> None:
    """`--version N` / `--tag NAME`: read that version of the table instead of the serving one."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--version", type=positive_int, metavar="N",
                       help="read version N of the table (default: the serving version, the last successful run's)")
    group.add_argument("--tag", metavar="NAME",
                       help="read the version tagged NAME (serving, run-<id>, or a tag of yours; embedlake versions)")
