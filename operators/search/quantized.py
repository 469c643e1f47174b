"""Exact search over quantised dense columns (operators/quantize.py) with float queries.

- `<col>_bin`: Hamming distance between the query's sign bits and each row's (faiss popcount kernels),
  scored as 1 - 2 * distance / d.
- `<col>_int8`: the dot product of the float query with each row's dequantised vector, computed on the
  int8 codes directly (one matrix product with the query times the per-dimension steps).
Both give a ranking function with the signature of `dense.exact_topn`, so the exact scan, the funnel
and the benchmark use them unchanged: a quantised funnel is `funnel_topn` with one of them as its first
stage and the float vectors (or int8 codes with `int8_query` weights) as the rescoring stage.

On a table (`embedlake search --column dense_64_bin`, `--funnel dense_bin`): binary columns are searched
by LanceDB (Hamming distance on the packed bits, in Rust); LanceDB cannot score a float query against
int8 vectors, so int8 columns are scanned here with the ranges the table's metadata records.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa

from operators.quantize import (
    BINARY,
    INT8,
    hamming_distances,
    hamming_similarity,
    hamming_topn,
    int8_query,
    int8_scores,
    pack_bits,
    ranges_from_json,
    split_quantized_name,
    vector_matrix,
)
from operators.search.dense import TopN, exact_topn, scan_topn
from operators.search.store import TableStore

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


# -- on a table ----------------------------------------------------------------------------------
def table_ranges(store: TableStore, base: str) -> np.ndarray | None:
    """The int8 ranges the table's metadata records for dense column `base`."""
    return ranges_from_json(store.meta.int8_ranges if store.meta else {}).get(base)


def table_dim(store: TableStore, column: str) -> int:
    """Dimensions of the float vectors a (quantised) column stands for."""
    base, precision = split_quantized_name(column)
    if store.has(base):
        return store.dim(base)
    return store.dim(column) * 8 if precision == BINARY else store.dim(column)


def table_searcher(store: TableStore, column: str) -> TopN:
    """The exact ranking function of a table's column (float, `_int8` or `_bin`) for float queries."""
    base, precision = split_quantized_name(column)
    return searcher(precision, table_dim(store, column), table_ranges(store, base) if precision == INT8 else None)


def column_scores(store: TableStore, column: str, values: pa.Array | pa.ChunkedArray, query: np.ndarray
                  ) -> np.ndarray:
    """Scores of one float query against rows of a quantised column as read from the table: the int8 dot
    product with the dequantised rows, or the Hamming similarity of the sign bits."""
    base, precision = split_quantized_name(column)
    if len(values) == 0:
        return np.zeros(0, dtype=np.float32)
    if precision == INT8:
        ranges = table_ranges(store, base)
        if ranges is None:
            msg = f"table {store.name!r} records no int8 ranges for {base!r}; re-embed with --recalibrate"
            raise ValueError(msg)
        return int8_scores(vector_matrix(values, np.int8), query, ranges)[0]
    distances = hamming_distances(pack_bits(np.asarray(query, dtype=np.float32)), vector_matrix(values, np.uint8))
    return hamming_similarity(distances[0], table_dim(store, column))


def quantized_rows(store: TableStore, column: str, query: np.ndarray, limit: int, columns: list[str]
                   ) -> pa.Table:
    """`columns` of the `limit` best rows of a quantised column for one float query, best first."""
    _base, precision = split_quantized_name(column)
    store.require(column)
    if precision == BINARY:
        return store.vector_search(column, pack_bits(np.asarray(query, dtype=np.float32)), limit, columns,
                                   distance="hamming")
    positions, _scores = scan_topn(store, column, np.atleast_2d(query), limit, search=table_searcher(store, column))
    return store.take(positions[0], columns)
