"""Length-sorted, token-budget batching and out-of-memory splitting.

Fixed row-count batches waste most of their compute on padding when text lengths vary; sorting by
length and cutting batches by a budget of padded tokens keeps padding small and the work per batch
even (shared/docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
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


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask) int64 tensors."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA OOM and for CPU allocation failures torch reports as RuntimeError."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
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
