"""The int8 CPU path: every Linear of a backbone on int8 weights (one scale per output channel) and int8
activations (one scale per token), chosen with `--precision int8` (operators/encoders/precision.py picks
the kernel per CPU).

Two kernels, the same scheme (symmetric weights per output channel, activations per token):
- Int8Linear: an int8 x int8 -> int32 matmul (`torch._int_mm`), fast where oneDNN has VNNI or AMX. Without
  them it falls to a reference loop ~30x slower than fp32 (AVX2-only CPUs).
- FbgemmInt8Linear: fbgemm's dynamic quantised Linear (`torch.ops.quantized.linear_dynamic`, u8 x s8 on
  AVX2), faster than fp32 on an AVX2-only EPYC (benchmarks/RESULTS.md). Its weights keep 7 bits (see
  below), so its vectors differ slightly from Int8Linear's and the model id names the kernel.

Why not plain `torch.ao.quantization.quantize_dynamic`: it quantises activations with one scale per
tensor, and a padded batch with a few outlier tokens then loses most of the resolution of every other
token (on all-MiniLM-L6-v2, even with per-channel weights: min cosine to fp32 0.959 on 400 sample texts
with its 7-bit activations, 0.987 with 8). FbgemmInt8Linear divides each token by its own max |x| first, so
fbgemm's one scale per tensor is in effect one per token, and multiplies the outputs back.

Why 7-bit weights: without VNNI, fbgemm multiplies u8 activations by s8 weights in pairs summed into
int16 (`vpmaddubsw`), which saturates once 2 x 255 x |w| passes 32767. Weights in [-63, 63] can never
saturate (2 x 255 x 63 = 32130), so the integer products are exact on every CPU; the usual fix, 7-bit
activations (`reduce_range`), loses more: min cosine to fp32 on 400 sample texts 0.9934 against 0.9950
with 7-bit weights (Int8Linear: 0.9961). 8 bits of both saturate on random-init weights (cosine 0.97).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from operators.encoders.precision import Int8Kernel, cpu_flags, int8_kernel

INT8_MAX = 127
FBGEMM_WEIGHT_MAX = 63  # 2 x 255 x 63 <= 32767: AVX2's int16 pair sums never saturate
log = logging.getLogger(__name__)


def channel_scales(weight: torch.Tensor, top: int = INT8_MAX) -> torch.Tensor:
    """One symmetric scale per output channel: max |w| maps to `top`."""
    return weight.abs().amax(dim=1).clamp(min=1e-8) / top


def token_scales(rows: torch.Tensor) -> torch.Tensor:
    """max |x| per token (row), as max(amax, -amin): two vectorised reductions, ~20x faster on CPU than
    vector_norm(ord=inf) or abs().amax() (which writes a copy of the activations)."""
    return torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_()).clamp_(min=1e-8)


class Int8Linear(nn.Module):
    """A Linear with int8 weights (one scale per output channel) and int8 activations (one scale per
    token, computed on the fly), on `torch._int_mm`. Same inputs and outputs as the fp32 Linear it replaces."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = channel_scales(weight)
        quantised = torch.round(weight / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("weight_t", quantised.t().contiguous())  # (in, out), the layout _int_mm wants
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Few passes over the activations: on CPU the quantisation is memory-bound and, done naively
        # (abs, amax, divide, round, clamp, cast), cost as much as the int8 matmul it feeds.
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        scale = token_scales(rows).div_(INT8_MAX)
        quantised = torch.div(rows, scale).round_().to(torch.int8)  # |rows / scale| <= 127 by construction
        out = torch._int_mm(quantised, self.weight_t).float().mul_(scale)
        out.mul_(self.weight_scale)  # in place: a broadcasting addcmul is ~10x slower on CPU
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class FbgemmInt8Linear(nn.Module):
    """Int8Linear's scheme on fbgemm: weights in [-63, 63] per output channel (prepacked for fbgemm),
    activations divided by their per-token max |x| so that fbgemm's per-tensor u8 quantisation of the
    result (range [-1, 1], 255 steps, as Int8Linear's 2 x 127) gives every token the same resolution; the
    output is multiplied back by the token scales, then the bias added (so it is not packed)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = channel_scales(weight, FBGEMM_WEIGHT_MAX)
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.13 warns that quantised tensors will go in a future release
            warnings.simplefilter("ignore", UserWarning)
            quantised = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(quantised, None)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        scale = token_scales(rows)
        # reduce_range False: all 8 bits of the activations (the weights' 7 bits already rule out saturation)
        out = torch.ops.quantized.linear_dynamic(torch.div(rows, scale), self.packed, False).mul_(scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (fbgemm, 7-bit weights)"


LINEARS = {Int8Kernel.INT_MM: Int8Linear, Int8Kernel.FBGEMM: FbgemmInt8Linear}


def check_kernel(kernel: str) -> None:
    """Refuse a kernel this torch lacks; warn (one line) when the kernel is slow on this CPU, which a
    worker meets only when the driver chose the kernel on another kind of CPU."""
    if kernel == Int8Kernel.INT_MM and not hasattr(torch, "_int_mm"):
        msg = f"precision int8 (kernel int_mm) needs torch._int_mm (torch >= 2.2); this is torch {torch.__version__}"
        raise ValueError(msg)
    if kernel == Int8Kernel.FBGEMM and not {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines):
        msg = (f"precision int8 (kernel fbgemm) needs torch's fbgemm quantised ops, which torch {torch.__version__} "
               "here lacks; use --precision fp32 or bf16")
        raise ValueError(msg)
    if kernel != int8_kernel() and cpu_flags():
        log.warning("int8 kernel %s is slow on this CPU (its fast one: %s); running it because the spec names it "
                    "(a driver on another kind of CPU chose it)", kernel, int8_kernel() or "none")


def quantize_linears(module: nn.Module, kernel: str = Int8Kernel.INT_MM) -> int:
    """Replace every nn.Linear inside `module` with the int8 Linear of `kernel`, in place; return how many."""
    check_kernel(kernel)
    linear_class = LINEARS[Int8Kernel(kernel)]
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, linear_class(child))
                replaced += 1
    return replaced
