"""The encoder interface and the shared tokenise -> token-budget batches -> forward -> reorder loop.

Encoders differ only in how they load a model folder and what they compute from one padded batch
(`_forward`); tokenisation, length sorting, batch cutting, OOM splitting and restoring input order
live here once.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from operators.encoders.batching import FlatTokens, pad_rows, plan_batches, run_splitting_on_oom
from operators.encoders.limits import ROWS_PER_BATCH, TOKENS_PER_BATCH
from operators.encoders.precision import Precision, compute_dtype

if TYPE_CHECKING:  # torch loads in the workers that encode, never in a run's driver (operators/encoders/folders.py)
    import torch

# A fast tokenizer still tokenises a whole 1 MB text before truncating it; no token covers more
# than this many characters per allowed token, so cutting the text first changes nothing we keep.
CHARS_PER_TOKEN_BOUND = 64


@dataclass
class EncodedBatch:
    """What an encoder returns for a list of texts, rows in input order."""

    columns: dict[str, pa.Array]
    token_counts: np.ndarray  # tokens per text after truncation (special tokens included)
    truncated: np.ndarray  # bool per text: longer than max_length, cut
    padded_tokens: int = 0  # tokens the model processed, padding included
    oom_splits: int = 0  # batches split after running out of memory


@dataclass
class EncoderDescription:
    """What the driver needs to know about an encoder's output without loading its weights."""

    model_id: str
    fields: list[pa.Field]
    max_length: int
    dimension: int
    dims: list[int] = field(default_factory=list)




@dataclass
class BatchLimits:
    """How a list of texts is cut into model batches; None picks the default for the device."""

    max_tokens: int | None = None  # padded tokens per forward pass
    max_rows: int | None = None

    def for_device(self, device: torch.device) -> BatchLimits:
        kind = "cuda" if device.type == "cuda" else "cpu"
        return replace(
            self,
            max_tokens=self.max_tokens or TOKENS_PER_BATCH[kind],
            max_rows=self.max_rows or ROWS_PER_BATCH[kind],
        )


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (bf16 there is an explicit choice:
    fast only on CPUs with AVX512-BF16/AMX, and its vectors differ slightly; see precision.py)."""
    return compute_dtype(Precision.AUTO, device)


def folder_name(folder: str) -> str:
    """A readable model name for ids: the folder's name, or its parent's for generic names like "model"."""
    path = os.path.normpath(folder)
    name = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if name in ("model", "models", "weights") else name


def weights_fingerprint(folder: str) -> str:
    """Cheap identity of a model folder's weights: file names and sizes, plus for each file its first
    and last MiB and 8 MiB-sized samples spread through it.

    Hashing multi-GB weight files whole at every start costs seconds; the first MiB alone (the
    safetensors header plus the embeddings) would miss a fine-tune that froze the embeddings, so the
    samples reach every part of the file.
    """
    import hashlib

    chunk = 1 << 20
    digest = hashlib.sha256()
    for root, _dirs, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.startswith(".") or name.endswith(".md"):
                continue
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            digest.update(os.path.relpath(path, folder).encode())
            digest.update(str(size).encode())
            offsets = sorted({0, max(0, size - chunk), *(size * k // 9 for k in range(1, 9))})
            with open(path, "rb") as handle:
                for offset in offsets:
                    handle.seek(offset)
                    digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


class Encoder(ABC):
    """Turns texts into Arrow vector columns. Plain Python: no Ray needed."""

    model_id: str  # identity of model, weights and every option that changes vectors
    max_length: int

    @abstractmethod
    def output_fields(self) -> list[pa.Field]:
        """The Arrow fields of the columns `encode` returns."""

    @abstractmethod
    def encode(self, texts: Sequence[str], prompt_name: str | None = "document") -> EncodedBatch:
        """Encode texts; `prompt_name` picks the model's query/document prompt where it has one."""


