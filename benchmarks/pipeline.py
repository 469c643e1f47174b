"""The whole pipeline (Parquet -> Ray -> LanceDB) through `pipelines.embed.run_embed`, against
sentence-transformers `encode` of the same texts in the driver, interleaved; and peak memory of
every Ray process while it runs.

Imports ray and lancedb (through pipelines.embed) only when called, so the encoder benchmarks run
without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.corpus import SAMPLE_DIR
from benchmarks.encoders import ST_BATCH_SIZE, sentence_transformer, st_padded_tokens
from benchmarks.memory import TreeSampler
from benchmarks.report import Result

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ROWS_PER_SHARD = 20_000
# Reading PSS (smaps) of ~15 processes costs the driver CPU that the 2-core pipeline then lacks: at
# 0.5 s it took ~10% of a core (measured); the peaks move slowly, so 2 s loses nothing.
SAMPLE_SECONDS = 2.0
RETRIES = 2  # extra tries of a round whose encoder actor died (another process killed it, say)


@dataclass
class PipelineOptions:
    """What `embedlake embed` gets, beyond input and output (None: the pipeline's own default)."""

    actors: int | None = None
    threads_per_actor: int | None = None
    rows_per_batch: int | None = None
    max_tokens_per_batch: int | None = None
    precision: str = "auto"
    extra: dict = field(default_factory=dict)

    def job_kwargs(self) -> dict:
        chosen = {
            "actors": self.actors,
            "threads_per_actor": self.threads_per_actor,
            "rows_per_batch": self.rows_per_batch,
            "max_tokens_per_batch": self.max_tokens_per_batch,
        }
        kwargs = {key: value for key, value in chosen.items() if value is not None}
        if self.precision != "auto":
            kwargs["precision"] = self.precision
        return {**kwargs, **self.extra}


def model_label(model: str) -> str:
    """How a run names its model: a random benchmark checkpoint by its folder's size tag."""
    name = Path(model).name
    return f"random BGE-M3-shaped {name.split('-')[-1]}" if name.startswith("bench-bge-m3") else name


def make_input(folder: Path, rows: int | None, max_chars: int | None) -> tuple[Path, list[str]]:
    """The sample itself (rows None), or the sample's rows repeated to `rows` rows with unique ids,
    written as shards of ROWS_PER_SHARD rows. Returns the input folder and its texts in order."""
    sample = pa.concat_tables([pq.read_table(path) for path in sorted(SAMPLE_DIR.glob("*.parquet"))])
    if rows is None and max_chars is None:
        return SAMPLE_DIR, sample.column("text").to_pylist()
    rows = rows or sample.num_rows
    folder.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    for shard, start in enumerate(range(0, rows, ROWS_PER_SHARD)):
        count = min(ROWS_PER_SHARD, rows - start)
        positions = np.arange(start, start + count)
        source = sample.take(pa.array(positions % sample.num_rows))
        shard_texts = source.column("text").to_pylist()
        if max_chars:
            shard_texts = [text[:max_chars] for text in shard_texts]
        ids = [f"{row_id}~{position // sample.num_rows}" for row_id, position in
               zip(source.column("id").to_pylist(), positions.tolist(), strict=True)]
        pq.write_table(pa.table({"id": ids, "text": shard_texts}), folder / f"part-{shard:05d}.parquet",
                       row_group_size=1000)
        texts.extend(shard_texts)
    return folder, texts


# The driver of each run: a fresh process, as `embedlake embed` would be, so that its memory is the
# pipeline's and not this benchmark's (which holds the texts, their tokens and the peer model).
DRIVER = """
import json, sys
from pipelines.embed import EmbedJob, run_embed
print("SUMMARY " + json.dumps(run_embed(EmbedJob(**json.loads(sys.argv[1])))), flush=True)
"""


def run_once(input_dir: Path, options: PipelineOptions) -> tuple[dict, float, TreeSampler]:
    """One `run_embed` into a fresh lake, in a driver process of its own with its own local Ray; its
    summary, wall seconds (Ray's start and stop included) and the memory samples of the driver's tree."""
    output = tempfile.mkdtemp(prefix="bench-lake-")
    job = {"input": str(input_dir), "output": output, "overwrite": True, "progress": False, **options.job_kwargs()}
    try:
        with tempfile.TemporaryFile(mode="w+") as errors:
            started = time.perf_counter()
            driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(job)], stdout=subprocess.PIPE,
                                      stderr=errors, text=True, cwd=str(PROJECT_ROOT))
            with TreeSampler(pid=driver.pid, interval=SAMPLE_SECONDS) as sampler:
                stdout, _ = driver.communicate()
            seconds = time.perf_counter() - started
            if driver.returncode != 0:
                errors.seek(0)
                msg = f"pipeline run failed ({driver.returncode}): {errors.read()[-3000:]}"
                raise RuntimeError(msg)
        summary = json.loads(next(line for line in stdout.splitlines() if line.startswith("SUMMARY "))[8:])
        return summary, seconds, sampler
    finally:
        shutil.rmtree(output, ignore_errors=True)


def expected_actors(options: PipelineOptions) -> int:
    """How many encoder actors a run makes on this machine (pipelines/workers.py decides; the run's
    local Ray gets every CPU and GPU)."""
    import torch

    from pipelines.workers import plan_workers

    plan = plan_workers(os.cpu_count() or 1, torch.cuda.device_count(), options.actors, options.threads_per_actor)
    return plan.actors


