"""Compute precision of an encoder: the names users choose from, the dtype its backbone runs in, and, for
int8, the kernel this CPU runs fast.

`auto` keeps the old behaviour (bf16/fp16 on GPUs, fp32 on CPU). On CPUs with AVX512-BF16 or AMX,
`bf16` roughly halves the time of the matmuls. `int8` runs every Linear of the backbone on int8 weights and
activations (operators/encoders/int8.py) with one of two kernels, chosen from the CPU's flags:
`torch._int_mm` where the CPU has VNNI or AMX (oneDNN's fast path; elsewhere it falls to a reference
loop ~30x slower than fp32), fbgemm's u8 x s8 kernels on other x86 CPUs with AVX2. A CPU with neither
runs fp32, with a one-line warning. The kernels round differently, so the model id names the kernel
(model_id_suffix): vectors of the two are never mixed in one table as if they were the same.

The choice reads /proc/cpuinfo, not torch, so the driver (which never imports torch) makes it once and
hands the workers a resolved spec: driver and workers agree on the id even on a mixed cluster. torch is
imported only when a dtype is asked for, so the command line can offer the choices without loading it.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import replace
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from operators.encoders.base import EncoderSpec

log = logging.getLogger(__name__)


class Precision(StrEnum):
    AUTO = "auto"  # bf16 (fp16 without bf16 support) on GPUs, fp32 on CPUs
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"  # CPU only: int8 matmuls (kernel per CPU, Int8Kernel), fp32 elsewhere


class Int8Kernel(StrEnum):
    INT_MM = "int_mm"  # torch._int_mm: s8 x s8 -> s32 through oneDNN, fast with VNNI/AMX only
    FBGEMM = "fbgemm"  # torch's dynamic quantised Linear (fbgemm): u8 x s8, fast with AVX2


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # what makes oneDNN's s8 x s8 matmul fast
X86 = ("x86_64", "amd64")


@cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (Linux /proc/cpuinfo); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def int8_kernel(flags: frozenset[str] | None = None, machine: str | None = None) -> Int8Kernel | None:
    """The fast int8 kernel for a CPU (this one by default), None where it has none we know to be fast."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if any(flag in flags for flag in VNNI_FLAGS):
        return Int8Kernel.INT_MM
    if machine in X86 and "avx2" in flags:
        return Int8Kernel.FBGEMM
    return None


def check_precision(precision: str, device: torch.device | None = None) -> None:
    """Reject unknown names, and int8 off the CPU (GPUs get their speed from bf16)."""
    if precision not in list(Precision):
        msg = f"precision {precision!r} is not one of {', '.join(Precision)}"
        raise ValueError(msg)
    if precision == "int8" and device is not None and device.type != "cpu":
        msg = "precision int8 is a CPU path; on GPUs use bf16 (the default there)"
        raise ValueError(msg)


def resolve_precision(spec: EncoderSpec) -> EncoderSpec:
    """The spec with int8's kernel named for this CPU, or with fp32 (and a one-line warning) where the CPU
    has no fast int8 kernel: asking for int8 must never make a run slower. Specs already resolved (a
    driver's, shipped to workers) come back as they are."""
    check_precision(spec.precision)
    if spec.int8_kernel is not None and spec.int8_kernel not in list(Int8Kernel):
        msg = f"int8 kernel {spec.int8_kernel!r} is not one of {', '.join(Int8Kernel)}"
        raise ValueError(msg)
    if spec.precision != Precision.INT8 or spec.int8_kernel is not None:
        return spec
    kernel = int8_kernel()
    if kernel is None:
        log.warning("--precision int8: this CPU (%s) has no fast int8 kernel (needs VNNI/AMX, or AVX2 on x86); "
                    "running fp32", platform.machine())
        return replace(spec, precision=Precision.FP32)
    return replace(spec, int8_kernel=kernel)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the backbone's weights and activations use on `device` for a precision name."""
    import torch

    check_precision(precision, device)
    if precision != Precision.AUTO:
        return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(precision, torch.float32)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def model_id_suffix(precision: str, int8_kernel: str | None = None) -> str:
    """What an explicit precision adds to a model id: its vectors differ (slightly) from fp32's, so
    an incremental run must not mistake them for each other. `auto` adds nothing (ids stay as they were).
    int8 names its kernel unless it is _int_mm (the first one, whose tables keep their id)."""
    if precision == Precision.AUTO:
        return ""
    kernel = f":kernel={int8_kernel}" if precision == Precision.INT8 and int8_kernel not in (None, "int_mm") else ""
    return f":precision={precision}{kernel}"
