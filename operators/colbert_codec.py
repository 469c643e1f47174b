"""Compressed ColBERT multi-vectors: the column that dominates a BGE-M3 table's storage, made smaller.

BGE-M3 writes one unit vector per token (1024-d: 2 KB per token in float16, ~1 MB per 500-token
document). Three storage precisions, each scored by MaxSim with the float query (asymmetric):
- float16: as the encoder writes; `colbert` list<fixed_size_list<float16>[D]>.
- int8: a symmetric scale per token, s = max|v| / 127, code = round(v / s), v ~ s * code; `colbert`
  list<fixed_size_list<int8>[D]> plus `colbert_scale` list<float32> (one scale per token): ~2x smaller.
- binary: the sign bits packed big-endian (`numpy.packbits(v > 0)`), v ~ (2b - 1) / sqrt(D), the unit
  vector of the signs; `colbert` list<fixed_size_list<uint8>[D/8]>: 16x smaller, at a quality cost the
  evaluation reports.
Token pooling (`pool_factor`, Clavié et al. 2024, "Reducing the footprint of multi-vector retrieval with
minimal performance impact via token pooling") merges a document's tokens into len / pool_factor clusters
(Ward linkage on cosine distance) and keeps each cluster's unit-length mean, before compression: the same
function as sentence-transformers' `HierarchicalTokenPooling(pool_factor, num_protected_tokens=0)`
(BGE-M3's ColBERT vectors have no CLS token to protect).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.vectors import normalize_rows

FLOAT16 = "float16"
INT8 = "int8"
BINARY = "binary"
PRECISIONS = (FLOAT16, INT8, BINARY)
SCALE_SUFFIX = "_scale"
INT8_MAX = 127


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        msg = f"unknown ColBERT precision {precision!r} (choose from {', '.join(PRECISIONS)})"
        raise ValueError(msg)
    return precision


def scale_column(column: str) -> str:
    return f"{column}{SCALE_SUFFIX}"


def colbert_fields(column: str, dim: int, precision: str) -> list[pa.Field]:
    """The stored fields of a ColBERT column of D-dim token vectors at `precision`."""
    check_precision(precision)
    if precision == FLOAT16:
        return [pa.field(column, pa.list_(pa.list_(pa.float16(), dim)))]
    if precision == INT8:
        return [pa.field(column, pa.list_(pa.list_(pa.int8(), dim))),
                pa.field(scale_column(column), pa.list_(pa.float32()))]
    if dim % 8:
        msg = f"binary ColBERT needs a token dimension divisible by 8, got {dim}"
        raise ValueError(msg)
    return [pa.field(column, pa.list_(pa.list_(pa.uint8(), dim // 8)))]


def precision_of(value_type: pa.DataType) -> str:
    """The precision a stored ColBERT column's token type stands for."""
    if pa.types.is_int8(value_type):
        return INT8
    if pa.types.is_uint8(value_type):
        return BINARY
    return FLOAT16


# -- one document's tokens -------------------------------------------------------------------
def compress_tokens(vectors: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes, per-token scales or None) of (T, D) float token vectors."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if check_precision(precision) == FLOAT16:
        return vectors.astype(np.float16), None
    if precision == BINARY:
        return np.packbits(vectors > 0, axis=-1), None
    peak = np.abs(vectors).max(axis=-1) if vectors.size else np.zeros(vectors.shape[:-1], np.float32)
    scales = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scales[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scales


def decompress_tokens(codes: np.ndarray, scales: np.ndarray | None, precision: str, dim: int) -> np.ndarray:
    """The float32 (T, D) token vectors MaxSim scores, from stored codes."""
    if check_precision(precision) == FLOAT16:
        return np.asarray(codes, dtype=np.float32)
    if precision == INT8:
        return np.asarray(codes, dtype=np.float32) * np.asarray(scales, dtype=np.float32)[..., None]
    signs = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=-1)[..., :dim].astype(np.float32)
    return (2 * signs - 1) / np.float32(np.sqrt(dim))


