"""Quantised copies of the dense columns: int8 (4x smaller than float32) and binary (32x smaller).

The values are exactly sentence-transformers' `quantize_embeddings` (a parity test checks it):
- int8: per-dimension ranges (min, max) calibrated once from a sample of embeddings; with
  step = (max - min) / 255, code = clip(floor((x - min) / step), 0, 255) - 128 (precision "int8").
  A table calibrates once and keeps its ranges in its metadata: ranges computed per shard or per
  batch would give codes that cannot be compared with each other.
- binary: the sign bits packed big-endian, `numpy.packbits(x > 0)`, d/8 bytes (precision "ubinary").

Queries stay in float (asymmetric scoring, as sentence-transformers' rescoring does): an int8 row
scores q . dequantise(code), which is one matrix product with q * step plus a per-query constant; a
binary row ranks by the Hamming distance between its bits and the query's sign bits, reported as the
similarity 1 - 2 * distance / d (the cosine of the two sign vectors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

INT8 = "int8"
BINARY = "binary"
PRECISIONS = (INT8, BINARY)
SUFFIXES = {INT8: "_int8", BINARY: "_bin"}
CALIBRATION_ROWS = 1000  # embeddings a table's int8 ranges are calibrated from (at most)


def parse_precisions(value: str | Sequence[str] | None) -> list[str]:
    """`int8,binary` -> ["int8", "binary"] in canonical order; unknown names raise."""
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value or [])
    names = [name for name in names if name]
    unknown = sorted(set(names) - set(PRECISIONS))
    if unknown:
        msg = f"unknown quantisation {', '.join(unknown)} (choose from {', '.join(PRECISIONS)})"
        raise ValueError(msg)
    return [precision for precision in PRECISIONS if precision in names]


def quantized_name(column: str, precision: str) -> str:
    """`dense_64`, "binary" -> `dense_64_bin`."""
    return f"{column}{SUFFIXES[precision]}"


def split_quantized_name(name: str) -> tuple[str, str | None]:
    """`dense_64_bin` -> ("dense_64", "binary"); a float column -> (name, None)."""
    for precision, suffix in SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], precision
    return name, None


def quantized_columns(names: Sequence[str]) -> list[str]:
    """The quantised copies of dense columns among a table's column names, in table order."""
    from operators.schema import is_dense_column

    result = []
    for name in names:
        base, precision = split_quantized_name(name)
        if precision is not None and is_dense_column(base):
            result.append(name)
    return result


# -- int8 ----------------------------------------------------------------------------------------
def calibrate_ranges(sample: np.ndarray) -> np.ndarray:
    """Per-dimension (min, max) of a sample of embeddings: a (2, d) float32 array (sentence-transformers'
    `ranges`; a dimension with min = max gets step 1, as there)."""
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim != 2 or sample.shape[0] < 1:
        msg = f"int8 calibration needs embeddings, got an array of shape {sample.shape}"
        raise ValueError(msg)
    return np.vstack((sample.min(axis=0), sample.max(axis=0))).astype(np.float32)


