"""Precision options: the int8 (both kernels) and bf16 CPU paths stay close to fp32 and are marked in the
model id; int8 picks its kernel from the CPU's flags and falls back to fp32 where none is fast."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from operators.encoders.base import EncoderSpec
from operators.encoders.int8 import FbgemmInt8Linear, Int8Linear
from operators.encoders.loader import describe_encoder, load_encoder
from operators.encoders.precision import (
    Int8Kernel,
    check_precision,
    compute_dtype,
    int8_kernel,
    model_id_suffix,
    resolve_precision,
)
from tests.int8_helpers import exact_int_mm, patch_slow_int_mm

LINEARS = {"int_mm": Int8Linear, "fbgemm": FbgemmInt8Linear}


@pytest.fixture
def fast_int_mm(monkeypatch):
    patch_slow_int_mm(monkeypatch)


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


@pytest.mark.parametrize(("precision", "kernel"), [("int8", "int_mm"), ("int8", "fbgemm"), ("int8", None),
                                                   ("bf16", None)])
def test_vectors_stay_within_cosine_099_of_fp32(precision, kernel, sample_texts, fp32_vectors, fast_int_mm):
    spec = EncoderSpec(model="minilm", device="cpu", precision=precision, int8_kernel=kernel)
    vectors = dense(spec, sample_texts)
    cosines = (vectors * fp32_vectors).sum(axis=1)
    assert cosines.min() >= 0.99
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_exact_int_mm_is_int_mm():
    generator = torch.Generator().manual_seed(0)
    for m, k, n in [(17, 64, 40), (32, 384, 8), (24, 1536, 16)]:  # shapes _int_mm takes on every device
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=generator)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=generator)
        assert torch.equal(exact_int_mm(a, b), torch._int_mm(a, b))


@pytest.mark.parametrize("kernel", ["int_mm", "fbgemm"])
def test_int8_replaces_every_backbone_linear(kernel):
    encoder = load_encoder(EncoderSpec(model="minilm", device="cpu", precision="int8", int8_kernel=kernel))
    modules = list(encoder.model.modules())
    assert not any(type(module) is torch.nn.Linear for module in modules)
    assert sum(isinstance(module, LINEARS[kernel]) for module in modules) == 6 * 6 + 1  # 6 per layer + pooler


@pytest.mark.parametrize("kernel", ["int_mm", "fbgemm"])
def test_int8_linear_matches_float_linear_on_awkward_shapes(kernel):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    quantised = LINEARS[kernel](linear)
    for shape in [(1, 96), (3, 7, 96), (17, 96)]:
        x = torch.randn(*shape)
        x[..., 5] *= 30  # one outlier channel, as real activations have
        expected = linear(x)
        got = quantised(x)
        assert got.shape == expected.shape
        cosine = torch.nn.functional.cosine_similarity(got.reshape(-1, 40), expected.reshape(-1, 40), dim=-1)
        assert cosine.min() > 0.99


def test_fbgemm_keeps_every_token_resolution_beside_an_outlier_token():
    """Per-tensor activation scales (plain quantize_dynamic) would crush the small tokens of this batch."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    x[0] *= 200  # one outlier token
    cosine = torch.nn.functional.cosine_similarity(FbgemmInt8Linear(linear)(x), linear(x), dim=-1)
    assert cosine.min() > 0.99


@pytest.mark.parametrize(("flags", "machine", "kernel"), [
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "int_mm"),
    ({"avx2", "avx_vnni"}, "x86_64", "int_mm"),
    ({"avx2", "amx_int8"}, "x86_64", "int_mm"),
    ({"avx2", "fma"}, "x86_64", "fbgemm"),  # this machine's kind (AMD EPYC without VNNI)
    ({"sse4_2"}, "x86_64", None),
    ({"asimd"}, "aarch64", None),
    (set(), "x86_64", None),  # no /proc/cpuinfo
])
def test_int8_kernel_follows_the_cpu_flags(flags, machine, kernel):
    assert int8_kernel(frozenset(flags), machine) == kernel


def test_int8_without_a_fast_kernel_runs_fp32_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr("operators.encoders.precision.int8_kernel", lambda: None)
    with caplog.at_level(logging.WARNING):
        spec = resolve_precision(EncoderSpec(model="minilm", precision="int8"))
    assert spec.precision == "fp32" and spec.int8_kernel is None
    assert len(caplog.records) == 1 and "no fast int8 kernel" in caplog.records[0].getMessage()
    assert describe_encoder(spec).model_id == describe_encoder(EncoderSpec(model="minilm", precision="fp32")).model_id


def test_a_resolved_spec_keeps_its_kernel(monkeypatch):
    """The driver resolves once; a worker on another kind of CPU runs the driver's kernel, so every row
    carries the id the table's metadata names."""
    resolved = resolve_precision(EncoderSpec(model="minilm", precision="int8"))
    assert resolved.int8_kernel == int8_kernel()
    monkeypatch.setattr("operators.encoders.precision.int8_kernel", lambda: Int8Kernel.INT_MM)
    assert resolve_precision(resolved) == resolved


def test_explicit_precision_changes_the_model_id_and_auto_does_not():
    base = describe_encoder(EncoderSpec(model="minilm")).model_id
    assert describe_encoder(EncoderSpec(model="minilm", precision="auto")).model_id == base
    # int_mm's id is the one int8 tables had before fbgemm: they stay current; fbgemm rounds differently
    assert describe_encoder(EncoderSpec(model="minilm", precision="int8", int8_kernel="int_mm")).model_id == \
        base + ":precision=int8"
    assert describe_encoder(EncoderSpec(model="minilm", precision="int8", int8_kernel="fbgemm")).model_id == \
        base + ":precision=int8:kernel=fbgemm"
    assert describe_encoder(EncoderSpec(model="minilm", precision="int8")).model_id == \
        base + model_id_suffix("int8", int8_kernel())
    loaded = load_encoder(EncoderSpec(model="minilm", device="cpu", precision="bf16"))
    assert loaded.model_id == base + ":precision=bf16"
    loaded = load_encoder(EncoderSpec(model="minilm", device="cpu", precision="int8", int8_kernel="fbgemm"))
    assert loaded.model_id == base + ":precision=int8:kernel=fbgemm"


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="not one of"):
        check_precision("int4")
    with pytest.raises(ValueError, match="CPU path"):
        check_precision("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="not one of int_mm, fbgemm"):
        describe_encoder(EncoderSpec(model="minilm", precision="int8", int8_kernel="int4"))
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("bf16", torch.device("cpu")) == torch.bfloat16
