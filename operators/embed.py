"""The embed operator: rows from a shard reader in, table rows (or quarantine reasons) out.

It checks every row before encoding, so bad rows leave with a reason instead of failing the batch
or vanishing; rows already in the table with the same text and model are marked unchanged and not
encoded again; good rows get their text hash, the model identity and every vector column. An
encoder error is retried, then narrowed down to the rows that cause it, which are quarantined with
the error while the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from operators.encoders.base import EncodedBatch, Encoder, EncoderSpec
from operators.encoders.batching import is_out_of_memory
from operators.encoders.loader import load_encoder
from operators.errors import one_line
from operators.row_status import (
    EMBEDDED,
    PADDED_COL,
    QUARANTINED,
    STATUS_COL,
    TOKENS_COL,
    TRUNCATED_COL,
    UNCHANGED,
    WORKER_COL,
)
from operators.schema import ID, MODEL, TEXT_HASH, text_hash
from operators.sources import READ_AT_COL, REASON_COL, SOURCE_COL, TEXT_COL

log = logging.getLogger(__name__)

ENCODE_ATTEMPTS = 2  # tries of a whole batch before narrowing an encoder error down to rows


def worker_identity() -> str:
    """node:pid of this process, so a run can report which workers and nodes encoded its rows."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()
    except ImportError:
        node = socket.gethostname()
    return f"{node}:{os.getpid()}"


def known_key(row_id: str, hashed: str) -> str:
    return f"{row_id}\x1f{hashed}"


def row_problems(ids: pa.Array, texts: pa.Array, reasons: pa.Array) -> list[str | None]:
    """A quarantine reason per row, or None for rows that can be embedded."""
    problems = reasons.to_pylist()
    for i, (row_id, text) in enumerate(zip(ids.to_pylist(), texts.to_pylist(), strict=True)):
        if problems[i] is not None:
            continue
        if row_id is None or row_id == "":
            problems[i] = "null or empty id"
        elif text is None:
            problems[i] = "null text"
        elif not text.strip():
            problems[i] = "empty text"
    return problems