def run_clean(input_dir: Path, options: PipelineOptions, actors: int, log=print) -> tuple[dict, float, TreeSampler]:
    """run_once, again (up to RETRIES times) when more encoder actors than planned encoded rows: one
    died and was replaced mid-run, and the model reload would be timed. Ray recovers, the rows are
    right, but the round's speed says nothing about the pipeline."""
    for attempt in range(RETRIES + 1):
        summary, wall, sampler = run_once(input_dir, options)
        if summary["encoder_actors"] <= actors:
            return summary, wall, sampler
        log(f"  an encoder actor was replaced mid-run ({summary['encoder_actors']} actors for {actors}); "
            + ("running the round again" if attempt < RETRIES else "keeping it, marked"))
    summary["disturbed"] = True
    return summary, wall, sampler


def bench_pipeline(
    repeats: int,
    variants: list[PipelineOptions],
    rows: int | None = None,
    max_chars: int | None = None,
    peer: bool = True,
    log=print,
    model: str = "minilm",
) -> list[Result]:
    """Pipeline docs/s (the summary's, first read to last commit) of each variant against
    sentence-transformers on the same texts in this process, all interleaved round-robin; peak PSS of
    each run's driver and all its Ray processes."""
    import torch

    from operators.encoders.base import EncoderSpec
    from operators.encoders.loader import load_encoder, resolve_model_path

    scratch = Path(tempfile.mkdtemp(prefix="bench-input-"))
    try:
        input_dir, texts = make_input(scratch / "input", rows, max_chars)
        label = (f"pipeline, {len(texts):,} rows" + (f" of <= {max_chars} chars" if max_chars else "")
                 + ("" if model == "minilm" else f", {model_label(model)}"))
        probe = load_encoder(EncoderSpec(model=model, device="cpu"))
        # In chunks: a million texts tokenised at once hold ~5 GB of Python lists in this process.
        lengths = np.concatenate([probe.tokenize_flat(texts[start:start + 20_000])[0].lengths
                                  for start in range(0, len(texts), 20_000)])
        tokens = int(lengths.sum())
        st = sentence_transformer(resolve_model_path(model), torch.device("cpu"), torch.float32, probe.max_length) \
            if peer else None
        del probe
        names = ["st"] * peer + [f"ours {i}" for i in range(len(variants))]
        seconds: dict[str, list[float]] = {name: [] for name in names}
        runs: dict[str, list[tuple[dict, TreeSampler]]] = {name: [] for name in names}
        log(f"{label}: {tokens:,} tokens, {repeats} interleaved rounds, variants "
            f"{[options.job_kwargs() for options in variants]}")
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "st":
                    started = time.perf_counter()
                    st.encode(texts, batch_size=ST_BATCH_SIZE, normalize_embeddings=True)
                    seconds[name].append(time.perf_counter() - started)
                    log(f"  round {round_index + 1}/{repeats} st: {seconds[name][-1]:.2f}s")
                    continue
                options = replace(variants[int(name.split()[1])])
                options.extra = {**options.extra, "model": model}
                summary, wall, sampler = run_clean(input_dir, options, expected_actors(options), log)
                runs[name].append((summary, sampler))
                seconds[name].append(summary["rows_written"] / summary["docs_per_s"])
                log(f"  round {round_index + 1}/{repeats} pipeline {options.job_kwargs()}: "
                    f"{seconds[name][-1]:.2f}s encoding ({wall:.1f}s wall), {summary['docs_per_s']} docs/s, "
                    f"peak PSS {sampler.peak.tree_pss / 2**20:,.0f} MiB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    st_result = Result(f"{label}: sentence-transformers encode(batch_size={ST_BATCH_SIZE}) in the driver",
                       len(texts), tokens, seconds["st"], padded_tokens=st_padded_tokens(texts, lengths)) \
        if peer else None
    results = [st_result] if st_result else []
    for index, options in enumerate(variants):
        name = f"ours {index}"
        results.append(_pipeline_result(label, options, runs[name], seconds[name], st_result))
    return results


def _pipeline_result(label: str, options: PipelineOptions, runs: list[tuple[dict, TreeSampler]],
                     seconds: list[float], peer: Result | None) -> Result:
    summaries = [summary for summary, _ in runs]
    peaks = [sampler.peak for _, sampler in runs]
    last = summaries[-1]
    peak = max(peaks, key=lambda p: p.tree_pss)
    ray_peak = max(p.others_pss for p in peaks)
    driver_peak = max(p.driver_pss for p in peaks)
    biggest: dict[str, int] = {}
    for each in peaks:
        for name, pss in each.by_name.items():
            biggest[name] = max(biggest.get(name, 0), pss)
    top = sorted(biggest.items(), key=lambda item: -item[1])[:5]
    notes = [f"peak PSS of the Ray processes alone {ray_peak / 2**20:,.0f} MiB, of the driver alone "
             f"{driver_peak / 2**20:,.0f} MiB; {peak.processes} processes; biggest process of each kind: "
             + ", ".join(f"{name} {pss / 2**20:,.0f} MiB" for name, pss in top)]
    if any(summary.get("disturbed") for summary in summaries):
        notes.append("a round kept an encoder actor restart (marked disturbed)")
    precision = f", {options.precision}" if options.precision != "auto" else ""
    return Result(
        f"{label}: Parquet -> Ray -> LanceDB, {last['encoder_actors']} actor(s){precision}",
        last["rows_written"],
        last["tokens"],
        seconds,
        padded_tokens=round(last["tokens"] / (1 - last["padding_waste"])) if last["padding_waste"] < 1 else None,
        peak_memory=peak.tree_pss,
        memory_kind="PSS, driver + all Ray processes",
        peer=peer,
        notes=notes,
    )
