"""torch._int_mm at fp32-like speed on CPUs where it is slow, with the same int32 results."""

from __future__ import annotations

import torch

from operators.encoders.precision import Int8Kernel, int8_kernel


def exact_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch._int_mm computed in float64: exact (|sums| <= 127 * 127 * K < 2**53), at fp64 matmul speed."""
    return (a.double() @ b.double()).to(torch.int32)


def patch_slow_int_mm(monkeypatch) -> None:
    """Without VNNI/AMX torch._int_mm runs a reference loop (~30x slower than fp32: a 30-text MiniLM encode
    took ~55 s on the 2-core EPYC); exact_int_mm gives the same int32 results (test_precision checks it),
    so the int_mm kernel's own code is checked end to end on any CPU at fp64 matmul speed."""
    if int8_kernel() != Int8Kernel.INT_MM:
        monkeypatch.setattr(torch, "_int_mm", exact_int_mm)
