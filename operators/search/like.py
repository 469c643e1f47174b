"""More like this: the items nearest a stored item, in any mode, the item itself excluded.

The stored row's own vectors are the query (every dense column, the sparse weights and the ColBERT vectors
the table has), so no text is encoded and any column or mode of `embedlake search` works unchanged: the
search asks for k + 1 rows and drops the item (it is usually its own best match; when an index or the
sparse shortlist misses it, the k best others are still returned).
"""

from __future__ import annotations

import numpy as np

from operators.schema import COLBERT, ID, SPARSE
from operators.scoring import QueryVectors, SparseVector
from operators.vectors import as_matrix, sparse_children


def sql_string(value: str) -> str:
    """A string literal for a Lance filter."""
    return "'" + value.replace("'", "''") + "'"


def stored_query(store, item_id: str) -> QueryVectors:
    """The vectors of the row whose id is `item_id`, as a query; a one-line error when there is none."""
    columns = [ID, *store.vector_columns()]
    rows = store.dataset.to_table(columns=columns, filter=f"{ID} = {sql_string(item_id)}")
    if rows.num_rows == 0:
        msg = f"no row with id {item_id!r} in table {store.name!r}"
        raise ValueError(msg)
    query = QueryVectors()
    for column in store.dense_columns():
        query.dense[column] = as_matrix(rows.column(column).slice(0, 1))[0]
    if store.has(SPARSE):
        indices, values = sparse_children(rows.column(SPARSE).combine_chunks().slice(0, 1))
        query.sparse = SparseVector.from_pairs(indices[0].values.to_numpy(zero_copy_only=False),
                                               values[0].values.to_numpy(zero_copy_only=False)) \
            if indices[0].is_valid else SparseVector.from_pairs([], [])
    if store.has(COLBERT):
        row = rows.column(COLBERT).combine_chunks()[0]
        if row.is_valid:
            vectors = row.values
            query.colbert = np.asarray(vectors.flatten().to_numpy(zero_copy_only=False),
                                       dtype=np.float32).reshape(-1, vectors.type.list_size)
    return query


def search_like(retriever, item_id: str, k: int = 10, **options) -> list[dict]:
    """The k rows nearest the stored item `item_id` ({"id", "score"}, best first, ties by id), without it;
    `options` are Retriever.search's (mode, column, weights, fusion, funnel)."""
    if k < 1:
        msg = f"--k must be at least 1, got {k}"
        raise ValueError(msg)
    query = stored_query(retriever.store, item_id)
    found = retriever.search(query, k=k + 1, **options)
    return [hit for hit in found if hit["id"] != item_id][:k]
