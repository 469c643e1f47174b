"""Moving vector columns between Arrow and numpy, and unit-normalising them.

Search, evaluation, clustering and dedup all read `dense*` columns (fixed_size_list<float32>[D]) as (n, D)
float32 matrices and the ragged `sparse` / `colbert` columns as flat buffers; doing it in one place keeps
the zero-copy path and the error for a wrong column type the same everywhere.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def as_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An (n, D) float32 C-contiguous matrix from a fixed_size_list<float>[D] column (zero-copy if it can)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_fixed_size_list(column.type):
        msg = f"expected a fixed_size_list vector column, got {column.type}"
        raise ValueError(msg)
    if column.null_count:
        msg = f"vector column has {column.null_count} null rows; re-embed those rows"
        raise ValueError(msg)
    dim = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, dim), dtype=np.float32)


def ragged_lengths(array: pa.Array) -> np.ndarray:
    """Items per row of a list column, 0 for null rows."""
    return np.asarray(array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)


def sparse_children(array: pa.StructArray) -> tuple[pa.Array, pa.Array]:
    """The indices and values lists of a `sparse` struct column, with null rows as null lists."""
    children = array.flatten()  # merges the struct's validity into its children
    names = [array.type.field(i).name for i in range(array.type.num_fields)]
    return children[names.index("indices")], children[names.index("values")]


def to_vector_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """The Arrow column for an (n, D) matrix: fixed_size_list<float32>[D]."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), so inner product is cosine similarity.

    Tables already store unit vectors; normalising again is cheap and keeps the operators right on any input.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)