def _starts_steps(ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    return starts, np.where(steps == 0, 1, steps).astype(np.float32)


def quantize_int8(vectors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes of float vectors, as `quantize_embeddings(vectors, "int8", ranges=ranges)`."""
    starts, steps = _starts_steps(ranges)
    codes = np.clip(np.floor((np.asarray(vectors, dtype=np.float32) - starts) / steps), 0, 255)
    return (codes - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """The float vectors int8 codes stand for (the low end of each code's bucket)."""
    starts, steps = _starts_steps(ranges)
    return ((np.asarray(codes, dtype=np.float32) + 128) * steps + starts).astype(np.float32)


def int8_query(queries: np.ndarray, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weights, offsets) such that weights @ codes.T + offsets[:, None] = queries . dequantize_int8(codes):
    scoring int8 rows is then one product with the codes, never a dequantised copy of the table."""
    starts, steps = _starts_steps(ranges)
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    weights = queries * steps
    offsets = queries @ starts + 128 * weights.sum(axis=1)
    return weights.astype(np.float32), offsets.astype(np.float32)


def int8_scores(codes: np.ndarray, queries: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Float queries (Q, d) against int8 rows (N, d): (Q, N) dot products with the dequantised rows."""
    weights, offsets = int8_query(queries, ranges)
    return weights @ np.asarray(codes, dtype=np.float32).T + offsets[:, None]


# -- binary --------------------------------------------------------------------------------------
def pack_bits(vectors: np.ndarray) -> np.ndarray:
    """Sign bits packed big-endian, `numpy.packbits(vectors > 0)` (sentence-transformers' "ubinary")."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def hamming_distances(query_bits: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """(Q, N) number of differing bits between packed queries (Q, B) and packed rows (N, B)."""
    query_bits = np.atleast_2d(np.asarray(query_bits, dtype=np.uint8))
    bits = np.asarray(bits, dtype=np.uint8)
    return np.bitwise_count(query_bits[:, None, :] ^ bits[None, :, :]).sum(axis=2, dtype=np.int32)


def hamming_topn(bits: np.ndarray, query_bits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact n nearest packed rows by Hamming distance for each query: (positions, distances), nearest
    first. faiss's popcount kernels scan ~10x faster than numpy's; results are the same."""
    import faiss

    query_bits = np.ascontiguousarray(np.atleast_2d(query_bits), dtype=np.uint8)
    bits = np.ascontiguousarray(bits, dtype=np.uint8)
    n = min(n, bits.shape[0])
    if n == 0:
        empty = np.zeros((query_bits.shape[0], 0), dtype=np.int64)
        return empty, empty.astype(np.int32)
    distances, positions = faiss.knn_hamming(query_bits, bits, n)
    return positions.astype(np.int64), distances.astype(np.int32)


def hamming_similarity(distances: np.ndarray, dim: int) -> np.ndarray:
    """1 - 2 * distance / d: the cosine similarity of the two +-1 sign vectors, in [-1, 1]."""
    return (1.0 - 2.0 * np.asarray(distances, dtype=np.float32) / dim).astype(np.float32)


# -- Arrow columns -------------------------------------------------------------------------------
def quantized_type(dim: int, precision: str) -> pa.DataType:
    """fixed_size_list<int8>[d] or fixed_size_list<uint8>[ceil(d/8)]."""
    if precision == INT8:
        return pa.list_(pa.int8(), dim)
    return pa.list_(pa.uint8(), (dim + 7) // 8)


def quantized_fields(fields: Sequence[pa.Field], precisions: Sequence[str]) -> list[pa.Field]:
    """The fields `quantize_columns` adds for the dense fields among `fields`, in order."""
    from operators.schema import is_dense_column

    return [pa.field(quantized_name(f.name, precision), quantized_type(f.type.list_size, precision))
            for f in fields if is_dense_column(f.name) for precision in precisions]


def vector_matrix(array: pa.Array | pa.ChunkedArray, dtype=np.float32) -> np.ndarray:
    """A fixed_size_list column as an (n, d) matrix; null rows come out as zeros."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    size = array.type.list_size
    values = array.values.slice(array.offset * size, len(array) * size)
    matrix = np.asarray(values.to_numpy(zero_copy_only=False), dtype=dtype).reshape(len(array), size)
    if array.null_count:
        matrix = matrix.copy()
        matrix[~np.asarray(array.is_valid())] = 0
    return matrix


def fixed_list_array(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """An (n, d) matrix as fixed_size_list<dtype>[d]; rows where `valid` is False are null."""
    matrix = np.ascontiguousarray(matrix)
    mask = None if valid is None or valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1], mask=mask)


def quantize_columns(columns: Mapping[str, pa.Array], precisions: Sequence[str],
                     ranges: Mapping[str, np.ndarray]) -> dict[str, pa.Array]:
    """The encoder's columns plus `<col>_int8` / `<col>_bin` for every dense column (null rows stay null).
    `ranges`: the table's int8 ranges per dense column (needed when int8 is asked for)."""
    from operators.schema import is_dense_column

    result = dict(columns)
    for name, array in columns.items():
        if not is_dense_column(name):
            continue
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        matrix = vector_matrix(array)
        valid = np.asarray(array.is_valid()) if array.null_count else None
        for precision in precisions:
            if precision == INT8:
                if name not in ranges and len(array) > array.null_count:
                    msg = f"no int8 ranges for column {name!r}; calibrate the table first"
                    raise ValueError(msg)
                codes = quantize_int8(matrix, ranges[name]) if name in ranges else matrix.astype(np.int8)
            else:
                codes = pack_bits(matrix)
            result[quantized_name(name, precision)] = fixed_list_array(codes, valid)
    return result


def ranges_to_json(ranges: Mapping[str, np.ndarray]) -> dict[str, list[list[float]]]:
    """Ranges as JSON lists for the table metadata; float32 values survive the round trip exactly."""
    return {name: np.asarray(value, dtype=np.float32).tolist() for name, value in ranges.items()}


def ranges_from_json(stored: Mapping[str, Sequence[Sequence[float]]] | None) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float32) for name, value in (stored or {}).items()}
