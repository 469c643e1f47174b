"""`make bench`: encoders alone and the whole pipeline, each against sentence-transformers `encode`
measured in the same run, in one table; appended with the machine's description to RESULTS.md.

Defaults fit a 2-core CPU box in about fifteen minutes; on a GPU they switch to GPU-sized runs
(30k texts, an XLM-R-large-sized random BGE-M3, 8k-token documents). The encoder part needs only
torch, transformers, sentence-transformers and pyarrow; the pipeline part (ray, lancedb) is skipped
with a note when those are missing.

    python -m benchmarks.run                         # defaults for this machine
    python -m benchmarks.run --only encoders --texts 30000 --bge-m3-size large --long-docs 160
    python -m benchmarks.run --only pipeline --rows 20000,80000 --max-chars 120   # memory vs corpus size
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DASHBOARD_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from benchmarks import encoders  # noqa: E402
from benchmarks.corpus import long_documents, sample_texts  # noqa: E402
from benchmarks.machine import cpu_flags, describe_machine, matmul_peak_flops  # noqa: E402
from benchmarks.models import SIZES, build_random_bge_m3  # noqa: E402
from benchmarks.report import Result, append_results, section, table  # noqa: E402
from pipelines.commands.options import int_list, object_store_size  # noqa: E402

GPU_DEFAULTS = {"texts": 30000, "bge_m3_size": "large", "bge_m3_texts": 30000, "long_docs": 160,
                "precisions": "auto"}
CPU_DEFAULTS = {"texts": 400, "bge_m3_size": "small", "bge_m3_texts": 200, "long_docs": 0,
                "precisions": "auto,bf16,int8"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["encoders", "pipeline"], help="run one part (default: both)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per comparison (median)")
    parser.add_argument("--texts", type=int, help="MiniLM texts (sample texts, repeated when more are asked)")
    parser.add_argument("--precisions", help="our MiniLM variants, e.g. auto,bf16,int8 (first is the reference)")
    parser.add_argument("--bge-m3-size", choices=["none", "tiny", "small", "base", "large"],
                        help="random BGE-M3-shaped model (large = XLM-R large, BGE-M3's size)")
    parser.add_argument("--bge-m3-texts", type=int, help="texts (<= 512 tokens) for the BGE-M3 comparison")
    parser.add_argument("--long-docs", type=int, help="number of ~8k-token documents for BGE-M3 (0: skip)")
    parser.add_argument("--long-tokens", type=int, default=8192)
    parser.add_argument("--rows", type=int_list, default=None,
                        help="pipeline corpus sizes (the sample repeated); default: the sample itself")
    parser.add_argument("--max-chars", type=int, default=None, help="cut pipeline texts to this many characters")
    parser.add_argument("--no-peer", action="store_true", help="pipeline without the sentence-transformers runs")
    parser.add_argument("--pipeline-model", default="minilm",
                        help="pipeline model: minilm, a model folder, or tiny/small (a random BGE-M3-shaped "
                             "checkpoint: memory runs over many rows without MiniLM's compute)")
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--threads-per-actor", type=int, default=None)
    parser.add_argument("--rows-per-batch", type=int, default=None)
    parser.add_argument("--max-tokens-per-batch", type=int, default=None)
    parser.add_argument("--precision", default=None,
                        help="pipeline precision(s), e.g. auto,int8: each runs interleaved with the others")
    parser.add_argument("--object-store-memory", type=object_store_size, default=None, metavar="SIZE",
                        help="object store of each pipeline run's local Ray (default: Ray's, 30%% of RAM)")
    parser.add_argument("--results", default=None, help="results file (default benchmarks/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--title", default=None, help="heading of the RESULTS.md section")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = GPU_DEFAULTS if args.device.type == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.precision is None:  # the pipeline also with bf16 where the CPU computes it natively
        native_bf16 = any(flag in cpu_flags() for flag in ("avx512_bf16", "amx_bf16"))
        args.precision = "auto,bf16" if args.device.type == "cpu" and native_bf16 else "auto"
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def repeated(texts: list[str], count: int) -> list[str]:
    return [texts[i % len(texts)] for i in range(count)]


def run_encoders(args: argparse.Namespace, results: list[Result], notes: list[str]) -> None:
    texts = sample_texts()
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    results += encoders.minilm(repeated(texts, args.texts), args.device, precisions, args.repeats, log)
    if args.bge_m3_size != "none":
        label = f"BGE-M3-shaped ({args.bge_m3_size}, random), <=512 tok"
        results += encoders.bge_m3(repeated(texts, args.bge_m3_texts), args.device, args.bge_m3_size, 512,
                                   args.repeats, label, log)
        if args.long_docs:
            docs = long_documents(texts, args.long_docs, characters=args.long_tokens * 5)
            label = f"BGE-M3-shaped ({args.bge_m3_size}, random), long docs <={args.long_tokens} tok"
            results += encoders.bge_m3(docs, args.device, args.bge_m3_size, args.long_tokens, args.repeats,
                                       label, log)
        notes.append("BGE-M3 rows: random XLM-R-shaped weights with MiniLM's WordPiece tokenizer (no hub access); "
                     "ours computes dense+sparse+colbert, sentence-transformers dense only (CLS, normalised).")


def run_pipeline(args: argparse.Namespace, results: list[Result], notes: list[str]) -> None:
    missing = [name for name in ("ray", "lancedb") if importlib.util.find_spec(name) is None]
    if missing:
        notes.append(f"pipeline skipped: {', '.join(missing)} not installed")
        log(notes[-1])
        return
    from benchmarks.pipeline import PipelineOptions, bench_pipeline

    extra = {"object_store_memory": args.object_store_memory} if args.object_store_memory else {}
    variants = [PipelineOptions(args.actors, args.threads_per_actor, args.rows_per_batch, args.max_tokens_per_batch,
                                precision.strip(), dict(extra))
                for precision in args.precision.split(",") if precision.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-bge-m3-") as scratch:
        model = args.pipeline_model
        if model in SIZES:
            model = build_random_bge_m3(os.path.join(scratch, f"bench-bge-m3-{model}"), model, max_positions=512)
        for rows in args.rows or [None]:
            found = bench_pipeline(args.repeats, variants, rows, args.max_chars, peer=not args.no_peer, log=log,
                                   model=model)
            results += found
            notes += [f"{result.case}: {note}" for result in found for note in result.notes]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = describe_machine()
    peak = matmul_peak_flops(args.device)
    log(f"benchmark on {machine['cpu']} ({machine['cores']} cores), GPU {machine['gpu']}, torch {machine['torch']}")
    started = time.time()
    results: list[Result] = []
    notes = [
        "ratios (vs ST) are medians of interleaved rounds against sentence-transformers in the same run, "
        "same texts, model, device and threads; the runs column gives the spread of each case's rounds",
        "peak memory: encoder rows = working memory above the loaded models during encode; pipeline rows = "
        "PSS summed over the driver and every Ray process (sampled every 2 s)",
    ]
    if args.only in (None, "encoders"):
        run_encoders(args, results, notes)
    if args.only in (None, "pipeline"):
        run_pipeline(args, results, notes)
    machine["load_average_end"] = [round(load, 2) for load in os.getloadavg()]
    notes.append(f"load average at the end: {machine['load_average_end']}; took {time.time() - started:.0f} s")
    print(table(results, peak))
    for note in notes:
        print(f"- {note}")
    if not args.no_write:
        title = args.title or f"{machine['date']}: {machine['gpu'] or machine['cpu']}"
        kwargs = {"path": Path(args.results)} if args.results else {}
        append_results(section(title, machine, results, peak, notes), **kwargs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
