"""Passages (operators/chunking.py): spans cover the text, each passage fits its token budget, boundaries
fall at paragraph and sentence ends where possible, and late-chunking windows hold every passage whole."""

from __future__ import annotations

import numpy as np
import pytest

from operators.chunking import (
    NONE,
    ChunkSpec,
    Passage,
    boundaries,
    chunk_offsets,
    chunk_texts,
    plan_windows,
    token_offsets,
)

PARAGRAPHS = [
    "Rivers carry water from the mountains to the sea. They shape valleys over millions of years.",
    "Forests cover a third of the land. Many animals live there, from beetles to bears!",
    "Compression libraries trade speed for ratio; zstd and lz4 are popular choices for large files.",
]


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def bge_tokenizer(tiny_bge_m3_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bge_m3_path)


def long_text(repeats: int = 6) -> str:
    return "\n\n".join(PARAGRAPHS * repeats) + "  trailing words without an end"


def coverage(text: str, passages: list[Passage]) -> np.ndarray:
    covered = np.zeros(len(text), dtype=np.int64)
    for passage in passages:
        covered[passage.char_start:passage.char_end] += 1
    return covered


@pytest.mark.parametrize("tokenizer_name", ["minilm_tokenizer", "bge_tokenizer"])
@pytest.mark.parametrize(("max_tokens", "overlap"), [(16, 0), (32, 0), (24, 8), (7, 3), (64, 20)])
def test_spans_cover_the_text_and_fit_the_budget(request, tokenizer_name, max_tokens, overlap):
    tokenizer = request.getfixturevalue(tokenizer_name)
    text = long_text()
    spec = ChunkSpec(max_tokens, overlap)
    offsets = token_offsets(tokenizer, [text])[0]
    passages = chunk_offsets(text, offsets, spec)
    strength = boundaries(text, offsets)
    assert len(passages) > 1
    assert [p.chunk for p in passages] == list(range(len(passages)))
    assert passages[0].char_start == 0 and passages[-1].char_end == len(text)
    assert passages[0].token_start == 0 and passages[-1].token_end == len(offsets)
    covered = coverage(text, passages)
    assert covered.min() >= 1  # every character once ...
    if overlap == 0:
        assert covered.max() == 1  # ... and only once without overlap: the passages partition the text
        assert all(a.char_end == b.char_start for a, b in zip(passages, passages[1:], strict=False))
    for before, after in zip(passages, passages[1:], strict=False):
        shared = before.token_end - after.token_start
        assert 0 <= shared <= overlap  # consecutive passages share at most M tokens ...
        assert after.token_end > before.token_end  # ... and each brings new ones
        if after.char_start < before.char_end:  # the shared tokens' characters are covered twice
            assert covered[after.char_start:before.char_end].min() >= 2
    for passage in passages:
        assert 1 <= passage.tokens <= max_tokens
        # the span's own tokens: those whose offsets lie inside it
        inside = (offsets[:, 0] >= passage.char_start) & (offsets[:, 1] <= passage.char_end)
        assert np.flatnonzero(inside).tolist() == list(range(passage.token_start, passage.token_end))
        # the passage text alone tokenises to at most the budget where it starts at a word start; a cut inside
        # a word longer than the room left may gain the word-start piece
        alone = tokenizer(text[passage.char_start:passage.char_end], add_special_tokens=False)["input_ids"]
        inside_word = passage.token_start > 0 and strength[passage.token_start] == NONE
        assert len(alone) <= max_tokens + int(inside_word)


def test_boundaries_prefer_paragraphs_then_sentences(minilm_tokenizer):
    text = "\n\n".join(PARAGRAPHS)
    offsets = token_offsets(minilm_tokenizer, [text])[0]
    first_two = len(token_offsets(minilm_tokenizer, ["\n\n".join(PARAGRAPHS[:2])])[0])
    # room for two paragraphs and a bit of the third: the cut is at the paragraph break
    passages = chunk_offsets(text, offsets, ChunkSpec(first_two + 5))
    assert text[passages[0].char_start:passages[0].char_end].rstrip() == "\n\n".join(PARAGRAPHS[:2])
    # room for a sentence and a half of the first paragraph: the cut is at the sentence end
    sentence = "Rivers carry water from the mountains to the sea."
    size = len(token_offsets(minilm_tokenizer, [sentence])[0])
    passages = chunk_offsets(text, offsets, ChunkSpec(size + 4))
    assert text[passages[0].char_start:passages[0].char_end].rstrip() == sentence


def test_a_word_longer_than_the_budget_is_cut_inside(minilm_tokenizer):
    text = "supercalifragilisticexpialidocious antidisestablishmentarianism"
    passages = chunk_texts(minilm_tokenizer, [text], ChunkSpec(2))[0]
    assert all(p.tokens <= 2 for p in passages)
    assert "".join(text[p.char_start:p.char_end] for p in passages) == text


def test_short_and_empty_texts_are_one_passage(minilm_tokenizer):
    short, empty = chunk_texts(minilm_tokenizer, ["One short sentence.", "   "], ChunkSpec(50, 10))
    assert short == [Passage(0, 0, len("One short sentence."), 0, 4)]
    assert empty == [Passage(0, 0, 3, 0, 0)]


def test_spec_is_checked():
    with pytest.raises(ValueError, match="overlap"):
        ChunkSpec(8, 8)
    with pytest.raises(ValueError, match="at least 1 token"):
        ChunkSpec(0)


@pytest.mark.parametrize("room", [40, 64, 1000])
def test_windows_hold_each_passage_whole_once(minilm_tokenizer, room):
    text = long_text(10)
    offsets = token_offsets(minilm_tokenizer, [text])[0]
    passages = chunk_offsets(text, offsets, ChunkSpec(24, 6))
    windows = plan_windows(passages, len(offsets), room)
    assert sorted(i for w in windows for i in w.passages) == list(range(len(passages)))
    for window in windows:
        assert 0 < window.token_end - window.token_start <= room
        for index in window.passages:
            assert window.token_start <= passages[index].token_start < passages[index].token_end <= window.token_end
    if room >= len(offsets):
        assert len(windows) == 1
    else:  # a passage after the first window sees text before it
        later = [w for w in windows[1:] if passages[w.passages[0]].token_start - w.token_start > 0]
        assert later
