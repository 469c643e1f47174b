"""Precision options: the int8 and bf16 CPU paths stay close to fp32 and are marked in the model id."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from operators.encoders.base import EncoderSpec
from operators.encoders.int8 import Int8Linear
from operators.encoders.loader import describe_encoder, load_encoder
from operators.encoders.precision import check_precision, compute_dtype


@pytest.fixture(scope="module")
def sample_texts(sample_dir) -> list[str]:
    texts = ds.dataset(str(sample_dir)).to_table(columns=["text"]).column("text").to_pylist()
    return texts[::90][:30]  # spread over the shards: short and long, some past the 256-token limit


def dense(spec: EncoderSpec, texts: list[str]) -> np.ndarray:
    encoded = load_encoder(spec).encode(texts)
    return encoded.columns["dense"].flatten().to_numpy().reshape(len(texts), -1)


@pytest.fixture(scope="module")
def fp32_vectors(sample_texts) -> np.ndarray:
    return dense(EncoderSpec(model="minilm", device="cpu"), sample_texts)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_vectors_stay_within_cosine_099_of_fp32(precision, sample_texts, fp32_vectors):
    vectors = dense(EncoderSpec(model="minilm", device="cpu", precision=precision), sample_texts)
    cosines = (vectors * fp32_vectors).sum(axis=1)
    assert cosines.min() >= 0.99
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_int8_replaces_every_backbone_linear():
    encoder = load_encoder(EncoderSpec(model="minilm", device="cpu", precision="int8"))
    modules = list(encoder.model.modules())
    assert not any(type(module) is torch.nn.Linear for module in modules)
    assert sum(isinstance(module, Int8Linear) for module in modules) == 6 * 6 + 1  # 6 per layer + pooler


def test_int8_linear_matches_float_linear_on_awkward_shapes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    quantised = Int8Linear(linear)
    for shape in [(1, 96), (3, 7, 96), (17, 96)]:
        x = torch.randn(*shape)
        x[..., 5] *= 30  # one outlier channel, as real activations have
        expected = linear(x)
        got = quantised(x)
        assert got.shape == expected.shape
        cosine = torch.nn.functional.cosine_similarity(got.reshape(-1, 40), expected.reshape(-1, 40), dim=-1)
        assert cosine.min() > 0.99


def test_explicit_precision_changes_the_model_id_and_auto_does_not():
    base = describe_encoder(EncoderSpec(model="minilm")).model_id
    assert describe_encoder(EncoderSpec(model="minilm", precision="auto")).model_id == base
    assert describe_encoder(EncoderSpec(model="minilm", precision="int8")).model_id == base + ":precision=int8"
    loaded = load_encoder(EncoderSpec(model="minilm", device="cpu", precision="bf16"))
    assert loaded.model_id == base + ":precision=bf16"


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="not one of"):
        check_precision("int4")
    with pytest.raises(ValueError, match="CPU path"):
        check_precision("int8", torch.device("cuda"))
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("bf16", torch.device("cpu")) == torch.bfloat16
