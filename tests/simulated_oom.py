"""An encoder whose forward pass runs out of device memory on big batches, as a GPU would (no GPU needed)."""

from __future__ import annotations

import pytest
import torch


def fail_batches_above(monkeypatch: pytest.MonkeyPatch, encoder, rows: int) -> list[int]:
    """Make `encoder._forward` raise torch's OutOfMemoryError on batches of more than `rows` rows; returns
    the list the batch sizes it is called with are appended to."""
    original = encoder._forward
    seen: list[int] = []

    def forward(input_ids, attention_mask):
        seen.append(input_ids.shape[0])
        if input_ids.shape[0] > rows:
            msg = "CUDA out of memory (simulated)"
            raise torch.OutOfMemoryError(msg)
        return original(input_ids, attention_mask)

    monkeypatch.setattr(encoder, "_forward", forward)
    return seen
