"""The embed operator: decided rows in (operators/exchange.py), table rows and counts out.

Rows arrive checked and decided (operators/sources.py gives each bad row its reason,
operators/incremental.py decides what is unchanged): this operator encodes the rows marked to embed,
gives them the model identity and every vector column, and passes the others through. An encoder
error is retried, then narrowed down to the rows that cause it, which are quarantined with the error
while the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.encoders.base import EncodedBatch, Encoder, EncoderSpec
from operators.encoders.batching import is_out_of_memory
from operators.encoders.loader import load_encoder
from operators.errors import one_line
from operators.exchange import (
    ENCODER_ERROR,
    OOM_SPLITS_COL,
    PADDED_COL,
    REASON_COL,
    STATUS_COL,
    TEXT_COL,
    TOKENS_COL,
    TRUNCATED_COL,
    WORKER_COL,
    Status,
    conform,
    encoded_row_schema,
)
from operators.schema import MODEL, TEXT
from operators.stored_vectors import VectorStorage

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


class EmbedRows:
    """Encode the rows of a batch marked to embed; pass the others through with their status.

    Constructed once per worker (Ray actor): the model loads in __init__, not per batch.
    """

    def __init__(self, spec: EncoderSpec, keep_fields: list[pa.Field] | None = None,
                 threads: int | None = None, storage: VectorStorage | None = None, keep_text: bool = False) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.spec = spec
        self.encoder: Encoder = load_encoder(spec)
        self.storage = storage or VectorStorage()  # quantised copies, ColBERT precision (stored_vectors.py)
        self.fields = self.storage.fields(self.encoder.output_fields())
        self.keep_text = keep_text  # the text as embedded, in column `text`
        self.schema = encoded_row_schema(self.fields, list(keep_fields or []),
                                         [pa.field(TEXT, pa.string())] if keep_text else [])
        self.worker = worker_identity()

    def __call__(self, batch: pa.Table) -> pa.Table:
        status = batch.column(STATUS_COL).combine_chunks()
        todo = np.flatnonzero(_is_embedded(status))
        rows = pa.array(todo)
        texts = batch.column(TEXT_COL).take(rows).to_pylist()
        ids = batch.column("id").take(rows).to_pylist()
        encoded, failures = self.encode_isolating_failures(texts, ids)
        encoded.columns = self.storage.apply(encoded.columns)
        reasons = batch.column(REASON_COL).combine_chunks()
        if failures:  # rare: per row, in Python
            status_list, reason_list = status.to_pylist(), reasons.to_pylist()
            for position, error in failures.items():
                row = int(todo[position])
                status_list[row], reason_list[row] = Status.QUARANTINED.value, f"{ENCODER_ERROR}: {error}"
            status, reasons = pa.array(status_list, pa.string()), pa.array(reason_list, pa.string())
        return self.assemble(batch, status, reasons, todo, encoded)

    def encode_isolating_failures(
        self, texts: Sequence[str], ids: Sequence[str]
    ) -> tuple[EncodedBatch, dict[int, str]]:
        """Encode texts; on an error (not OOM, which the encoder splits itself) retry, then bisect to
        the failing rows. Returns the encoding of every text (failed ones null) and {position: error}."""
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
        status: pa.Array,
        reasons: pa.Array,
        todo: np.ndarray,
        encoded: EncodedBatch,
    ) -> pa.Table:
        """The output rows, in Arrow compute (no per-row Python): vectors of embedded rows, nulls elsewhere."""
        rows = batch.num_rows
        embedded = _is_embedded(status)
        positions = np.full(rows, -1, dtype=np.int64)
        positions[todo] = np.arange(len(todo))
        take = pa.array(positions, mask=~embedded)  # null index -> null vectors for rows not embedded
        columns = {name: batch.column(name) for name in self.schema.names if name in batch.column_names}
        columns.pop(TEXT_COL, None)
        if self.keep_text:
            columns[TEXT] = batch.column(TEXT_COL)
        columns[MODEL] = pc.if_else(pa.array(embedded), pa.scalar(self.encoder.model_id, pa.string()),
                                    pa.scalar(None, pa.string()))
        for f in self.fields:
            columns[f.name] = encoded.columns[f.name].take(take)
        tokens = np.zeros(rows, dtype=np.int32)
        truncated = np.zeros(rows, dtype=bool)
        tokens[todo] = encoded.token_counts
        truncated[todo] = encoded.truncated
        tokens[~embedded] = 0
        truncated[~embedded] = False
        columns[REASON_COL] = reasons
        columns[STATUS_COL] = status
        return self.measured(columns, tokens, truncated, encoded)

    def measured(self, columns: dict[str, pa.Array], tokens: np.ndarray, truncated: np.ndarray,
                 encoded: EncodedBatch) -> pa.Table:
        """The output rows: `columns` plus what the writer counts (tokens and truncation per row, the batch's
        padded tokens and OOM splits on its first row, this worker)."""
        rows = len(tokens)
        per_batch = np.zeros((2, rows), dtype=np.int64)
        if rows:  # per-batch totals, carried on the first row
            per_batch[:, 0] = (encoded.padded_tokens, encoded.oom_splits)
        columns[TOKENS_COL] = pa.array(tokens)
        columns[TRUNCATED_COL] = pa.array(truncated)
        columns[PADDED_COL] = pa.array(per_batch[0])
        columns[OOM_SPLITS_COL] = pa.array(per_batch[1])
        columns[WORKER_COL] = pa.array([self.worker] * rows, pa.string())
        return conform(columns, self.schema, rows)


def _is_embedded(status: pa.Array) -> np.ndarray:
    """True where a row's status is EMBEDDED (to encode before the encoder, encoded after)."""
    return pc.fill_null(pc.equal(status, Status.EMBEDDED.value), False).to_numpy(zero_copy_only=False)


def merge_encoded(encoder: Encoder, pieces: list[tuple[np.ndarray, EncodedBatch]], total: int) -> EncodedBatch:
    """Reassemble partial encodings into input order; rows no piece covers (their encoding failed)
    get null vectors, and the caller quarantines them, so these never reach a table."""
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
