"""The embed operator: rows from a shard reader in, table rows (or quarantine reasons) out.

It checks every row before encoding, so bad rows leave with a reason instead of failing the batch
or vanishing; good rows get their text hash, the model identity and every vector column.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.encoders.base import EncodedBatch, Encoder, EncoderSpec
from operators.encoders.loader import load_encoder
from operators.schema import ID, MODEL, TEXT_HASH, text_hash
from operators.sources import READ_AT_COL, REASON_COL, SOURCE_COL, TEXT_COL

TOKENS_COL = "_tokens"
TRUNCATED_COL = "_truncated"
PADDED_COL = "_padded_tokens"
WORKER_COL = "_worker"
BOOKKEEPING = (SOURCE_COL, READ_AT_COL, REASON_COL, TOKENS_COL, TRUNCATED_COL, PADDED_COL, WORKER_COL)


def worker_identity() -> str:
    """node:pid of this process, so a run can report which workers and nodes encoded its rows."""
    import os
    import socket

    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()
    except ImportError:
        node = socket.gethostname()
    return f"{node}:{os.getpid()}"


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
    """Encode the good rows of a batch; pass bad rows through with their reason and null vectors.

    Constructed once per worker (Ray actor): the model loads in __init__, not per batch.
    """

    def __init__(self, spec: EncoderSpec, keep_columns: list[str] | None = None, threads: int | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.spec = spec
        self.keep_columns = list(keep_columns or [])
        self.encoder: Encoder = load_encoder(spec)
        self.worker = worker_identity()

    def output_fields(self) -> list[pa.Field]:
        return self.encoder.output_fields()

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(ID).combine_chunks()
        texts = batch.column(TEXT_COL).combine_chunks()
        problems = row_problems(ids, texts, batch.column(REASON_COL).combine_chunks())
        good = np.array([p is None for p in problems], dtype=bool)
        good_texts = pc.filter(texts, pa.array(good)).to_pylist()
        encoded = self.encoder.encode(good_texts, prompt_name=self.spec.prompt_name)
        return self.assemble(batch, ids, good_texts, good, problems, encoded)

    def assemble(
        self,
        batch: pa.Table,
        ids: pa.Array,
        good_texts: list[str],
        good: np.ndarray,
        problems: list[str | None],
        encoded: EncodedBatch,
    ) -> pa.Table:
        rows = batch.num_rows
        positions = np.full(rows, -1, dtype=np.int64)
        positions[good] = np.arange(int(good.sum()))
        take = pa.array(positions, mask=~good)  # null index -> null output row
        hashes = [None] * rows
        for row, text in zip(np.flatnonzero(good), good_texts, strict=True):
            hashes[row] = text_hash(text)
        columns: dict[str, pa.Array] = {
            ID: ids,
            TEXT_HASH: pa.array(hashes, pa.string()),
            MODEL: pa.array([self.encoder.model_id if ok else None for ok in good], pa.string()),
        }
        for f in self.encoder.output_fields():
            columns[f.name] = encoded.columns[f.name].take(take)
        for name in self.keep_columns:
            columns[name] = batch.column(name)
        tokens = np.zeros(rows, dtype=np.int32)
        tokens[good] = encoded.token_counts
        truncated = np.zeros(rows, dtype=bool)
        truncated[good] = encoded.truncated
        padded = np.zeros(rows, dtype=np.int64)
        if rows:
            padded[0] = encoded.padded_tokens  # per-batch total, carried on the first row
        columns[SOURCE_COL] = batch.column(SOURCE_COL)
        columns[READ_AT_COL] = batch.column(READ_AT_COL)
        columns[REASON_COL] = pa.array(problems, pa.string())
        columns[TOKENS_COL] = pa.array(tokens)
        columns[TRUNCATED_COL] = pa.array(truncated)
        columns[PADDED_COL] = pa.array(padded)
        columns[WORKER_COL] = pa.array([self.worker] * rows, pa.string())
        return pa.table(columns)
