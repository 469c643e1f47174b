"""docs/cli.md is what the parsers print: regenerate it with `make docs` when an option changes."""

from __future__ import annotations

from pipelines.cli_reference import render
from tests.conftest import REPO


def test_cli_reference_is_current():
    assert (REPO / "docs" / "cli.md").read_text() == render(), "docs/cli.md is stale: run `make docs`"


def test_every_command_and_option_is_in_the_reference():
    from pipelines.cli import build_parser

    text = render()
    parser, modules = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():  # noqa: SLF001
        assert f"## `embedlake {name}`" in text
        for action in sub._actions:  # noqa: SLF001
            for flag in action.option_strings:
                assert flag in text, (name, flag)
