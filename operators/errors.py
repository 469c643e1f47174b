"""Errors as a user reads them: one line, credentials scrubbed.

The CLI prints failures as one `embedlake: error: ...` line, the run log and the quarantine table keep a
reason per run or row, and Ray passes worker errors back as text: all of them say an error the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from operators.storage import redact


def one_line(error: BaseException | str, limit: int | None = None, settings: Mapping | None = None,
             with_type: bool = False) -> str:
    """The error's message on one line (whitespace folded), at most `limit` characters, with the secret
    values of `settings` replaced by ***; its type name when it has no message (or in front, `with_type`)."""
    text = " ".join(str(error).split())[:limit]
    if isinstance(error, BaseException) and (with_type or not text):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return redact(text, settings) if settings else text
