"""Encoders alone, without Ray or LanceDB: ours against sentence-transformers `encode` on the same
texts, same model, same device and threads, timed interleaved in one process.

Needs only torch, transformers, sentence-transformers and pyarrow, so it runs on a bare GPU box.
Each group times its cases round-robin (the order rotating every round) and reports medians, so
load from other processes on a shared machine hits every case alike; ratios are only ever taken
within a group.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.flops import config_flops
from benchmarks.memory import TreeSampler, psutil
from benchmarks.models import build_random_bge_m3
from benchmarks.report import Result
from operators.encoders.base import EncoderSpec, TransformerEncoder
from operators.encoders.loader import load_encoder, resolve_model_path

ST_BATCH_SIZE = 32  # sentence-transformers' default


@dataclass
class Case:
    """One thing to time: `run` does the work once; `sample` is its output for cosine checks."""

    name: str
    run: Callable[[], object]
    sample: np.ndarray | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_once(case: Case, device: torch.device) -> tuple[float, int]:
    """Seconds and peak working memory (bytes above what was held before) of one run."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        case.run()
        synchronize(device)
        return time.perf_counter() - started, torch.cuda.max_memory_allocated(device) - before
    if psutil is None:
        started = time.perf_counter()
        case.run()
        return time.perf_counter() - started, 0
    with TreeSampler(interval=0.05, children=False, detailed=False) as sampler:
        before = sampler.root.memory_info().rss
        started = time.perf_counter()
        case.run()
        seconds = time.perf_counter() - started
    return seconds, max(0, sampler.peak.tree_rss - before)


def interleaved(cases: list[Case], repeats: int, device: torch.device, log=print) -> dict[str, tuple[list, int]]:
    """Time every case `repeats` times, round-robin with the starting case rotating each round."""
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    memory: dict[str, int] = {case.name: 0 for case in cases}
    for round_index in range(repeats):
        shift = round_index % len(cases)
        for case in cases[shift:] + cases[:shift]:
            seconds, peak = measure_once(case, device)
            times[case.name].append(seconds)
            memory[case.name] = max(memory[case.name], peak)
            log(f"  round {round_index + 1}/{repeats} {case.name}: {seconds:.2f}s")
    return {name: (times[name], memory[name]) for name in times}


def st_padded_tokens(texts: list[str], lengths: np.ndarray, batch_size: int = ST_BATCH_SIZE) -> int:
    """Tokens sentence-transformers pads to: it sorts by character length and cuts fixed-size batches."""
    order = np.argsort([-len(text) for text in texts], kind="stable")
    return int(sum(len(chunk) * lengths[chunk].max() for chunk in np.array_split(order, range(batch_size,
                                                                                       len(order), batch_size))))


def _dense(encoded, rows: int) -> np.ndarray:
    return encoded.columns["dense"].flatten().to_numpy().reshape(rows, -1)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def sentence_transformer(folder: str, device: torch.device, dtype: torch.dtype, max_length: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, device=str(device), model_kwargs={"dtype": dtype})
    model.max_seq_length = max_length
    return model


