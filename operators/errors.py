"""Errors as a user reads them: one line, credentials scrubbed.

The CLI prints failures as one `embedlake: error: ...` line, the run log and the quarantine table keep a
reason per run or row, and Ray passes worker errors back as text: all of them say an error the same way.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from operators.storage import redact


class UsageError(ValueError):
    """Bad arguments: a table name, an option value, a column that clashes. The CLI prints it as one line
    and exits with status 2 (runtime failures exit 1), also when a job raises it after parsing."""

    exit_code = 2


# What native libraries put in messages that a user cannot act on: terminal colour codes, and Rust's source
# locations (`, /home/runner/.cargo/registry/src/.../lance-io/src/local.rs:123:45`).
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RUST_LOCATION = re.compile(r",?\s*(?:at\s+)?[^\s,]*\.rs:\d+(?::\d+)?")


def one_line(error: BaseException | str, limit: int | None = None, settings: Mapping | None = None,
             with_type: bool = False) -> str:
    """The error's message on one line (whitespace folded, colour codes and Rust source locations removed),
    at most `limit` characters (its start and its end, where the cause usually is: "No space left on
    device"), with the secret values of `settings` replaced by ***; its type name when it has no message (or
    in front, `with_type`)."""
    text = " ".join(RUST_LOCATION.sub("", ANSI_CODES.sub("", str(error))).split())
    if limit is not None and len(text) > limit:
        half = max(limit // 2 - 2, 0)
        text = f"{text[:half]} .. {text[len(text) - half:]}" if half else text[:limit]
    if isinstance(error, BaseException) and (with_type or not text):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return redact(text, settings) if settings else text


def option_name(field: str) -> str:
    """The command-line spelling of a job field (`max_length` -> `--max-length`), which messages name."""
    return "--" + field.replace("_", "-")


def check_positive(job: object, *names: str) -> None:
    """Each named field of `job` is None (its default) or an integer of at least 1; else a UsageError naming
    the option. Zero is refused too: it would otherwise read as "not given" and silently mean the default."""
    for name in names:
        value = getattr(job, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"{option_name(name)} must be a positive integer, got {value!r}"
            raise UsageError(msg)


def check_choices(option: str, values: object, allowed: Collection[str]) -> None:
    """Every value (a name or a list of names) is one of `allowed`; else a UsageError naming the option."""
    given = [values] if isinstance(values, str) else list(values or [])
    wrong = [value for value in given if value not in allowed]
    if wrong:
        msg = f"{option_name(option)}: {', '.join(map(repr, wrong))} not one of {', '.join(allowed)}"
        raise UsageError(msg)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the command stops where it is (every commit so far stands, the
    same command again finishes the work) and exits with status 130 and one `embedlake:` line."""


_SIGTERM_INSTALLED = False


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread. The CLI calls it at start; starting Ray calls it
    again (`reinstall_sigterm`), because Ray's core worker installs a handler that dumps a C++ stack and dies."""
    global _SIGTERM_INSTALLED  # noqa: PLW0603 - one process-wide signal disposition
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        _SIGTERM_INSTALLED = True


def reinstall_sigterm() -> None:
    """`interrupt_on_sigterm` again, only in a process where the CLI installed it (never in a library user's)."""
    if _SIGTERM_INSTALLED:
        interrupt_on_sigterm()


def check_range(option: str, value: object, low: float | None = None, high: float | None = None,
                integer: bool = True) -> None:
    """`value` is a number (an integer with `integer`) within [low, high]; else a UsageError naming the option."""
    kinds = (int,) if integer else (int, float)
    number = isinstance(value, kinds) and not isinstance(value, bool)
    if not number or value != value or (low is not None and value < low) or (high is not None and value > high):  # noqa: PLR0124 - NaN
        bounds = " and ".join(part for part in (f"at least {low}" if low is not None else "",
                                                f"at most {high}" if high is not None else "") if part)
        msg = f"{option_name(option)} must be {'an integer' if integer else 'a number'} {bounds}, got {value!r}"
        raise UsageError(msg)
