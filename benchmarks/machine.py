"""What the numbers were measured on: CPU model, cores, GPU, library versions, load, and the GPU's
measured bf16 matmul ceiling (the denominator of MFU, as in docs/encoders.md)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from importlib import metadata

import torch

from operators.encoders.precision import cpu_flags as all_cpu_flags


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions that decide CPU speed per precision (AVX512-BF16/AMX for bf16, VNNI for int8)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    return [flag for flag in wanted if flag in all_cpu_flags()]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def describe_machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "gpus": torch.cuda.device_count() if gpu else 0,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "ray": _version("ray"),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def matmul_peak_flops(device: torch.device, size: int = 8192, windows: int = 5, per_window: int = 10) -> float | None:
    """Measured bf16 matmul FLOP/s on a GPU (None on CPU, where MFU is not reported): random operands
    (zeros run faster), a warm-up long enough for the clocks to rise, then the median of several
    windows timed with CUDA events."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(per_window):
        a @ b
    rates = []
    for _ in range(windows):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(per_window):
            a @ b
        end.record()
        end.synchronize()
        rates.append(2 * size**3 * per_window / (start.elapsed_time(end) / 1e3))
    return statistics.median(rates)


def gpu_details(device: torch.device) -> dict:
    """Card, driver, CUDA, memory and multiprocessors, for the GPU table's header."""
    if device.type != "cuda":
        return {}
    properties = torch.cuda.get_device_properties(device)
    details = {
        "name": properties.name,
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "multiprocessors": properties.multi_processor_count,
        "capability": f"{properties.major}.{properties.minor}",
        "cuda": torch.version.cuda,
        "driver": "-",
    }
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20, check=True)
        details["driver"] = found.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return details
