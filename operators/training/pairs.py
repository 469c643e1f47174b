"""Training pairs from Parquet shards: (anchor, positive[, negative]) columns, checked and split.

Every reader (the driver's check tasks, each Ray Train worker, the evaluation task) reads the shards
itself and decides held-out membership from the anchor text alone (a hash), so they all agree on the
split without exchanging rows, and an anchor never lands on both sides of it. Only counts travel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.schema import require_columns
from operators.sources import ShardSet
from operators.storage import open_input, redacted_errors

# The column names sentence-transformers' trainer sees (its prompts are keyed by them).
ANCHOR, POSITIVE, NEGATIVE = "anchor", "positive", "negative"
TRAIN, HOLDOUT = "train", "holdout"
HASH_SPACE = 2**64
READ_BATCH = 8192


@dataclass
class PairColumns:
    """Which input columns hold the anchor, the positive and (optionally) a hard negative."""

    anchor: str
    positive: str
    negative: str | None = None

    def mapping(self) -> dict[str, str]:
        """{input column: trainer column}, in the trainer's column order."""
        pairs = {self.anchor: ANCHOR, self.positive: POSITIVE}
        if self.negative:
            pairs[self.negative] = NEGATIVE
        return pairs

    def check(self, schema: pa.Schema, where: str) -> None:
        """Missing or non-text columns fail here, before any row is read."""
        names = [name for name in (self.anchor, self.positive, self.negative) if name]
        if len(set(names)) != len(names):
            msg = f"anchor, positive and negative columns must differ, got {', '.join(names)}"
            raise ValueError(msg)
        require_columns(schema, names, where, why="the training pairs")
        for name in names:
            kind = schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                msg = f"{where}: column {name!r} is {kind}, training needs text (string) columns"
                raise ValueError(msg)


def in_holdout(anchor: str, fraction: float) -> bool:
    """Deterministic held-out membership from the anchor text (same answer on every worker and run)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(anchor.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * HASH_SPACE


@dataclass
class PairCheck:
    """What one pass over the pairs found: counts, and the first bad row with its reason."""

    rows: int = 0
    holdout: int = 0
    bad_rows: int = 0
    first_bad: str | None = None  # "file#row: reason"
    files: int = 0

    def add(self, other: PairCheck) -> PairCheck:
        return PairCheck(self.rows + other.rows, self.holdout + other.holdout, self.bad_rows + other.bad_rows,
                         self.first_bad or other.first_bad, self.files + other.files)

    @property
    def train(self) -> int:
        return self.rows - self.holdout


@dataclass
class PairReader:
    """Reads the pair columns of shards, renamed to the trainer's names, one split at a time."""

    columns: PairColumns
    holdout: float = 0.0
    storage: dict = field(default_factory=dict, repr=False)

    def batches(self, path: str) -> Iterator[tuple[int, pa.Table]]:
        """(first row number, batch) for one shard, renamed to anchor/positive[/negative]."""
        mapping = self.columns.mapping()
        with redacted_errors(self.storage), open_input(path, self.storage) as handle:
            parquet = pq.ParquetFile(handle)
            self.columns.check(parquet.schema_arrow, f"shard {path}")
            offset = 0
            for batch in parquet.iter_batches(batch_size=READ_BATCH, columns=list(mapping)):
                table = pa.Table.from_batches([batch]).rename_columns([mapping[n] for n in batch.schema.names])
                yield offset, table.select(list(mapping.values()))
                offset += batch.num_rows

    def check(self, path: str) -> PairCheck:
        """Count one shard's pairs and held-out pairs, and find rows with a null or blank text."""
        result = PairCheck(files=1)
        for offset, table in self.batches(path):
            result.rows += table.num_rows
            bad = None
            for name in table.column_names:
                blank = pc.or_kleene(pc.is_null(table[name]), pc.equal(pc.utf8_trim_whitespace(table[name]), ""))
                blank = pc.fill_null(blank, True)
                bad = blank if bad is None else pc.or_(bad, blank)
                if result.first_bad is None and pc.any(blank).as_py():
                    row = pc.index(blank, True).as_py()
                    result.first_bad = f"{path}#{offset + row}: {name} ({self.source_name(name)!r}) is empty or null"
            result.bad_rows += pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
            result.holdout += sum(in_holdout(a, self.holdout) for a in table[ANCHOR].to_pylist() if a is not None)
        return result

    def source_name(self, trainer_name: str) -> str:
        return {v: k for k, v in self.columns.mapping().items()}[trainer_name]

    def split_batches(self, path: str, split: str) -> Iterator[pa.Table]:
        """One shard's pairs of one split (TRAIN or HOLDOUT), a batch at a time."""
        for _offset, table in self.batches(path):
            mask = [in_holdout(a, self.holdout) == (split == HOLDOUT) for a in table[ANCHOR].to_pylist()]
            yield table.filter(pa.array(mask, pa.bool_()))

    def read(self, files: Sequence[str], split: str) -> pa.Table:
        """Every pair of one split (TRAIN or HOLDOUT) from `files`, in file order."""
        parts = [table for path in files for table in self.split_batches(path, split)]
        if not parts:
            return pa.table({name: pa.array([], pa.string()) for name in self.columns.mapping().values()})
        return pa.concat_tables(parts, promote_options="permissive").combine_chunks()


def check_input(shards: ShardSet, columns: PairColumns) -> None:
    """The first shard's schema has the pair columns, as text."""
    from operators.sources import read_schema

    columns.check(read_schema(shards), f"input {shards.uri}")
