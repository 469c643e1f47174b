"""Token-budget batching and padding from one flat token array, without a model."""

from __future__ import annotations

import numpy as np
import torch

from operators.encoders.base import BatchLimits
from operators.encoders.batching import FlatTokens, pad_batch, pad_rows, plan_batches

ROWS = [[101, 7, 8, 102], [101, 102], [101, 5, 6, 7, 8, 9, 102], [101, 3, 102]]


def test_flat_tokens_round_trip():
    tokens = FlatTokens.from_lists(ROWS)
    assert len(tokens) == 4
    assert tokens.lengths.tolist() == [4, 2, 7, 3]
    assert tokens.to_lists() == ROWS
    assert tokens.row(2).tolist() == ROWS[2]


def test_pad_rows_equals_a_loop_over_rows():
    tokens = FlatTokens.from_lists(ROWS)
    rows = np.array([2, 0, 3])
    input_ids, mask = pad_rows(tokens, rows, pad_id=0)
    assert input_ids.shape == mask.shape == (3, 7)
    for out_row, row in enumerate(rows):
        ids = ROWS[row]
        assert input_ids[out_row, : len(ids)].tolist() == ids
        assert (input_ids[out_row, len(ids):] == 0).all()
        assert mask[out_row].tolist() == [1] * len(ids) + [0] * (7 - len(ids))


def test_pad_batch_keeps_its_tensor_interface():
    input_ids, mask = pad_batch(ROWS[:2], pad_id=1)
    assert input_ids.dtype == mask.dtype == torch.int64
    assert input_ids.tolist() == [[101, 7, 8, 102], [101, 102, 1, 1]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_plan_batches_respects_the_budget_and_covers_every_row():
    lengths = np.random.default_rng(0).integers(1, 300, size=500)
    batches = plan_batches(lengths, max_tokens=2048, max_rows=64)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) <= 64
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 2048


def test_batch_limits_default_per_device():
    cpu = BatchLimits().for_device(torch.device("cpu"))
    gpu = BatchLimits().for_device(torch.device("cuda"))
    assert cpu.max_tokens < gpu.max_tokens and cpu.max_rows <= gpu.max_rows
    assert BatchLimits(600, 3).for_device(torch.device("cuda")) == BatchLimits(600, 3)
