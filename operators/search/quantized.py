"""Exact search over quantised dense columns (operators/quantize.py) with float queries.

- `<col>_bin`: Hamming distance between the query's sign bits and each row's (faiss popcount kernels),
  scored as 1 - 2 * distance / d.
- `<col>_int8`: the dot product of the float query with each row's dequantised vector, computed on the
  int8 codes directly (one matrix product with the query times the per-dimension steps).
Both give a ranking function with the signature of `dense.exact_topn`, so the exact scan, the funnel
and the benchmark use them unchanged: a quantised funnel is `funnel_topn` with one of them as its first
stage and the float vectors (or int8 codes with `int8_query` weights) as the rescoring stage.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from operators.quantize import BINARY, INT8, hamming_similarity, hamming_topn, int8_query, pack_bits
from operators.search.dense import TopN, exact_topn

# Shortlist = k x multiplier rows of the quantised first stage, re-ranked by the float vectors. On the
# 1M-vector benchmark (benchmarks/quantize.py) binary needed 100 and int8 4 for >= 0.99 of exact top-10
# (benchmarks/RESULTS.md); the sample's 400 queries lose nothing at either.
DEFAULT_RESCORE_MULTIPLIER = {BINARY: 100, INT8: 10}


def binary_topn(bits: np.ndarray, queries: np.ndarray, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n packed rows by Hamming distance to the float queries' sign bits: (positions, similarity)."""
    positions, distances = hamming_topn(bits, pack_bits(np.atleast_2d(queries)), n)
    return positions, hamming_similarity(distances, dim)


def int8_topn(codes: np.ndarray, queries: np.ndarray, n: int, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-n int8 rows by the dot product of the float queries with the dequantised rows."""
    weights, offsets = int8_query(queries, ranges)
    positions, scores = exact_topn(codes, weights, n)
    return positions, scores + offsets[:, None]


def searcher(precision: str | None, dim: int, ranges: np.ndarray | None = None) -> TopN:
    """The exact ranking function for a column at `precision` (None: float) of `dim`-dim vectors."""
    if precision is None:
        return exact_topn
    if precision == BINARY:
        return partial(binary_topn, dim=dim)
    if precision == INT8:
        if ranges is None:
            msg = "int8 search needs the table's int8 ranges (its metadata has none)"
            raise ValueError(msg)
        return partial(int8_topn, ranges=ranges)
    msg = f"unknown precision {precision!r}"
    raise ValueError(msg)
