"""Batch-size defaults per device, written once: the encoder cuts forward passes with them and the
pipeline sizes an encoder actor's calls with them. No torch here, so the driver can plan without it.

On CPU small batches win (the activations stay in cache and padding is lower, benchmarks/RESULTS.md);
GPUs need big batches to be busy (64k tokens on an H100, docs/encoders.md).
"""

ROWS_PER_BATCH = {"cpu": 256, "cuda": 4096}  # rows per encoder call (and at most per forward pass)
TOKENS_PER_BATCH = {"cpu": 2048, "cuda": 65536}  # padded tokens per forward pass
