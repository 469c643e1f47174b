"""Useful model FLOPs of a BERT-style encoder on unpadded tokens: what MFU counts.

Per layer and token: Q, K, V and output projections (4 h^2 multiply-adds) and the feed-forward
(2 h i), plus attention scores and the weighted sum (2 h T each for a text of T tokens).
A multiply-add is 2 FLOPs. Padding, embeddings, layer norms and the small heads are not counted.
"""

from __future__ import annotations

import numpy as np


def encoder_flops(hidden: int, intermediate: int, layers: int, lengths: np.ndarray) -> float:
    lengths = np.asarray(lengths, dtype=np.float64)
    tokens = lengths.sum()
    dense = 2.0 * layers * (4 * hidden * hidden + 2 * hidden * intermediate) * tokens
    attention = 2.0 * layers * 2 * hidden * (lengths**2).sum()
    return float(dense + attention)


def config_flops(config, lengths: np.ndarray) -> float:
    """encoder_flops for a Hugging Face config (BERT, XLM-RoBERTa and friends)."""
    return encoder_flops(config.hidden_size, config.intermediate_size, config.num_hidden_layers, lengths)
