"""Passage vectors (operators/passages.py): split equals encoding each passage's text alone; late chunking
equals mean pooling of a direct transformers forward's token states over each passage's span (MiniLM and the
tiny BGE-M3, whose sparse and ColBERT outputs come from the span's tokens), in windows for long documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.chunking import plan_windows
from operators.encoders.base import EncoderSpec
from operators.encoders.loader import load_encoder
from operators.passages import Chunking, ChunkMode, encode_passages, special_tokens
from operators.vectors import as_matrix

TEXTS = [
    "Rivers carry water from the mountains to the sea. They shape valleys over millions of years.\n\n"
    "Forests cover a third of the land. Many animals live there, from beetles to bears! "
    "Compression libraries trade speed for ratio; zstd and lz4 are popular choices for large files.",
    "A short one.",
    "Machine learning pipelines read Parquet files, batch texts by length and write tables. " * 3,
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_encoder(EncoderSpec(model=minilm_path, device="cpu", dims=[64]))


@pytest.fixture(scope="module")
def bge(tiny_bge_m3_path):
    return load_encoder(EncoderSpec(model=tiny_bge_m3_path, device="cpu", max_length=64))


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def direct_states(folder: str, token_ids: list[int]) -> torch.Tensor:
    """The last hidden states of one sequence from transformers itself, no embedlake code in between."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids])).last_hidden_state[0].float()


def test_split_equals_each_passage_encoded_alone(minilm):
    chunking = Chunking(16, 4, ChunkMode.SPLIT)
    passages, encoded = encode_passages(minilm, TEXTS, chunking)
    assert [len(found) for found in passages][1] == 1 and len(passages[0]) > 2
    vectors = as_matrix(encoded.columns["dense"])
    row = 0
    for text, found in zip(TEXTS, passages, strict=True):
        for passage in found:
            alone = minilm.encode([text[passage.char_start:passage.char_end]])
            np.testing.assert_allclose(vectors[row], as_matrix(alone.columns["dense"])[0], atol=1e-5)
            row += 1
    assert row == len(vectors) == len(encoded.token_counts)
    assert (encoded.token_counts <= 16 + 2).all()  # the passage and [CLS] [SEP]


def test_late_equals_mean_of_the_documents_token_states(minilm, minilm_path):
    chunking = Chunking(12, 3, ChunkMode.LATE)
    passages, encoded = encode_passages(minilm, TEXTS, chunking)
    dense, nested = as_matrix(encoded.columns["dense"]), as_matrix(encoded.columns["dense_64"])
    row = 0
    for text, found in zip(TEXTS, passages, strict=True):
        token_ids = minilm.tokenizer(text)["input_ids"]  # [CLS] text [SEP]: fits MiniLM's 256 tokens
        states = direct_states(minilm_path, token_ids).numpy()
        for passage in found:
            pooled = states[1 + passage.token_start:1 + passage.token_end].mean(axis=0)  # after [CLS]
            np.testing.assert_allclose(dense[row], unit(pooled), atol=1e-5)
            np.testing.assert_allclose(nested[row], unit(unit(pooled)[:64]), atol=1e-5)
            row += 1
    assert row == len(dense)
    # context matters: the first passage of the first text is not what it is alone
    alone = as_matrix(minilm.encode([TEXTS[0][passages[0][1].char_start:passages[0][1].char_end]]).columns["dense"])
    assert float(dense[1] @ alone[0]) < 0.999


