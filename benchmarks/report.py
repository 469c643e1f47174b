"""One row per measured case, one table for the whole run, and the dated section in RESULTS.md."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Result:
    """A case timed `len(seconds)` times; ratios compare medians with the peer timed alongside it."""

    case: str
    docs: int
    tokens: int  # unpadded tokens per run (special tokens included)
    seconds: list[float]
    padded_tokens: int | None = None  # tokens the model processed per run, padding included
    flops: float | None = None  # useful model FLOPs per run (MFU numerator)
    peak_memory: int | None = None  # bytes; what it means is in memory_kind
    memory_kind: str = ""
    peer: Result | None = None  # the sentence-transformers case measured interleaved with this one
    cosine: float | None = None  # min cosine over texts against the reference named in cosine_to
    cosine_to: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.median_seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_seconds

    @property
    def padding_waste(self) -> float | None:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else None

    def mfu(self, peak_flops: float | None) -> float | None:
        return self.flops / self.median_seconds / peak_flops if self.flops and peak_flops else None

    @property
    def ratio(self) -> float | None:
        """docs/s over the peer's docs/s (both medians of interleaved runs)."""
        return self.docs_per_s / self.peer.docs_per_s if self.peer else None

    @property
    def spread(self) -> str:
        """min-max of the repeats, to show how noisy the machine was."""
        low, high = min(self.seconds), max(self.seconds)
        return f"{low:.1f}-{high:.1f}s"


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def table(results: list[Result], peak_flops: float | None) -> str:
    """A markdown table (readable as plain text too)."""
    header = ("case", "docs/s", "tokens/s", "padding waste", "MFU", "peak memory", "vs ST", "runs", "cosine")
    rows = [header, tuple("---" for _ in header)]
    for result in results:
        memory = f"{result.peak_memory / 2**20:,.0f} MiB {result.memory_kind}" if result.peak_memory else "-"
        cosine = f"{result.cosine:.5f} vs {result.cosine_to}" if result.cosine is not None else "-"
        rows.append((
            result.case,
            f"{result.docs_per_s:,.1f}",
            f"{result.tokens_per_s:,.0f}",
            _fmt(result.padding_waste, ".1%"),
            _fmt(result.mfu(peak_flops), ".2f"),
            memory,
            f"{result.ratio:.2f}x" if result.ratio is not None else "(peer)" if _is_peer(result, results) else "-",
            f"{len(result.seconds)} ({result.spread})",
            cosine,
        ))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def as_dict(result: Result, peak_flops: float | None) -> dict:
    """One row for a JSON results file: the raw timings and every derived figure of the table."""
    return {
        "case": result.case,
        "docs": result.docs,
        "tokens": result.tokens,
        "seconds": [round(value, 4) for value in result.seconds],
        "median_seconds": round(result.median_seconds, 4),
        "docs_per_s": round(result.docs_per_s, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "padded_tokens": result.padded_tokens,
        "padding_waste": result.padding_waste,
        "flops": result.flops,
        "mfu": result.mfu(peak_flops),
        "peak_memory_bytes": result.peak_memory,
        "memory_kind": result.memory_kind,
        "peer": result.peer.case if result.peer else None,
        "vs_peer": result.ratio,
        "cosine": result.cosine,
        "cosine_to": result.cosine_to or None,
    }


def _is_peer(result: Result, results: list[Result]) -> bool:
    return any(other.peer is result for other in results)


def machine_lines(machine: dict, peak_flops: float | None) -> list[str]:
    gpu = f"{machine['gpus']} x {machine['gpu']}" if machine["gpu"] else "none"
    return [
        f"- date: {machine['date']}",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['cpu_flags']) or 'no AVX2'})",
        f"- GPU: {gpu}" + (f", measured bf16 matmul {peak_flops / 1e12:,.0f} TFLOP/s (MFU denominator)"
                           if peak_flops else ""),
        f"- torch {machine['torch']}, transformers {machine['transformers']}, "
        f"sentence-transformers {machine['sentence_transformers']}, ray {machine['ray']}",
        f"- load average at start: {machine['load_average']}",
    ]


def section(title: str, machine: dict, results: list[Result], peak_flops: float | None, notes: list[str]) -> str:
    parts = [f"## {title}", "", *machine_lines(machine, peak_flops), "", table(results, peak_flops), ""]
    if notes:
        parts += [*(f"- {note}" for note in notes), ""]
    return "\n".join(parts) + "\n"


def append_results(text: str, path: Path = RESULTS_FILE) -> None:
    if not path.exists():
        path.write_text("# Benchmark results\n\nWritten by `make bench` (benchmarks/run.py); newest last.\n\n")
    with path.open("a") as handle:
        handle.write(text)
