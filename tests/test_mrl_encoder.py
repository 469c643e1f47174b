"""The Matryoshka encoder against sentence-transformers on the real MiniLM weights."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from operators.encoders.base import BatchLimits, EncoderSpec
from operators.encoders.folders import read_layout
from operators.encoders.loader import describe_encoder, load_encoder
from operators.encoders.mrl import MatryoshkaEncoder
from tests.simulated_oom import fail_batches_above


def vectors(column) -> np.ndarray:
    return np.asarray(column.flatten().to_numpy(), dtype=np.float32).reshape(len(column), -1)


@pytest.fixture(scope="module")
def texts(sample_dir) -> list[str]:
    corpus = ds.dataset(str(sample_dir)).to_table().column("text").to_pylist()
    return corpus[:120] + ["short", "a", "Ünïcödé and emoji 🚀 text", "x " * 600]


@pytest.fixture(scope="module")
def sentence_transformer(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def encoder(minilm_path) -> MatryoshkaEncoder:
    return load_encoder(EncoderSpec(model="minilm", dims=[256, 128, 64], device="cpu"))


def test_dense_equals_sentence_transformers(encoder, sentence_transformer, texts):
    ours = encoder.encode(texts)
    reference = sentence_transformer.encode(texts, normalize_embeddings=True, batch_size=16)
    dense = vectors(ours.columns["dense"])
    cosine = (dense * reference).sum(axis=1)
    assert cosine.min() >= 0.9999
    assert np.allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-5)
    assert ours.truncated[-1] and ours.token_counts[-1] == encoder.max_length == 256


@pytest.mark.parametrize("dim", [256, 128, 64])
def test_nested_sizes_are_truncate_then_normalise(encoder, sentence_transformer, texts, dim):
    ours = vectors(encoder.encode(texts[:20]).columns[f"dense_{dim}"])
    reference = sentence_transformer.encode(texts[:20], normalize_embeddings=True, truncate_dim=dim)
    assert ours.shape == (20, dim)
    assert (ours * reference).sum(axis=1).min() >= 0.9999


def test_batching_does_not_change_vectors(minilm_path, texts):
    tiny_budget = MatryoshkaEncoder(minilm_path, device=torch.device("cpu"), limits=BatchLimits(600, 3))
    whole = vectors(load_encoder(EncoderSpec(device="cpu")).encode(texts[:30]).columns["dense"])
    one_by_one = np.vstack([vectors(tiny_budget.encode([t]).columns["dense"]) for t in texts[:5]])
    many_batches = tiny_budget.encode(texts[:30])
    assert np.allclose(vectors(many_batches.columns["dense"]), whole, atol=1e-5)
    assert np.allclose(one_by_one, whole[:5], atol=1e-5)


def test_out_of_memory_splits_the_batch(encoder, texts, monkeypatch):
    expected = vectors(encoder.encode(texts[:12]).columns["dense"])
    fail_batches_above(monkeypatch, encoder, 2)
    result = encoder.encode(texts[:12])
    assert result.oom_splits > 0
    assert np.allclose(vectors(result.columns["dense"]), expected, atol=1e-5)


def test_empty_input(encoder):
    result = encoder.encode([])
    assert len(result.columns["dense"]) == 0 and len(result.columns["dense_64"]) == 0


def test_describe_matches_loaded_encoder(encoder):
    description = describe_encoder(EncoderSpec(model="minilm", dims=[256, 128, 64]))
    assert description.model_id == encoder.model_id
    assert [f.name for f in description.fields] == ["dense", "dense_256", "dense_128", "dense_64"]
    with pytest.raises(ValueError, match="nested sizes"):
        describe_encoder(EncoderSpec(model="minilm", dims=[512]))


def test_prompts_cls_pooling_and_dense_head(tmp_path, minilm_path, sentence_transformer, texts):
    """A folder declaring CLS pooling, a Dense head and query/document prompts behaves as
    sentence-transformers does with the same folder."""
    from sentence_transformers import SentenceTransformer, models

    transformer = sentence_transformer[0]
    pooling = models.Pooling(384, pooling_mode="cls")
    torch.manual_seed(0)
    dense = models.Dense(384, 96)
    model = SentenceTransformer(
        modules=[transformer, pooling, dense],
        device="cpu",
        prompts={"query": "query: ", "document": "passage: "},
        default_prompt_name="document",
    )
    folder = tmp_path / "custom"
    model.save(str(folder))
    layout = read_layout(str(folder))
    assert layout.kinds == ["Pooling", "Dense"]  # no Normalize: encode() without normalize_embeddings is not unit
    assert layout.module_config(0)["pooling_mode"] == "cls"
    ours = MatryoshkaEncoder(str(folder), dims=[32], device=torch.device("cpu"))
    for prompt_name in ("query", "document"):
        mine = vectors(ours.encode(texts[:10], prompt_name=prompt_name).columns["dense"])
        theirs = model.encode(texts[:10], prompt_name=prompt_name, normalize_embeddings=True)
        assert (mine * theirs).sum(axis=1).min() >= 0.9999
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "query: "


def test_sentence_embedding_honours_the_folders_normalize(tmp_path, minilm_path, sentence_transformer, texts):
    """`embed` is sentence-transformers' `encode` without normalize_embeddings: unit length exactly when the
    folder has a Normalize module (MiniLM's does; a Pooling + Dense folder does not)."""
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(1)
    unnormalised = SentenceTransformer(modules=[sentence_transformer[0], models.Pooling(384), models.Dense(384, 48)],
                                       device="cpu")
    folder = tmp_path / "dense-head"
    unnormalised.save(str(folder))
    for model, path in ((sentence_transformer, minilm_path), (unnormalised, str(folder))):
        ours = MatryoshkaEncoder(path, device=torch.device("cpu"))
        features = model.preprocess(texts[:8])
        mine = ours.embed(features["input_ids"], features["attention_mask"]).numpy()
        theirs = model.encode(texts[:8], batch_size=8)
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    assert not np.allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-3)


