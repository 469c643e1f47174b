"""docs/cli.md, generated from the parsers: every command's `--help`, so the reference cannot drift from the code.

    python -m pipelines.cli_reference > docs/cli.md      (make docs; tests/test_cli_reference.py checks it is current)
"""

from __future__ import annotations

import os
import sys

HELP_WIDTH = 110  # columns argparse wraps help at, fixed so the file does not depend on the terminal

HEADER = """# `embedlake` command-line reference

Generated from the parsers by `make docs` (`python -m pipelines.cli_reference`); `tests/test_cli_reference.py`
fails when it is not current. The tables each command writes, what a run guarantees and what bad input gets
are in the [README](../README.md).

Every command takes `--json` (one JSON result as the last line of stdout; progress and logs on stderr),
`--config FILE` (a YAML mapping of option names to values; the command line wins) and `--verbose`.

Exit status: `0` success; `1` a failure at run time (unreadable input, storage errors, a failed job), one line
`embedlake: error: <reason>` on stderr; `2` a usage error (an unknown or malformed option, a value out of
range, an invalid table name, a kept column that clashes, a missing or broken `--config` file), also one
`embedlake: error: ...` line; `130` interrupted by Ctrl-C or SIGTERM (`embedlake: interrupted ...`); `submit`
exits with the submitted job's own status.
"""


def render() -> str:
    """The whole reference: the header, then each command's help as argparse prints it."""
    from pipelines.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        parser, modules = build_parser()
        commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
        parts = [HEADER]
        parts.extend(f"## `embedlake {name}`\n\n```text\n{commands[name].format_help().rstrip()}\n```\n"
                     for name in modules)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
