"""The encoder interface and the shared tokenise -> token-budget batches -> forward -> reorder loop.

Encoders differ only in how they load a model folder and what they compute from one padded batch
(`_forward`); tokenisation, length sorting, batch cutting, OOM splitting and restoring input order
live here once.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from operators.encoders.batching import pad_batch, plan_batches, run_splitting_on_oom

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
    """How a list of texts is cut into model batches."""

    max_tokens: int = 16384  # padded tokens per forward pass
    max_rows: int = 256


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (where bf16 is slow and lossy)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
        self.limits = limits or BatchLimits()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- what a subclass provides ------------------------------------------------------------
    @abstractmethod
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, list | np.ndarray]:
        """Outputs of one padded batch, per row in batch order: an ndarray (rows, ...) or a list."""

    @abstractmethod
    def _to_arrow(self, outputs: dict[str, list | np.ndarray]) -> dict[str, pa.Array]:
        """Turn the reordered outputs into Arrow columns."""

    def _prepare_texts(self, texts: Sequence[str], prompt_name: str | None) -> list[str]:
        """Hook for prompts and lower-casing; identity by default."""
        return list(texts)

    # -- the shared loop ---------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text, truncated to max_length, and whether each text was truncated."""
        if not texts:
            return [], np.zeros(0, dtype=bool)
        char_limit = self.max_length * CHARS_PER_TOKEN_BOUND
        cut = [len(text) > char_limit for text in texts]
        clipped = [text[:char_limit] if too_long else text for text, too_long in zip(texts, cut, strict=True)]
        encoded = self.tokenizer(
            clipped,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length + 1,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        truncated = np.array([len(ids) > self.max_length for ids in encoded], dtype=bool) | np.array(cut)
        if truncated.any():
            again = [clipped[i] for i in np.flatnonzero(truncated)]
            recut = self.tokenizer(
                again,
                add_special_tokens=True,
                truncation=True,
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            for position, ids in zip(np.flatnonzero(truncated), recut, strict=True):
                encoded[position] = ids
        return encoded, truncated

    def encode(self, texts: Sequence[str], prompt_name: str | None = "document") -> EncodedBatch:
        prepared = self._prepare_texts(texts, prompt_name)
        token_ids, truncated = self.tokenize(prepared)
        lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
        outputs: dict[str, list | np.ndarray] = {}
        padded_tokens = 0
        splits = 0

        def count_split(_rows: int) -> None:
            nonlocal splits
            splits += 1

        def run(indices: np.ndarray) -> list[tuple[np.ndarray, dict[str, list | np.ndarray]]]:
            nonlocal padded_tokens
            input_ids, mask = pad_batch([token_ids[i] for i in indices], self.pad_id)
            result = self._forward(input_ids.to(self.device), mask.to(self.device))
            padded_tokens += input_ids.numel()
            return [(indices, result)]

        for batch in plan_batches(lengths, self.limits.max_tokens, self.limits.max_rows):
            for indices, result in run_splitting_on_oom(run, batch, count_split):
                _scatter(outputs, result, indices, len(texts))
        return EncodedBatch(
            columns=self._to_arrow(outputs) if len(texts) else self._to_arrow(self._empty_outputs()),
            token_counts=lengths,
            truncated=truncated,
            padded_tokens=padded_tokens,
            oom_splits=splits,
        )

    def _empty_outputs(self) -> dict[str, list | np.ndarray]:
        return {f.name: [] for f in self.output_fields()}


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
    max_tokens_per_batch: int = 16384
    max_rows_per_batch: int = 256
    device: str | None = None  # None: cuda when available, else cpu
    prompt_name: str | None = "document"
