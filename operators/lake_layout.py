"""Lake layouts: hive partition folders (`key=value/`) and where a glob's listing starts.

Partition values live in the path, not in the files, so a kept partition column is read from the
shard's path. Its type is decided once over every shard the input lists (integers when every value
is one, else strings), so all workers agree on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

import pyarrow as pa

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
GLOB_CHARS = "*?["
INT_PATTERN = re.compile(r"-?[0-9]{1,18}")


def listing_base(path: str) -> str:
    """The folder a glob lists from: everything before the first component holding a glob char."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if any(char in part for char in GLOB_CHARS):
            return "/".join(parts[:index])
    return "/".join(parts[:-1])


def hive_values(path: str, base: str | None = None) -> dict[str, str | None]:
    """`key=value` folders of `path` (below `base` when given), values URL-decoded, hive nulls None.

    A key repeated deeper in the path wins, as in a nested partition layout.
    """
    if base is not None:
        relative = path[len(base):] if path.startswith(base) else path
    else:
        relative = path.split("://", 1)[-1]
    folders = [part for part in relative.split("/")[:-1] if part]
    values: dict[str, str | None] = {}
    for folder in folders:
        key, sep, value = folder.partition("=")
        if sep and key:
            decoded = unquote(value)
            values[unquote(key)] = None if decoded == HIVE_NULL else decoded
    return values


def hive_partitions(paths: Iterable[str], base: str) -> pa.Schema:
    """The partition columns of a listed lake, in the order they first appear, with inferred types."""
    seen: dict[str, list[str | None]] = {}
    for path in paths:
        for key, value in hive_values(path, base).items():
            seen.setdefault(key, []).append(value)
    return pa.schema([pa.field(key, _infer_type(values)) for key, values in seen.items()])


def _infer_type(values: list[str | None]) -> pa.DataType:
    present = [value for value in values if value is not None]
    if present and all(_is_int(value) for value in present):
        return pa.int64()
    return pa.string()


def _is_int(value: str) -> bool:
    return INT_PATTERN.fullmatch(value) is not None
