"""Length-sorted, token-budget batching and out-of-memory splitting.

Fixed row-count batches waste most of their compute on padding when text lengths vary; sorting by
length and cutting batches by a budget of padded tokens keeps padding small and the work per batch
even (docs/encoders.md).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # torch loads in the workers that encode, never in a run's driver (operators/encoders/folders.py)
    import torch

T = TypeVar("T")


def plan_batches(lengths: Sequence[int] | np.ndarray, max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Split row indices into batches, longest first, so that rows * longest <= max_tokens.

    Returns index arrays into `lengths`; every index appears exactly once. A single row longer than
    the budget still gets a batch of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, max_tokens // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


@dataclass
class FlatTokens:
    """Token ids of many texts in one flat int64 array: text i is ids[offsets[i]:offsets[i + 1]].

    One array instead of a list of lists lets batches be padded with numpy gathers rather than a
    Python loop over rows.
    """

    ids: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lists(cls, token_ids: Sequence[Sequence[int]]) -> FlatTokens:
        lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        offsets = np.zeros(len(token_ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=int(offsets[-1]))
        return cls(ids, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def to_lists(self) -> list[list[int]]:
        return [self.row(i).tolist() for i in range(len(self))]


def pad_rows(tokens: FlatTokens, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (input_ids, attention_mask) int64 arrays for the texts `rows` of `tokens`."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = tokens.offsets[rows]
    lengths = tokens.offsets[rows + 1] - starts
    longest = int(lengths.max()) if len(rows) else 0
    positions = np.arange(longest, dtype=np.int64)
    mask = positions[None, :] < lengths[:, None]
    source = np.minimum(starts[:, None] + positions[None, :], max(len(tokens.ids) - 1, 0))
    gathered = tokens.ids[source] if len(tokens.ids) else np.zeros_like(source)
    input_ids = np.where(mask, gathered, np.int64(pad_id))
    return input_ids, mask.astype(np.int64)


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask) int64 tensors."""
    tokens = FlatTokens.from_lists(token_ids)
    import torch

    input_ids, mask = pad_rows(tokens, np.arange(len(tokens)), pad_id)
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA OOM and for CPU allocation failures torch reports as RuntimeError."""
    torch = sys.modules.get("torch")  # a torch error comes only from a process that loaded torch
    if isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message or "failed to allocate" in message
    )


def run_splitting_on_oom(
    run: Callable[[np.ndarray], list[T]], indices: np.ndarray, on_split: Callable[[int], None] | None = None
) -> list[T]:
    """Run `run(indices)`; on out-of-memory, halve the batch and retry each half.

    Results come back in the order of `indices`. A single row that still does not fit re-raises.
    """
    try:
        return run(indices)
    except Exception as error:  # noqa: BLE001 - re-raised unless it is an OOM we can split
        if not is_out_of_memory(error) or len(indices) <= 1:
            raise
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if on_split is not None:
        on_split(len(indices))
    middle = len(indices) // 2
    return run_splitting_on_oom(run, indices[:middle], on_split) + run_splitting_on_oom(
        run, indices[middle:], on_split
    )


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
