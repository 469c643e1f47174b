"""Documents cut into passages of at most N tokens of the model's own tokenizer, for RAG.

One tokenisation of the whole document with the fast tokenizer's offset mapping gives every token's
character span; passages are runs of those tokens, so a passage's size is counted in the tokens the
model will see (no re-tokenising to measure, no guessing from characters). A passage ends where the
text allows it best: a paragraph break in the second half of the budget, else a sentence end there,
else the last word boundary, else (one word longer than the budget) a cut inside the word.

Spans are character offsets into the document, `[char_start, char_end)`: without overlap the
passages partition the text (the first starts at 0, each ends where the next begins, the last at the
end: whitespace between passages belongs to the earlier one); with `overlap` M each passage after the
first also starts up to M tokens back, at the earliest word start in reach (no overlap when none is).

Late chunking (`plan_windows`) needs the same token spans and windows of at most the model's length
that hold each passage whole, with as much of the text before it as fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SENTENCE_ENDS = frozenset(".!?;:\u3002\uff01\uff1f\u2026")
# Boundary strength before a token: how good a place it is to start a passage.
NONE, WORD, SENTENCE, PARAGRAPH = 0, 1, 2, 3


@dataclass(frozen=True)
class Passage:
    """One passage of a document: its number, its character span and its token span in the document's
    tokens (special tokens not counted)."""

    chunk: int
    char_start: int
    char_end: int
    token_start: int
    token_end: int

    @property
    def tokens(self) -> int:
        return self.token_end - self.token_start


@dataclass(frozen=True)
class ChunkSpec:
    """Passages of at most `max_tokens` tokens, consecutive ones sharing up to `overlap` tokens."""

    max_tokens: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            msg = f"passages need at least 1 token, got {self.max_tokens}"
            raise ValueError(msg)
        if not 0 <= self.overlap < self.max_tokens:
            msg = f"overlap must be at least 0 and less than the passage size {self.max_tokens}, got {self.overlap}"
            raise ValueError(msg)


def token_offsets(tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """(tokens, 2) character offsets of each text's tokens, special tokens left out (a fast tokenizer's
    offset mapping; the slow ones have none)."""
    if not getattr(tokenizer, "is_fast", False):
        msg = f"chunking needs a fast tokenizer (offset mapping); {type(tokenizer).__name__} has none"
        raise ValueError(msg)
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False)
    return [np.asarray(offsets, dtype=np.int64).reshape(-1, 2) for offsets in encoded["offset_mapping"]]


def boundaries(text: str, offsets: np.ndarray) -> np.ndarray:
    """Strength of the boundary before each token (PARAGRAPH, SENTENCE, WORD or NONE); token 0 starts the
    text, so it gets PARAGRAPH."""
    n = len(offsets)
    strength = np.zeros(n, dtype=np.int8)
    if n == 0:
        return strength
    strength[0] = PARAGRAPH
    for j in range(1, n):
        previous_end = int(offsets[j - 1, 1])
        start = int(offsets[j, 0])
        end = int(offsets[j, 1])
        while start < end and text[start].isspace():  # tokenizers that count a leading space into the token
            start += 1
        gap = text[previous_end:start] if start > previous_end else ""
        if not gap or not any(ch.isspace() for ch in gap):
            continue
        if "\n" in gap:
            strength[j] = PARAGRAPH if gap.count("\n") > 1 or j == 1 else SENTENCE
            if strength[j] == SENTENCE and previous_end and text[previous_end - 1] in SENTENCE_ENDS:
                strength[j] = PARAGRAPH
        elif previous_end and text[previous_end - 1] in SENTENCE_ENDS:
            strength[j] = SENTENCE
        else:
            strength[j] = WORD
    return strength


def _cut(strength: np.ndarray, low: int, high: int) -> int:
    """Where a passage starting at token `low` with room up to token `high` (exclusive) ends: the last
    paragraph break in the second half, else the last sentence end there, else the last word boundary,
    else `high` (a word longer than the room)."""
    half = low + max(1, (high - low) // 2)
    window = strength[low + 1:high + 1]
    for level, first in ((PARAGRAPH, half), (SENTENCE, half), (WORD, low + 1)):
        found = np.flatnonzero(window >= level) + low + 1
        found = found[found >= first]
        if len(found):
            return int(found[-1])
    return high


def _overlap_start(strength: np.ndarray, own_start: int, overlap: int, floor: int) -> int:
    """The first token of a passage whose own tokens start at `own_start`: up to `overlap` tokens back,
    at the earliest word start in reach (after `floor`, the previous passage's start); none in reach, no
    overlap (a passage that starts inside a word would not tokenise alone as it does in the document)."""
    if overlap == 0:
        return own_start
    low = max(own_start - overlap, floor + 1)
    starts = np.flatnonzero(strength[low:own_start] >= WORD)
    return low + int(starts[0]) if len(starts) else own_start


def chunk_offsets(text: str, offsets: np.ndarray, spec: ChunkSpec) -> list[Passage]:
    """The passages of one text from its token offsets. A text without tokens is one empty-token passage
    over the whole text, so that every document has at least one passage."""
    n = len(offsets)
    if n == 0:
        return [Passage(0, 0, len(text), 0, 0)]
    strength = boundaries(text, offsets)
    spans: list[tuple[int, int]] = []
    first, own_start = 0, 0
    while True:
        end = n if n - first <= spec.max_tokens else _cut(strength, own_start, first + spec.max_tokens)
        spans.append((first, end))
        if end >= n:
            break
        next_first = _overlap_start(strength, end, spec.overlap, first)
        first, own_start = next_first, end
    passages = []
    for number, (first, end) in enumerate(spans):
        char_start = 0 if first == 0 else int(offsets[first, 0])
        char_end = len(text) if end >= n else int(offsets[end, 0])
        passages.append(Passage(number, char_start, char_end, first, end))
    return passages


def chunk_texts(tokenizer, texts: Sequence[str], spec: ChunkSpec) -> list[list[Passage]]:
    """The passages of each text (see `chunk_offsets`), from one batched tokenisation."""
    return [chunk_offsets(text, offsets, spec)
            for text, offsets in zip(texts, token_offsets(tokenizer, texts), strict=True)]


@dataclass(frozen=True)
class Window:
    """A stretch of a document's tokens `[token_start, token_end)` run through the model at once, and the
    passages (indexes into the document's list) pooled from its states."""

    token_start: int
    token_end: int
    passages: tuple[int, ...]


def plan_windows(passages: Sequence[Passage], tokens: int, room: int) -> list[Window]:
    """Windows of at most `room` tokens covering a document of `tokens` tokens, so that each passage lies
    whole in exactly one window: one window when the document fits; else each window starts with up to
    a quarter of its room of context before its first passage and takes every following passage that fits
    (more context costs more forward passes: windows then advance by less)."""
    if tokens <= room:
        return [Window(0, tokens, tuple(range(len(passages))))]
    windows: list[Window] = []
    index = 0
    while index < len(passages):
        first = passages[index]
        if first.tokens > room:
            msg = f"passage of {first.tokens} tokens does not fit a window of {room}"
            raise ValueError(msg)
        context = min(room - first.tokens, room // 4)
        start = max(0, first.token_start - context)
        end = min(start + room, tokens)
        members = []
        while index < len(passages) and passages[index].token_end <= end:
            members.append(index)
            index += 1
        windows.append(Window(start, end, tuple(members)))
    return windows