def compare(
    label: str,
    texts: list[str],
    ours: dict[str, TransformerEncoder],
    st,
    device: torch.device,
    repeats: int,
    log=print,
) -> list[Result]:
    """Time sentence-transformers and each of our encoders on `texts`, interleaved; one Result each.

    The first of `ours` is the reference for the others' cosines; it is itself compared with
    sentence-transformers' dense vectors.
    """
    first = next(iter(ours.values()))
    warm = texts[: min(len(texts), 64)]
    st.encode(warm, batch_size=ST_BATCH_SIZE)
    for encoder in ours.values():
        encoder.encode(warm)
    probe = first.encode(texts)
    lengths = probe.token_counts
    tokens = int(lengths.sum())
    flops = config_flops(first.model.config, lengths)  # type: ignore[attr-defined]
    reference = _dense(probe, len(texts))
    st_vectors = st.encode(texts, batch_size=ST_BATCH_SIZE, normalize_embeddings=True)
    cases = [Case("st", lambda: st.encode(texts, batch_size=ST_BATCH_SIZE, normalize_embeddings=True))]
    cases += [Case(name, lambda encoder=encoder: encoder.encode(texts)) for name, encoder in ours.items()]
    log(f"{label}: {len(texts)} texts, {tokens:,} tokens, {repeats} interleaved rounds")
    timed = interleaved(cases, repeats, device, log)
    memory_kind = "GPU working" if device.type == "cuda" else "RSS working"
    seconds, memory = timed["st"]
    peer = Result(f"{label}: sentence-transformers encode(batch_size={ST_BATCH_SIZE})", len(texts), tokens, seconds,
                  padded_tokens=st_padded_tokens(texts, lengths), flops=flops, peak_memory=memory,
                  memory_kind=memory_kind)
    results = [peer]
    for name, encoder in ours.items():
        seconds, memory = timed[name]
        if encoder is first:
            padded, cosine, against = probe.padded_tokens, min_cosine(reference, st_vectors), "ST"
        else:
            encoded = encoder.encode(texts)
            padded, against = encoded.padded_tokens, f"ours {next(iter(ours))}"
            cosine = min_cosine(_dense(encoded, len(texts)), reference)
        results.append(Result(f"{label}: ours, {name}", len(texts), tokens, seconds, padded_tokens=padded,
                              flops=flops, peak_memory=memory, memory_kind=memory_kind, peer=peer,
                              cosine=cosine, cosine_to=against))
    return results


def minilm(texts: list[str], device: torch.device, precisions: list[str], repeats: int, log=print) -> list[Result]:
    """The packaged all-MiniLM-L6-v2 (real weights), each precision against sentence-transformers."""
    ours = {precision: load_encoder(EncoderSpec(model="minilm", device=str(device), precision=precision))
            for precision in precisions}
    dtype = next(iter(ours.values())).model.dtype  # type: ignore[attr-defined]
    st = sentence_transformer(resolve_model_path("minilm"), device, dtype, 256)
    labels = {precision: _precision_label(precision, device) for precision in precisions}
    results = compare("MiniLM-L6 encoder", texts, {labels[p]: ours[p] for p in precisions}, st, device, repeats, log)
    if device.type == "cpu" and "bf16" in precisions and dtype != torch.bfloat16:
        # The rows above compare bf16 with an fp32 peer; this group gives sentence-transformers bf16 too,
        # so the ratio says what our loop adds, not what the dtype does.
        st_bf16 = sentence_transformer(resolve_model_path("minilm"), device, torch.bfloat16, 256)
        results += compare("MiniLM-L6 encoder, both bf16", texts, {"bf16": ours["bf16"]}, st_bf16, device, repeats,
                           log)
    return results


def bge_m3(
    texts: list[str], device: torch.device, size: str, max_length: int, repeats: int, label: str, log=print
) -> list[Result]:
    """A random BGE-M3-shaped model of `size`: all three outputs (ours) against sentence-transformers'
    dense-only encode of the same weights."""
    with tempfile.TemporaryDirectory(prefix="bench-bge-m3-") as folder:
        log(f"building a random {size} BGE-M3 checkpoint")
        build_random_bge_m3(folder, size, max_positions=max(max_length, 512))
        encoder = load_encoder(EncoderSpec(model=folder, device=str(device), max_length=max_length))
        dtype = encoder.model.dtype  # type: ignore[attr-defined]
        st = sentence_transformer(folder, device, dtype, max_length)
        name = f"dense+sparse+colbert, {_precision_label('auto', device)}"
        return compare(label, texts, {name: encoder}, st, device, repeats, log)


def _precision_label(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else \
        "fp16" if device.type == "cuda" else "fp32"