class TransformerEncoder(Encoder):
    """Shared loop for Hugging Face encoders: tokenise without padding, sort by length, cut by a token
    budget, forward each batch once, split on OOM, put rows back in input order."""

    def __init__(
        self,
        tokenizer,
        device: torch.device,
        max_length: int,
        limits: BatchLimits | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        self.limits = (limits or BatchLimits()).for_device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # encode() may be called from two threads (a Ray actor taking two batches at once, so that one
        # batch tokenises while the other computes): a fast tokenizer must not run twice at once, and
        # one device runs one batch loop at a time.
        self._tokenize_lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._stager: ThreadPoolExecutor | None = None
        # Collect each batch's outputs after launching the next one (see _collect); False collects
        # every batch before the next starts (the A/B of `make bench-gpu`).
        self.overlap = True

    # -- what a subclass provides ------------------------------------------------------------
    @abstractmethod
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, list | np.ndarray] | object:
        """Outputs of one padded batch, per row in batch order: an ndarray (rows, ...) or a list; or a
        handle on work still in flight that `_collect` turns into them."""

    def _collect(self, result: dict[str, list | np.ndarray] | object) -> dict[str, list | np.ndarray]:
        """The per-row outputs of what `_forward` returned. An encoder whose `_forward` only queues device
        work and copies (no host synchronisation) waits here; the loop collects a batch after launching
        the next one (`overlap`), so the device never idles while the host post-processes."""
        return result  # type: ignore[return-value]

    @abstractmethod
    def _to_arrow(self, outputs: dict[str, list | np.ndarray]) -> dict[str, pa.Array]:
        """Turn the reordered outputs into Arrow columns."""

    def _prepare_texts(self, texts: Sequence[str], prompt_name: str | None) -> list[str]:
        """Hook for prompts and lower-casing; identity by default."""
        return list(texts)

    def _forward_for(self, prompt_name: str | None) -> Callable[[torch.Tensor, torch.Tensor], dict]:
        """The forward pass for texts encoded with this prompt (a model may pool them differently)."""
        return self._forward

    # -- the shared loop ---------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text, truncated to max_length, and whether each text was truncated."""
        tokens, truncated = self.tokenize_flat(texts)
        return tokens.to_lists(), truncated

    def tokenize_flat(self, texts: Sequence[str]) -> tuple[FlatTokens, np.ndarray]:
        """Token ids of all texts in one flat array, truncated to max_length, and whether each text was
        truncated. Tokenising one token past the limit tells truncated texts apart; only those are
        tokenised again at the limit."""
        if not texts:
            return FlatTokens(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)), np.zeros(0, dtype=bool)
        char_limit = self.max_length * CHARS_PER_TOKEN_BOUND
        cut = np.fromiter((len(text) > char_limit for text in texts), dtype=bool, count=len(texts))
        clipped = [text[:char_limit] for text in texts] if cut.any() else list(texts)
        with self._tokenize_lock:
            encoded = self._token_ids(clipped, self.max_length + 1)
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            truncated = (lengths > self.max_length) | cut
            if truncated.any():
                again = np.flatnonzero(truncated)
                for position, ids in zip(again, self._token_ids([clipped[i] for i in again], self.max_length),
                                         strict=True):
                    encoded[position] = ids
        return FlatTokens.from_lists(encoded), truncated

    def _token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        return self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]

    def encode(self, texts: Sequence[str], prompt_name: str | None = "document") -> EncodedBatch:
        prepared = self._prepare_texts(texts, prompt_name)
        tokens, truncated = self.tokenize_flat(prepared)
        lengths = tokens.lengths
        outputs: dict[str, list | np.ndarray] = {}
        stats = _LoopStats()
        forward = self._forward_for(prompt_name)
        with self._compute_lock:
            plan = plan_batches(lengths, self.limits.max_tokens, self.limits.max_rows)
            waiting: list[tuple[np.ndarray, object]] = []
            for batch, staged in self._staged(plan, tokens):
                run = partial(self._run_rows, forward, tokens, staged, stats)
                launched = run_splitting_on_oom(run, batch, stats.count_split)
                if not self.overlap:
                    waiting, launched = launched, []
                for indices, result in waiting:
                    _scatter(outputs, self._collect(result), indices, len(texts))
                waiting = launched
            for indices, result in waiting:
                _scatter(outputs, self._collect(result), indices, len(texts))
        return EncodedBatch(
            columns=self._to_arrow(outputs) if len(texts) else self._to_arrow(self._empty_outputs()),
            token_counts=lengths,
            truncated=truncated,
            padded_tokens=stats.padded_tokens,
            oom_splits=stats.splits,
        )

    def _run_rows(
        self, forward: Callable, tokens: FlatTokens, staged: dict[int, tuple[torch.Tensor, torch.Tensor]],
        stats: _LoopStats, indices: np.ndarray,
    ) -> list[tuple[np.ndarray, object]]:
        """Forward one batch (or, after an OOM split, part of it). The staged tensors fit only the whole
        batch, so they are keyed by its row count: halves of it pad their own."""
        ready = staged.pop(len(indices), None)
        input_ids, mask = ready if ready is not None else self._device_batch(tokens, indices)
        result = forward(input_ids, mask)
        stats.padded_tokens += input_ids.numel()
        return [(indices, result)]

    def _device_batch(self, tokens: FlatTokens, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad rows on the host and move them to the device; on a GPU through pinned memory, so the
        copy does not block the host."""
        import torch

        input_ids, mask = (torch.from_numpy(array) for array in pad_rows(tokens, rows, self.pad_id))
        if self.device.type != "cuda":
            return input_ids.to(self.device), mask.to(self.device)
        return (input_ids.pin_memory().to(self.device, non_blocking=True),
                mask.pin_memory().to(self.device, non_blocking=True))

    def _staged(
        self, batches: list[np.ndarray], tokens: FlatTokens
    ) -> Iterator[tuple[np.ndarray, dict[int, tuple[torch.Tensor, torch.Tensor]]]]:
        """Each batch with its device tensors, keyed by its row count. On a GPU the next
        batch is padded and copied by a helper thread while the current one computes; on a CPU that
        thread would only compete with the model for the same cores."""
        if self.device.type != "cuda":
            for batch in batches:
                yield batch, {len(batch): self._device_batch(tokens, batch)}
            return
        if self._stager is None:
            self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage-batches")
        prepare = partial(self._device_batch, tokens)
        pending: Future | None = self._stager.submit(prepare, batches[0]) if batches else None
        for position, batch in enumerate(batches):
            ready = pending.result() if pending is not None else self._device_batch(tokens, batch)
            following = position + 1
            pending = self._stager.submit(prepare, batches[following]) if following < len(batches) else None
            yield batch, {len(batch): ready}

    def _empty_outputs(self) -> dict[str, list | np.ndarray]:
        return {f.name: [] for f in self.output_fields()}


@dataclass
class _LoopStats:
    padded_tokens: int = 0
    splits: int = 0

    def count_split(self, _rows: int) -> None:
        self.splits += 1


def _scatter(
    outputs: dict[str, list | np.ndarray], result: dict[str, list | np.ndarray], indices: np.ndarray, total: int
) -> None:
    """Place one batch's per-row outputs at their input positions."""
    for name, values in result.items():
        if isinstance(values, np.ndarray):
            if name not in outputs:
                outputs[name] = np.zeros((total, *values.shape[1:]), dtype=values.dtype)
            outputs[name][indices] = values
        else:
            if name not in outputs:
                outputs[name] = [None] * total
            target = outputs[name]
            for position, value in zip(indices, values, strict=True):
                target[position] = value


@dataclass
class EncoderSpec:
    """Everything needed to build an encoder inside a worker: plain data, cheap to ship to Ray actors."""

    model: str = "minilm"  # "minilm" or a local folder path
    dims: list[int] = field(default_factory=list)  # nested Matryoshka sizes
    outputs: list[str] = field(default_factory=list)  # BGE-M3: subset of dense, sparse, colbert
    max_length: int | None = None
    max_tokens_per_batch: int | None = None  # None: the device's default (BatchLimits)
    max_rows_per_batch: int | None = None
    device: str | None = None  # None: cuda when available, else cpu
    precision: Precision = Precision.AUTO  # operators/encoders/precision.py
    int8_kernel: str | None = None  # int8's kernel (precision.Int8Kernel); None: this CPU's (resolve_precision)
    prompt_name: str | None = "document"
    storage: dict = field(default_factory=dict, repr=False)  # settings to fetch a model folder on an object store