def test_late_bge_m3_dense_sparse_colbert_from_the_span(bge, tiny_bge_m3_path):
    chunking = Chunking(10, 2, ChunkMode.LATE)
    text = TEXTS[0]
    passages, encoded = encode_passages(bge, [text], chunking)
    found = passages[0]
    ids = bge.tokenizer(text, add_special_tokens=False)["input_ids"]
    before, after = special_tokens(bge.tokenizer)
    leading, room = len(before), bge.max_length - len(before) - len(after)
    windows = plan_windows(found, len(ids), room)
    assert len(windows) > 1  # longer than the model's 64 tokens: overlapping windows
    sparse = encoded.columns["sparse"].to_pylist()
    colbert = encoded.columns["colbert"].to_pylist()
    dense = as_matrix(encoded.columns["dense"])
    for window in windows:
        sequence = [*before, *ids[window.token_start:window.token_end], *after]
        assert len(sequence) <= bge.max_length
        states = direct_states(tiny_bge_m3_path, sequence)
        for index in window.passages:
            passage = found[index]
            span = slice(leading + passage.token_start - window.token_start,
                         leading + passage.token_end - window.token_start)
            np.testing.assert_allclose(dense[index], unit(states[span].mean(dim=0).numpy()), atol=1e-5)
            with torch.no_grad():
                weights = torch.relu(bge.sparse_linear(states[span])).squeeze(-1).numpy()
                vectors = torch.nn.functional.normalize(bge.colbert_linear(states[span]), dim=-1).numpy()
            expected: dict[int, float] = {}
            for token, weight in zip(np.asarray(sequence)[span], weights, strict=True):
                if weight > 0 and token not in bge.unused_ids:
                    expected[int(token)] = max(expected.get(int(token), 0.0), float(weight))
            got = dict(zip(sparse[index]["indices"], sparse[index]["values"], strict=True))
            assert sorted(got) == sorted(expected)
            np.testing.assert_allclose([got[t] for t in sorted(got)], [expected[t] for t in sorted(expected)],
                                       atol=1e-5)
            np.testing.assert_allclose(np.asarray(colbert[index], dtype=np.float32), vectors, atol=2e-3)


def test_empty_batch(minilm):
    passages, encoded = encode_passages(minilm, [], Chunking(8, 0, ChunkMode.LATE))
    assert passages == [] and len(encoded.columns["dense"]) == 0


def test_embed_passages_operator_rows_with_bge_m3_late(tiny_bge_m3_path):
    """The encoder actor's operator without Ray: a decided batch of documents in, one row per passage of each
    embedded document (ids, spans, counts, all three BGE-M3 outputs as encode_passages gives them), the other rows
    passed through once."""
    import pyarrow as pa

    from operators.embed_passages import EmbedPassages
    from operators.exchange import (
        PASSAGES_COL,
        REASON_COL,
        ROWS_COL,
        STATUS_COL,
        TEXT_COL,
        TOKENS_COL,
        Status,
        conform,
        decided_row_schema,
    )

    spec = EncoderSpec(model=tiny_bge_m3_path, device="cpu", max_length=64)
    chunking = Chunking(10, 2, ChunkMode.LATE)
    operator = EmbedPassages(spec, chunking, keep_text=True)
    statuses = [Status.EMBEDDED, Status.QUARANTINED, Status.EMBEDDED, Status.UNCHANGED]
    texts = [TEXTS[0], None, TEXTS[1], None]
    batch = conform({"id": pa.array(["d0", "bad", "d1", None]), TEXT_COL: pa.array(texts, pa.string()),
                     STATUS_COL: pa.array([s.value for s in statuses]), ROWS_COL: pa.array([1, 1, 1, 7], pa.int64()),
                     REASON_COL: pa.array([None, "empty text", None, None], pa.string())},
                    decided_row_schema([]), 4)
    out = operator(batch).to_pylist()
    passages, encoded = encode_passages(operator.encoder, [TEXTS[0], TEXTS[1]], chunking)
    first = [row for row in out if row["doc_id"] == "d0"]
    assert [row["id"] for row in first] == [f"d0#{n}" for n in range(len(passages[0]))]
    assert [row[ROWS_COL] for row in first] == [1] + [0] * (len(first) - 1)  # the document counts once
    assert {row[PASSAGES_COL] for row in first} == {len(passages[0])}
    assert [(row["char_start"], row["char_end"]) for row in first] == [(p.char_start, p.char_end) for p in passages[0]]
    assert first[1]["text"] == TEXTS[0][passages[0][1].char_start:passages[0][1].char_end]
    assert all(row["model"].endswith(":chunks=late/10/2") for row in first)
    dense = as_matrix(encoded.columns["dense"])
    np.testing.assert_allclose(np.stack([row["dense"] for row in first]), dense[:len(first)], atol=1e-6)
    assert first[2]["sparse"] == encoded.columns["sparse"][2].as_py()
    assert [row[TOKENS_COL] for row in first] == [p.tokens for p in passages[0]]
    passed = [(row["id"], row[STATUS_COL], row[ROWS_COL]) for row in out if row["doc_id"] is None]
    assert passed == [("bad", Status.QUARANTINED, 1), (None, Status.UNCHANGED, 7)]
    assert [row["id"] for row in out if row["doc_id"] == "d1"] == ["d1#0"]
