"""Encoders alone, without Ray or LanceDB: ours against sentence-transformers `encode` on the same
texts, same model, same device and threads, timed interleaved in one process.

Needs only torch, transformers, sentence-transformers and pyarrow, so it runs on a bare GPU box.
Each group times its cases round-robin (the order rotating every round) and reports medians, so
load from other processes on a shared machine hits every case alike; ratios are only ever taken
within a group.
"""

from __future__ import annotations

import copy
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
from operators.encoders.base import BatchLimits, EncoderSpec, TransformerEncoder
from operators.encoders.batching import plan_batches
from operators.encoders.loader import load_encoder, resolve_model_path

ST_BATCH_SIZE = 32  # sentence-transformers' default


@dataclass
class Case:
    """One thing to time: `run` does the work once; `last` keeps the output of its latest timed run
    (for cosine checks without another untimed run)."""

    name: str
    run: Callable[[], object]
    last: object = None


@dataclass
class Extra:
    """A diagnostic case timed alongside the others, e.g. the backbone alone on batches already on
    the device (what the model costs without any host work)."""

    name: str
    run: Callable[[], object]
    padded_tokens: int | None = None


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
        case.last = case.run()
        synchronize(device)
        return time.perf_counter() - started, torch.cuda.max_memory_allocated(device) - before
    if psutil is None:
        started = time.perf_counter()
        case.last = case.run()
        return time.perf_counter() - started, 0
    with TreeSampler(interval=0.05, children=False, detailed=False) as sampler:
        before = sampler.root.memory_info().rss
        started = time.perf_counter()
        case.last = case.run()
        seconds = time.perf_counter() - started
    return seconds, max(0, sampler.peak.tree_rss - before)


def interleaved(
    cases: list[Case], repeats: int, device: torch.device, log=print, budget_s: float | None = None
) -> dict[str, tuple[list, int]]:
    """Time every case up to `repeats` times, round-robin with the starting case rotating each round.

    With a budget, no round starts that the previous round's duration says would end past it (the
    first round always runs): a slow machine gets fewer rounds, not a lost table.
    """
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    memory: dict[str, int] = {case.name: 0 for case in cases}
    started = time.perf_counter()
    for round_index in range(repeats):
        round_started = time.perf_counter()
        shift = round_index % len(cases)
        for case in cases[shift:] + cases[:shift]:
            seconds, peak = measure_once(case, device)
            times[case.name].append(seconds)
            memory[case.name] = max(memory[case.name], peak)
            log(f"  round {round_index + 1}/{repeats} {case.name}: {seconds:.2f}s")
        elapsed, last_round = time.perf_counter() - started, time.perf_counter() - round_started
        if budget_s is not None and round_index + 1 < repeats and elapsed + last_round > budget_s:
            log(f"  stopping after {round_index + 1} round(s): the next would pass the {budget_s:.0f} s budget")
            break
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
    *,
    st_batch_sizes: tuple[int, ...] = (ST_BATCH_SIZE,),
    extras: list[Extra] = (),
    budget_s: float | None = None,
) -> list[Result]:
    """Time sentence-transformers (at each batch size; the first is the peer of every ratio), each of
    our encoders and any diagnostic extras on `texts`, interleaved; one Result each.

    The first of `ours` is the reference for the others' cosines; it is itself compared with
    sentence-transformers' dense vectors from the peer's timed runs. Without `st` (None) the first
    of ours is the peer: an A/B of our own variants.
    """
    first = next(iter(ours.values()))
    warm = texts[: min(len(texts), 64)]
    if st is None:
        st_batch_sizes = ()
    else:
        st.encode(warm, batch_size=st_batch_sizes[0])
    for encoder in ours.values():
        encoder.encode(warm)
    probe = first.encode(texts)
    lengths = probe.token_counts
    tokens = int(lengths.sum())
    flops = config_flops(first.model.config, lengths)  # type: ignore[attr-defined]
    reference = _dense(probe, len(texts))
    st_cases = [Case(_st_name(size), lambda size=size: st.encode(texts, batch_size=size, normalize_embeddings=True))
                for size in st_batch_sizes]
    our_cases = [Case(f"ours, {name}", lambda encoder=encoder: encoder.encode(texts)) for name, encoder in ours.items()]
    extra_cases = [Case(extra.name, extra.run) for extra in extras]
    log(f"{label}: {len(texts)} texts, {tokens:,} tokens, up to {repeats} interleaved rounds")
    timed = interleaved(st_cases + our_cases + extra_cases, repeats, device, log, budget_s)
    memory_kind = "GPU working" if device.type == "cuda" else "RSS working"

    def result(name: str, **kwargs) -> Result:
        seconds, memory = timed[name]
        return Result(f"{label}: {name}", len(texts), tokens, seconds, flops=flops, peak_memory=memory,
                      memory_kind=memory_kind, **kwargs)

    results: list[Result] = []
    peer: Result | None = None
    for size, case in zip(st_batch_sizes, st_cases, strict=True):
        results.append(result(case.name, padded_tokens=st_padded_tokens(texts, lengths, size), peer=peer))
        peer = peer or results[-1]
    for encoder, case in zip(ours.values(), our_cases, strict=True):
        if encoder is not first:
            cosine, against = min_cosine(_dense(case.last, len(texts)), reference), f"ours {next(iter(ours))}"
        elif st_cases:
            cosine, against = min_cosine(reference, np.asarray(st_cases[0].last)), "ST"
        else:
            cosine, against = None, ""
        results.append(result(case.name, padded_tokens=case.last.padded_tokens, peer=peer, cosine=cosine,
                              cosine_to=against))
        peer = peer or results[-1]
    results.extend(result(extra.name, padded_tokens=extra.padded_tokens, peer=peer) for extra in extras)
    return results


def variant(
    encoder: TransformerEncoder, *, max_length: int | None = None, max_tokens: int | None = None,
    max_rows: int | None = None, overlap: bool | None = None,
) -> TransformerEncoder:
    """The same encoder (model, tokenizer and their locks shared, nothing loaded again) with another
    length cap, batch budget or overlap setting: A/B cases and checks without a second copy of the weights."""
    clone = copy.copy(encoder)
    if overlap is not None:
        clone.overlap = overlap
    if max_length is not None:
        clone.max_length = max_length
    if max_tokens is not None or max_rows is not None:
        clone.limits = BatchLimits(max_tokens or encoder.limits.max_tokens, max_rows or encoder.limits.max_rows)
    return clone


def backbone_only(encoder: TransformerEncoder, texts: list[str], name: str) -> Extra:
    """The backbone alone on our own batches, all padded and copied to the device beforehand, with
    one synchronisation at the end: what the model costs without tokenising, padding, copies or
    post-processing (docs/encoders.md, "Batching and throughput": "batches prepared beforehand")."""
    tokens, _ = encoder.tokenize_flat(encoder._prepare_texts(texts, "document"))
    plan = plan_batches(tokens.lengths, encoder.limits.max_tokens, encoder.limits.max_rows)
    staged = [encoder._device_batch(tokens, rows) for rows in plan]
    model = encoder.model  # type: ignore[attr-defined]

    @torch.inference_mode()
    def run() -> None:
        for input_ids, mask in staged:
            model(input_ids=input_ids, attention_mask=mask)

    return Extra(name, run, sum(int(input_ids.numel()) for input_ids, _ in staged))


def _st_name(batch_size: int) -> str:
    return f"sentence-transformers encode(batch_size={batch_size})"


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
