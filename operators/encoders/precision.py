"""Compute precision of an encoder: the names users choose from, and the dtype its backbone runs in.

`auto` keeps the old behaviour (bf16/fp16 on GPUs, fp32 on CPU). On CPUs with AVX512-BF16 or AMX,
`bf16` roughly halves the time of the matmuls; `int8` runs every Linear of the backbone as an int8 x
int8 -> int32 matmul (operators/encoders/int8.py). torch is imported only when a dtype is asked for, so
the command line can offer the choices without loading it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Precision(StrEnum):
    AUTO = "auto"  # bf16 (fp16 without bf16 support) on GPUs, fp32 on CPUs
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"  # CPU only: int8 matmuls, fp32 elsewhere


def check_precision(precision: str, device: torch.device | None = None) -> None:
    """Reject unknown names, and int8 off the CPU (GPUs get their speed from bf16)."""
    if precision not in list(Precision):
        msg = f"precision {precision!r} is not one of {', '.join(Precision)}"
        raise ValueError(msg)
    if precision == "int8" and device is not None and device.type != "cpu":
        msg = "precision int8 is a CPU path; on GPUs use bf16 (the default there)"
        raise ValueError(msg)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the backbone's weights and activations use on `device` for a precision name."""
    import torch

    check_precision(precision, device)
    if precision != Precision.AUTO:
        return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(precision, torch.float32)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def model_id_suffix(precision: str) -> str:
    """What an explicit precision adds to a model id: its vectors differ (slightly) from fp32's, so
    an incremental run must not mistake them for each other. `auto` adds nothing (ids stay as they were)."""
    return "" if precision == Precision.AUTO else f":precision={precision}"