def test_prompts_left_out_of_pooling_as_sentence_transformers_does(tmp_path, sentence_transformer, texts):
    """A folder whose Pooling says `include_prompt: false` (INSTRUCTOR-style) pools the text's tokens only,
    the prompt's left out exactly as sentence-transformers measures and masks them: every pooling mode at
    once (concatenated, as a Pooling module may declare), so each mode's masking is checked."""
    from sentence_transformers import SentenceTransformer, models

    modes = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
    prompts = {"query": "Represent this question for retrieving answers: ", "document": "passage: "}
    model = SentenceTransformer(
        modules=[sentence_transformer[0], models.Pooling(384, pooling_mode=modes, include_prompt=False)],
        device="cpu", prompts=prompts, default_prompt_name="document",
    )
    folder = tmp_path / "no-prompt-pooling"
    model.save(str(folder))
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["include_prompt"] is False
    ours = MatryoshkaEncoder(str(folder), dims=[64], device=torch.device("cpu"))
    assert ours.dimension == 384 * len(modes)
    dense = {}
    for prompt_name, prompt in prompts.items():
        features = model.preprocess(texts[:8], prompt=prompt)
        assert ours.prompt_length(prompt) == features["prompt_length"]
        mine = ours.embed(features["input_ids"], features["attention_mask"], features["prompt_length"]).numpy()
        np.testing.assert_allclose(mine, model.encode(texts[:8], prompt_name=prompt_name), atol=1e-5)
        dense[prompt_name] = vectors(ours.encode(texts[:8], prompt_name=prompt_name).columns["dense"])
        reference = model.encode(texts[:8], prompt_name=prompt_name, normalize_embeddings=True)
        assert (dense[prompt_name] * reference).sum(axis=1).min() >= 0.9999
    with_prompt = SentenceTransformer(modules=[sentence_transformer[0], models.Pooling(384, pooling_mode=modes)],
                                      device="cpu", prompts=prompts)
    pooled_prompt = with_prompt.encode(texts[:8], prompt_name="query", normalize_embeddings=True)
    assert (dense["query"] * pooled_prompt).sum(axis=1).max() < 0.9999  # leaving the prompt out changes vectors
