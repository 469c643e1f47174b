"""`make bench-int8`: `--precision int8`'s kernels against fp32 on this CPU, MiniLM encoder alone, the sample
texts, one process, A-B-B-A.

Two groups, each timing fp32 and one int8 kernel in the order fp32, int8, int8, fp32 (`--rounds` times), so
load from other processes hits both alike; ratios are only taken within a group:
1. fp32 against the fbgemm kernel (FbgemmInt8Linear) on `--texts` texts;
2. fp32 against the `torch._int_mm` kernel (Int8Linear) on `--int-mm-texts` texts: few, because on a CPU
   without VNNI/AMX it runs a reference loop ~30x slower than fp32.
Each group runs at every `--threads` count (1 is what an `embed` encoder actor uses by default). Every case
reports docs/s (median of its runs, wall clock), its runs' spread, and the smallest cosine of its vectors to
fp32's on the same texts; the output names the kernel `--precision int8` picks here.

    python -m benchmarks.int8_kernels --texts 400 --int-mm-texts 24 --threads 1,2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.corpus import sample_texts
from benchmarks.machine import cpu_flags, cpu_model
from operators.encoders.base import EncoderSpec
from operators.encoders.loader import load_encoder
from operators.encoders.precision import int8_kernel

KERNELS = ("fbgemm", "int_mm")


def dense(encoder, texts: list[str]) -> np.ndarray:
    return encoder.encode(texts).columns["dense"].flatten().to_numpy().reshape(len(texts), -1)


def abba(cases: dict, texts: list[str], rounds: int, log) -> dict[str, dict]:
    """Time the two cases A, B, B, A per round; docs/s from the median run, and each case's last vectors."""
    (a, encoder_a), (b, encoder_b) = cases.items()
    seconds: dict[str, list[float]] = {a: [], b: []}
    vectors: dict[str, np.ndarray] = {}
    for round_index in range(rounds):
        for name, encoder in ((a, encoder_a), (b, encoder_b), (b, encoder_b), (a, encoder_a)):
            started = time.perf_counter()
            vectors[name] = dense(encoder, texts)
            seconds[name].append(time.perf_counter() - started)
            log(f"  round {round_index + 1}/{rounds} {name}: {seconds[name][-1]:.2f}s")
    return {name: {"docs": len(texts), "seconds": runs, "docs_per_s": len(texts) / statistics.median(runs),
                   "min_cosine_to_fp32": float((vectors[name] * vectors[a]).sum(axis=1).min())}
            for name, runs in seconds.items()}


def run(texts: int, int_mm_texts: int, threads: list[int], rounds: int, log=print) -> dict:
    corpus = sample_texts()
    encoders = {"fp32": load_encoder(EncoderSpec(model="minilm", device="cpu", precision="fp32"))}
    for kernel in KERNELS:
        encoders[f"int8 {kernel}"] = load_encoder(
            EncoderSpec(model="minilm", device="cpu", precision="int8", int8_kernel=kernel))
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
              "int8_kernel_chosen": int8_kernel(), "torch": torch.__version__,
              "load_average_start": [round(value, 2) for value in os.getloadavg()], "groups": []}
    for count in threads:
        torch.set_num_threads(count)
        for kernel, size in (("fbgemm", texts), ("int_mm", int_mm_texts)):
            name = f"int8 {kernel}"
            log(f"{count} thread(s): fp32 against {name}, {size} texts")
            cases = {"fp32": encoders["fp32"], name: encoders[name]}
            timed = abba(cases, corpus[:size], rounds, log)
            timed[name]["vs_fp32"] = timed[name]["docs_per_s"] / timed["fp32"]["docs_per_s"]
            result["groups"].append({"threads": count, "texts": size, "cases": timed})
    result["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    return result


def table(result: dict) -> str:
    lines = ["| threads | texts | case | docs/s | vs fp32 | runs | min cosine to fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for group in result["groups"]:
        for name, case in group["cases"].items():
            ratio = f"{case['vs_fp32']:.2f}x" if "vs_fp32" in case else "(peer)"
            spread = f"{len(case['seconds'])} ({min(case['seconds']):.1f}-{max(case['seconds']):.1f}s)"
            cosine = "-" if name == "fp32" else f"{case['min_cosine_to_fp32']:.5f}"
            lines.append(f"| {group['threads']} | {group['texts']} | {name} | {case['docs_per_s']:.1f} | {ratio} | "
                         f"{spread} | {cosine} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=400, help="texts of the fp32 / fbgemm group")
    parser.add_argument("--int-mm-texts", type=int, default=24, help="texts of the fp32 / _int_mm group")
    parser.add_argument("--threads", default="1,2", help="torch thread counts, e.g. 1,2")
    parser.add_argument("--rounds", type=int, default=1, help="A-B-B-A rounds per group")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    result = run(args.texts, args.int_mm_texts, [int(part) for part in args.threads.split(",")], args.rounds,
                 log=lambda message: print(message, file=sys.stderr, flush=True))
    print(f"{result['cpu']}, {result['cores']} cores ({', '.join(result['cpu_flags'])}); torch {result['torch']}; "
          f"--precision int8 picks {result['int8_kernel_chosen']}; load {result['load_average_start']} -> "
          f"{result['load_average_end']}")
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