class EmbedRows:
    """Encode the rows of a batch that need it; pass the others through with their status.

    Constructed once per worker (Ray actor): the model and the table's known (id, text hash) keys
    for this model load in __init__, not per batch.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        keep_columns: list[str] | None = None,
        threads: int | None = None,
        known_keys: Callable[[str], set[str]] | None = None,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.spec = spec
        self.keep_columns = list(keep_columns or [])
        self.encoder: Encoder = load_encoder(spec)
        self.known: set[str] = known_keys(self.encoder.model_id) if known_keys else set()
        self.worker = worker_identity()

    def output_fields(self) -> list[pa.Field]:
        return self.encoder.output_fields()

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(ID).combine_chunks()
        texts = batch.column(TEXT_COL).combine_chunks()
        problems = row_problems(ids, texts, batch.column(REASON_COL).combine_chunks())
        hashes = [None if p is not None else text_hash(t) for p, t in zip(problems, texts.to_pylist(), strict=True)]
        status = [
            QUARANTINED if p is not None else UNCHANGED if known_key(i, h) in self.known else EMBEDDED
            for p, i, h in zip(problems, ids.to_pylist(), hashes, strict=True)
        ]
        todo = np.flatnonzero(np.array([s == EMBEDDED for s in status], dtype=bool))
        todo_texts = [texts[int(i)].as_py() for i in todo]
        encoded, failures = self.encode_isolating_failures(todo_texts, [ids[int(i)].as_py() for i in todo])
        for position, error in failures.items():
            row = int(todo[position])
            status[row], problems[row] = QUARANTINED, f"encoder error: {error}"
        return self.assemble(batch, ids, hashes, status, problems, todo, encoded)

    def encode_isolating_failures(
        self, texts: Sequence[str], ids: Sequence[str]
    ) -> tuple[EncodedBatch, dict[int, str]]:
        """Encode texts; on an error (not OOM, which the encoder splits itself) retry, then bisect to
        the failing rows. Returns the encoding of every text (failed ones zero) and {position: error}."""
        failures: dict[int, str] = {}

        def attempt(positions: np.ndarray) -> EncodedBatch | None:
            error: BaseException | None = None
            for _ in range(ENCODE_ATTEMPTS if len(positions) > 1 else 1):
                try:
                    return self.encoder.encode([texts[p] for p in positions], prompt_name=self.spec.prompt_name)
                except Exception as caught:  # noqa: BLE001 - isolated and reported per row below
                    if is_out_of_memory(caught) and len(positions) == 1:
                        raise
                    error = caught
            if len(positions) == 1:
                failures[int(positions[0])] = one_line(error, 300)
                log.warning("encoder failed on row id %r: %s", ids[int(positions[0])], error)
                return None
            middle = len(positions) // 2
            for half in (positions[:middle], positions[middle:]):
                partial = attempt(half)
                if partial is not None:
                    pieces.append((half, partial))
            return None

        pieces: list[tuple[np.ndarray, EncodedBatch]] = []
        everything = np.arange(len(texts))
        whole = attempt(everything)
        if whole is not None:
            return whole, failures
        return merge_encoded(self.encoder, pieces, len(texts)), failures

    def assemble(
        self,
        batch: pa.Table,
        ids: pa.Array,
        hashes: list[str | None],
        status: list[str],
        problems: list[str | None],
        todo: np.ndarray,
        encoded: EncodedBatch,
    ) -> pa.Table:
        rows = batch.num_rows
        embedded = np.array([s == EMBEDDED for s in status], dtype=bool)
        positions = np.full(rows, -1, dtype=np.int64)
        positions[todo] = np.arange(len(todo))
        take = pa.array(positions, mask=~embedded)  # null index -> null vectors for rows not embedded
        columns: dict[str, pa.Array] = {
            ID: ids,
            TEXT_HASH: pa.array(hashes, pa.string()),
            MODEL: pa.array([self.encoder.model_id if ok else None for ok in embedded], pa.string()),
        }
        for f in self.encoder.output_fields():
            columns[f.name] = encoded.columns[f.name].take(take)
        for name in self.keep_columns:
            columns[name] = batch.column(name)
        tokens = np.zeros(rows, dtype=np.int32)
        truncated = np.zeros(rows, dtype=bool)
        tokens[todo] = encoded.token_counts
        truncated[todo] = encoded.truncated
        tokens[~embedded] = 0
        truncated[~embedded] = False
        padded = np.zeros(rows, dtype=np.int64)
        if rows:
            padded[0] = encoded.padded_tokens  # per-batch total, carried on the first row
        columns[SOURCE_COL] = batch.column(SOURCE_COL)
        columns[READ_AT_COL] = batch.column(READ_AT_COL)
        columns[REASON_COL] = pa.array([p if s == QUARANTINED else None for p, s in zip(problems, status, strict=True)],
                                       pa.string())
        columns[STATUS_COL] = pa.array(status, pa.string())
        columns[TOKENS_COL] = pa.array(tokens)
        columns[TRUNCATED_COL] = pa.array(truncated)
        columns[PADDED_COL] = pa.array(padded)
        columns[WORKER_COL] = pa.array([self.worker] * rows, pa.string())
        return pa.table(columns)


def merge_encoded(encoder: Encoder, pieces: list[tuple[np.ndarray, EncodedBatch]], total: int) -> EncodedBatch:
    """Reassemble partial encodings into input order; rows no piece covers get zero vectors (they are
    quarantined by the caller, so these never reach a table)."""
    order = np.full(total, -1, dtype=np.int64)
    tables, offset = [], 0
    token_counts = np.zeros(total, dtype=np.int64)
    truncated = np.zeros(total, dtype=bool)
    for positions, piece in pieces:
        order[positions] = np.arange(offset, offset + len(positions))
        offset += len(positions)
        token_counts[positions] = piece.token_counts
        truncated[positions] = piece.truncated
        tables.append(pa.table(piece.columns))
    fields = encoder.output_fields()
    combined = pa.concat_tables(tables) if tables else pa.schema(fields).empty_table()
    indices = pa.array(np.where(order >= 0, order, 0), mask=order < 0)
    columns = {f.name: combined.column(f.name).combine_chunks().take(indices) for f in fields} if offset else {
        f.name: pa.nulls(total, f.type) for f in fields
    }
    return EncodedBatch(
        columns=columns,
        token_counts=token_counts,
        truncated=truncated,
        padded_tokens=sum(piece.padded_tokens for _, piece in pieces),
        oom_splits=sum(piece.oom_splits for _, piece in pieces),
    )