def pool_tokens(vectors: np.ndarray, pool_factor: float) -> np.ndarray:
    """Hierarchical token pooling: Ward clustering of the tokens on cosine distance into
    max(1, T // pool_factor) clusters, each replaced by its mean, all outputs unit length."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    vectors = np.asarray(vectors, dtype=np.float32)
    clusters = max(int(len(vectors) // pool_factor), 1)
    if pool_factor > 1 and clusters < len(vectors):
        distances = np.clip(1 - vectors @ vectors.T, 0, 2)
        linkage = hierarchy.linkage(squareform(distances, checks=False), method="ward")
        labels = hierarchy.fcluster(linkage, t=clusters, criterion="maxclust")
        _, inverse = np.unique(labels, return_inverse=True)
        sums = np.zeros((inverse.max() + 1, vectors.shape[1]), dtype=np.float32)
        np.add.at(sums, inverse, vectors)
        vectors = sums / np.bincount(inverse)[:, None].astype(np.float32)
    return normalize_rows(vectors)


# -- Arrow columns ---------------------------------------------------------------------------
def _token_matrix(tokens: pa.Array, dtype) -> np.ndarray:
    """The flat (all tokens, width) matrix under a list<fixed_size_list> column's values."""
    width = tokens.type.list_size
    values = tokens.values.slice(tokens.offset * width, len(tokens) * width)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=dtype).reshape(len(tokens), width)


def flat_tokens(column: pa.Array | pa.ChunkedArray, scales: pa.Array | pa.ChunkedArray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(all rows' token vectors as one float32 (tokens, D) matrix, tokens per row; 0 for null rows) of a
    stored ColBERT column at any precision; `scales`: its `colbert_scale` column when int8."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = np.asarray(column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    tokens = column.flatten()  # null rows contribute no tokens
    precision = precision_of(tokens.type.value_type)
    width = tokens.type.list_size
    dim = width * 8 if precision == BINARY else width
    token_scales = None
    if precision == INT8:
        if scales is None:
            msg = "an int8 ColBERT column needs its per-token scales column"
            raise ValueError(msg)
        if isinstance(scales, pa.ChunkedArray):
            scales = scales.combine_chunks()
        token_scales = np.asarray(scales.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        if token_scales.size != lengths.sum():
            msg = "ColBERT scales do not match the token vectors (one scale per token)"
            raise ValueError(msg)
    codes = _token_matrix(tokens, np.uint8 if precision == BINARY else np.float32)
    return decompress_tokens(codes, token_scales, precision, dim), lengths


def compress_column(column: pa.Array | pa.ChunkedArray, precision: str, pool_factor: float = 1.0,
                    name: str = "colbert") -> dict[str, pa.Array]:
    """A float ColBERT column (as the encoder writes it) pooled and compressed: {name: tokens, and
    name_scale for int8}. Null rows stay null."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    check_precision(precision)
    flat, lengths = flat_tokens(column)
    dim = flat.shape[1]
    if pool_factor > 1:
        starts = np.concatenate([[0], np.cumsum(lengths)])
        pooled = [pool_tokens(flat[starts[i]:starts[i + 1]], pool_factor) if lengths[i] else flat[:0]
                  for i in range(len(lengths))]
        lengths = np.array([len(rows) for rows in pooled], dtype=np.int64)
        flat = np.concatenate(pooled) if pooled else flat
    codes, scales = compress_tokens(flat, precision)
    fields = colbert_fields(name, dim, precision)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    mask = pa.array(~np.asarray(column.is_valid())) if column.null_count else None
    inner = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), codes.shape[1])
    result = {name: pa.ListArray.from_arrays(offsets, inner, type=fields[0].type, mask=mask)}
    if scales is not None:
        result[scale_column(name)] = pa.ListArray.from_arrays(offsets, pa.array(scales, pa.float32()),
                                                              type=fields[1].type, mask=mask)
    return result


def bytes_per_token(dim: int, precision: str) -> float:
    """Storage of one token vector: 2 bytes a dim in float16, 1 byte a dim + a float32 scale in int8,
    1 bit a dim in binary."""
    return {FLOAT16: 2.0 * dim, INT8: dim + 4.0, BINARY: dim / 8}[check_precision(precision)]
