"""The embed operator for passage tables: decided document rows in, passage rows out (docs/chunking.md).

The incremental decision is per document (operators/incremental.py, `TableKeys(documents=True)`): a
document to embed becomes one row per passage (operators/passages.py), keyed `<doc_id>#<chunk>`, each
with its document's id, text hash, kept columns and provenance, its number and character span, and
`_passages` (the document's passage count now, from which the writer deletes a shorter document's
surplus passages). Only a document's first passage counts it (`_rows` 1, the others 0), so the run's
accounting holds for documents. Rows not to embed (unchanged, quarantined, deleted) pass through as
one row each. An encoder error quarantines the documents it is narrowed to, not the batch.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.chunking import Passage
from operators.embed import EmbedRows
from operators.encoders.base import EncodedBatch, EncoderSpec
from operators.encoders.batching import is_out_of_memory
from operators.errors import one_line
from operators.exchange import (
    ENCODER_ERROR,
    PASSAGES_COL,
    REASON_COL,
    ROWS_COL,
    STATUS_COL,
    TEXT_COL,
    Status,
    encoded_row_schema,
)
from operators.passages import Chunking, encode_passages, passage_model_id
from operators.schema import CHAR_END, CHAR_START, CHUNK, DOC_ID, ID, MODEL, TEXT, passage_fields, passage_id
from operators.stored_vectors import VectorStorage

log = logging.getLogger(__name__)


class EmbedPassages(EmbedRows):
    """Cut the documents of a batch marked to embed into passages and encode them (split or late)."""

    def __init__(self, spec: EncoderSpec, chunking: Chunking, keep_fields: list[pa.Field] | None = None,
                 threads: int | None = None, storage: VectorStorage | None = None, keep_text: bool = False) -> None:
        super().__init__(spec, keep_fields, threads, storage, keep_text)
        self.chunking = chunking
        self.keep_text = keep_text
        self.model_id = passage_model_id(self.encoder.model_id, chunking)
        self.schema = encoded_row_schema(self.fields, list(keep_fields or []), passage_fields(keep_text))

    def __call__(self, batch: pa.Table) -> pa.Table:
        status = batch.column(STATUS_COL).combine_chunks().to_pylist()
        reasons = batch.column(REASON_COL).to_pylist()
        todo = [row for row, value in enumerate(status) if value == Status.EMBEDDED]
        texts = batch.column(TEXT_COL).take(pa.array(todo, pa.int64())).to_pylist()
        passages, encoded, failures = self.encode_documents(texts, [batch.column(ID)[row].as_py() for row in todo])
        for position, error in failures.items():
            status[todo[position]], reasons[todo[position]] = Status.QUARANTINED.value, f"{ENCODER_ERROR}: {error}"
        encoded.columns = self.storage.apply(encoded.columns)
        return self.passage_rows(batch, status, reasons, todo, texts, passages, encoded)

    def encode_documents(self, texts: list[str], ids: list[str]
                         ) -> tuple[list[list[Passage]], EncodedBatch, dict[int, str]]:
        """Passages and vectors of every document; on an encoder error (not OOM) each document again alone,
        and those that fail are reported ({position: error}) with no passages."""
        try:
            found, encoded = encode_passages(self.encoder, texts, self.chunking, self.spec.prompt_name)
            return found, encoded, {}
        except Exception as error:  # noqa: BLE001 - narrowed to documents below
            if is_out_of_memory(error) and len(texts) == 1:
                raise
            log.warning("passage encoding failed on a batch of %d documents, retrying one by one: %s",
                        len(texts), one_line(error, 300))
        found: list[list[Passage]] = []
        pieces: list[EncodedBatch] = []
        failures: dict[int, str] = {}
        for position, text in enumerate(texts):
            try:
                passages, encoded = encode_passages(self.encoder, [text], self.chunking, self.spec.prompt_name)
                found.append(passages[0])
                pieces.append(encoded)
            except Exception as error:  # noqa: BLE001 - reported per document
                failures[position] = one_line(error, 300)
                log.warning("encoder failed on document id %r: %s", ids[position], error)
                found.append([])
        return found, concat_encoded(pieces, self.encoder.output_fields()), failures

    def passage_rows(self, batch: pa.Table, status: list[str], reasons: list[str | None], todo: list[int],
                     texts: list[str], passages: list[list[Passage]], encoded: EncodedBatch) -> pa.Table:
        """One row per passage of each embedded document, one row per other row, in batch order."""
        per_row: dict[int, tuple[str, list[Passage], int]] = {}  # batch row -> (text, passages, first encoded row)
        first = 0
        for row, text, found in zip(todo, texts, passages, strict=True):
            if status[row] == Status.EMBEDDED:
                per_row[row] = (text, found, first)
            first += len(found)
        source, encoded_row, chunk, starts, ends, counts, pieces = [], [], [], [], [], [], []
        for row in range(batch.num_rows):
            if row not in per_row:
                source.append(row)
                encoded_row.append(-1)
                chunk.append(-1)
                starts.append(0)
                ends.append(0)
                counts.append(0)
                pieces.append(None)
                continue
            text, found, offset = per_row[row]
            for number, passage in enumerate(found):
                source.append(row)
                encoded_row.append(offset + number)
                chunk.append(passage.chunk)
                starts.append(passage.char_start)
                ends.append(passage.char_end)
                counts.append(len(found))
                pieces.append(text[passage.char_start:passage.char_end] if self.keep_text else None)
        return self._assemble_passages(batch, status, reasons, encoded, np.asarray(source, np.int64),
                                       np.asarray(encoded_row, np.int64), np.asarray(chunk, np.int64),
                                       starts, ends, counts, pieces)

    def _assemble_passages(self, batch: pa.Table, status: list[str], reasons: list[str | None],
                           encoded: EncodedBatch, source: np.ndarray, encoded_row: np.ndarray, chunk: np.ndarray,
                           starts: list[int], ends: list[int], counts: list[int], pieces: list[str | None]
                           ) -> pa.Table:
        rows = len(source)
        passage = encoded_row >= 0
        take = pa.array(source)
        columns = {name: batch.column(name).take(take) for name in self.schema.names if name in batch.column_names}
        columns.pop(TEXT_COL, None)
        doc_ids = batch.column(ID).take(take).to_pylist()
        columns[ID] = pa.array([passage_id(doc, int(number)) if ok else doc
                                for doc, number, ok in zip(doc_ids, chunk, passage, strict=True)], pa.string())
        columns[DOC_ID] = pa.array(doc_ids, pa.string(), mask=~passage)
        columns[CHUNK] = pa.array(chunk, pa.int32(), mask=~passage)
        columns[CHAR_START] = pa.array(starts, pa.int64(), mask=~passage)
        columns[CHAR_END] = pa.array(ends, pa.int64(), mask=~passage)
        columns[PASSAGES_COL] = pa.array(counts, pa.int32(), mask=~passage)
        if self.keep_text:
            columns[TEXT] = pa.array(pieces, pa.string())
        columns[MODEL] = pa.array([self.model_id if ok else None for ok in passage], pa.string())
        vector_take = pa.array(np.where(passage, encoded_row, 0), mask=~passage)
        for f in self.fields:
            columns[f.name] = encoded.columns[f.name].take(vector_take)
        tokens = np.zeros(rows, dtype=np.int32)
        truncated = np.zeros(rows, dtype=bool)
        tokens[passage] = np.asarray(encoded.token_counts)[encoded_row[passage]]
        truncated[passage] = np.asarray(encoded.truncated)[encoded_row[passage]]
        # A document counts once (on its first passage); rows passed through keep what they stood for.
        counted = pc.if_else(pa.array(passage), pa.array(chunk == 0).cast(pa.int64()), columns[ROWS_COL])
        columns[ROWS_COL] = counted
        columns[STATUS_COL] = pa.array([status[row] for row in source], pa.string())
        columns[REASON_COL] = pa.array([reasons[row] for row in source], pa.string())
        return self.measured(columns, tokens, truncated, encoded)


def concat_encoded(pieces: list[EncodedBatch], fields: list[pa.Field]) -> EncodedBatch:
    """Encoded batches one after the other (rows: theirs, in order)."""
    columns = {f.name: pa.concat_arrays([piece.columns[f.name] for piece in pieces]) if pieces
               else pa.array([], f.type) for f in fields}
    return EncodedBatch(
        columns=columns,
        token_counts=np.concatenate([piece.token_counts for piece in pieces]) if pieces else np.zeros(0, np.int64),
        truncated=np.concatenate([piece.truncated for piece in pieces]) if pieces else np.zeros(0, bool),
        padded_tokens=sum(piece.padded_tokens for piece in pieces),
        oom_splits=sum(piece.oom_splits for piece in pieces),
    )
