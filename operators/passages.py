"""Passage vectors of documents, two ways (docs/chunking.md).

- split: each passage (operators/chunking.py) is encoded alone, as any text is; its vector knows only
  its own words.
- late: the whole document runs through the model once (up to the model's length; a longer one in
  overlapping windows, each passage whole in one of them with the text before it as context), and each
  passage's vectors come from its own tokens' states, so every passage carries the document's context
  (late chunking, Günther et al. 2024, arXiv 2409.04701). The dense vector is the mean of the span's
  token states (then the model's own Dense / Normalize modules, and unit length); for BGE-M3, whose
  dense vector is normally the CLS state, too, and its sparse weights and ColBERT vectors come from the
  span's tokens. Special tokens and a document prompt are context, never part of a passage's pool.

Both return the passages of every document and one EncodedBatch whose rows are the passages, document
after document, so the caller turns a batch of documents into passage rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from operators.chunking import ChunkSpec, Passage, Window, chunk_offsets, plan_windows
from operators.encoders.base import EncodedBatch, TransformerEncoder, _scatter
from operators.encoders.batching import FlatTokens, pad_rows, plan_batches


class ChunkMode(StrEnum):
    SPLIT = "split"
    LATE = "late"


@dataclass(frozen=True)
class Chunking:
    """How documents become passages: `mode`, at most `max_tokens` tokens each, `overlap` shared."""

    max_tokens: int
    overlap: int = 0
    mode: ChunkMode = ChunkMode.SPLIT

    @property
    def spec(self) -> ChunkSpec:
        return ChunkSpec(self.max_tokens, self.overlap)

    def identity(self) -> str:
        """What a row's `model` gets appended, so that rows written with other chunking are re-embedded."""
        return f"chunks={self.mode}/{self.max_tokens}/{self.overlap}"

    def as_dict(self) -> dict:
        return {"mode": str(self.mode), "max_tokens": self.max_tokens, "overlap": self.overlap}


def passage_model_id(model_id: str, chunking: Chunking | None) -> str:
    """The `model` of a passage table's rows and metadata: the encoder's identity and how it chunked, so that
    rows written with other chunking are not taken as up to date."""
    return model_id if chunking is None else f"{model_id}:{chunking.identity()}"


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one text ([CLS] and [SEP] for BERT, <s> and </s> for
    XLM-R), read off a tokenised word."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    leading = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
    return full[:leading], full[leading + len(bare):]


def encode_passages(encoder: TransformerEncoder, texts: Sequence[str], chunking: Chunking,
                    prompt_name: str | None = "document") -> tuple[list[list[Passage]], EncodedBatch]:
    """The passages of each text and their vectors (rows: passages, text after text)."""
    encoded = encoder.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                                return_attention_mask=False, return_token_type_ids=False) if texts else None
    offsets = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in encoded["offset_mapping"]] if texts else []
    passages = [chunk_offsets(text, o, chunking.spec) for text, o in zip(texts, offsets, strict=True)]
    if chunking.mode == ChunkMode.SPLIT:
        pieces = [text[p.char_start:p.char_end] for text, found in zip(texts, passages, strict=True) for p in found]
        return passages, encoder.encode(pieces, prompt_name=prompt_name)
    ids = [np.asarray(row, dtype=np.int64) for row in encoded["input_ids"]] if texts else []
    cased = getattr(encoder, "_cased", None)  # a folder that lower-cases its texts (same offsets)
    if cased is not None and any(cased(text) != text for text in texts):
        again = encoder.tokenizer([cased(text) for text in texts], add_special_tokens=False)["input_ids"]
        ids = [np.asarray(row, dtype=np.int64) for row in again]
        if [len(row) for row in ids] != [len(o) for o in offsets]:
            msg = "late chunking: the lower-cased texts tokenise differently from the texts"
            raise ValueError(msg)
    return passages, _late(encoder, ids, passages, prompt_name)


def _prompt_ids(encoder: TransformerEncoder, prompt_name: str | None) -> list[int]:
    prompt = encoder.prompt_for(prompt_name) if hasattr(encoder, "prompt_for") else ""
    if not prompt:
        return []
    return list(encoder.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def _late(encoder: TransformerEncoder, ids: list[np.ndarray], passages: list[list[Passage]],
          prompt_name: str | None) -> EncodedBatch:
    """One forward per window; each passage pooled from its span of its window's states."""
    before, after = special_tokens(encoder.tokenizer)
    prompt = _prompt_ids(encoder, prompt_name)
    room = encoder.max_length - len(before) - len(after) - len(prompt)
    if room < 1:
        msg = f"the model's length {encoder.max_length} leaves no room for a passage after its prompt"
        raise ValueError(msg)
    first_row = np.cumsum([0, *(len(found) for found in passages)])
    sequences: list[list[int]] = []
    members: list[tuple[int, Window]] = []  # (document, window) per sequence
    for doc, (tokens, found) in enumerate(zip(ids, passages, strict=True)):
        for window in plan_windows(found, len(tokens), room):
            sequences.append([*before, *prompt, *tokens[window.token_start:window.token_end].tolist(), *after])
            members.append((doc, window))
    flat = FlatTokens.from_lists(sequences)
    total = int(first_row[-1])
    outputs: dict[str, list | np.ndarray] = {}
    padded = 0
    import torch  # here, in the worker: a run's driver never loads it

    for batch in plan_batches(flat.lengths, encoder.limits.max_tokens, encoder.limits.max_rows):
        input_ids, mask = (torch.from_numpy(a).to(encoder.device) for a in pad_rows(flat, batch, encoder.pad_id))
        states = encoder.token_states(input_ids, mask)
        padded += input_ids.numel()
        for position, sequence in enumerate(batch):
            doc, window = members[sequence]
            shift = len(before) + len(prompt) - window.token_start
            spans = [(passages[doc][i].token_start + shift, passages[doc][i].token_end + shift)
                     for i in window.passages]
            rows = np.array([first_row[doc] + i for i in window.passages], dtype=np.int64)
            _scatter(outputs, encoder.span_outputs(states[position], input_ids[position], spans), rows, total)
    token_counts = np.array([p.tokens for found in passages for p in found], dtype=np.int64)
    columns = encoder._to_arrow(outputs if total else encoder._empty_outputs())  # noqa: SLF001 - the encoder's own Arrow form
    return EncodedBatch(columns=columns, token_counts=token_counts, truncated=np.zeros(total, dtype=bool),
                        padded_tokens=padded)

