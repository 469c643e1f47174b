"""Encode query texts with the encoder that wrote a table, using the model's query prompt.

The table's metadata (TableMeta, at the version read) names the model and options; `--model` names it for
tables written without metadata, and is refused when it encodes queries as another model than the table's.
Queries go through the same encoder class as the documents, so every column the table stores (dense,
dense_<d>, sparse, colbert) has its query-side counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from operators.encoders.base import Encoder, EncoderSpec
from operators.schema import COLBERT, SPARSE, nested_dim
from operators.scoring import QueryVectors, SparseVector
from operators.search.store import TableStore
from operators.vectors import as_matrix, sparse_children

QUERY_PROMPT = "query"


def query_encoder_spec(store: TableStore, model: str | None = None) -> EncoderSpec:
    """The spec that encodes queries for this table: its metadata's, or one built from `model` and the
    table's columns when the metadata is absent or the user overrides the model."""
    meta = store.meta
    if model is None and meta is None:
        msg = f"table {store.name!r} carries no embedlake metadata; pass --model to say which encoder wrote it"
        raise ValueError(msg)
    if model is None:
        spec = meta.encoder_spec(prompt_name=QUERY_PROMPT)
    else:
        dims = [nested_dim(name) for name in store.dense_columns() if nested_dim(name)]
        outputs = [name for name in ("dense", SPARSE, COLBERT) if store.has(name)]
        spec = EncoderSpec(model=model, dims=dims, outputs=outputs, max_length=meta.max_length if meta else None,
                           prompt_name=QUERY_PROMPT)
    return spec


def load_query_encoder(store: TableStore, model: str | None = None) -> Encoder:
    from operators.encoders.loader import load_encoder

    encoder = load_encoder(query_encoder_spec(store, model))
    if store.meta is not None and model is not None and encoder.model_id != store.meta.encoder_id:
        msg = (f"--model {model} encodes queries as {encoder.model_id}, but table {store.name!r} at version "
               f"{store.version} holds vectors of {store.meta.model_id}: refusing to score queries of one model "
               "against vectors of another (leave out --model: queries are encoded by the table's own model)")
        raise ValueError(msg)
    return encoder


def encode_queries(encoder: Encoder, texts: Sequence[str]) -> list[QueryVectors]:
    """One QueryVectors per text, every output the encoder has, in input order."""
    columns = encoder.encode(list(texts), prompt_name=QUERY_PROMPT).columns
    return vectors_from_columns(columns, len(texts))


def vectors_from_columns(columns: dict[str, pa.Array], count: int) -> list[QueryVectors]:
    """Split an encoder's Arrow columns into per-query numpy vectors."""
    queries = [QueryVectors() for _ in range(count)]
    for name, array in columns.items():
        if pa.types.is_fixed_size_list(array.type):
            matrix = as_matrix(array)
            for query, row in zip(queries, matrix, strict=True):
                query.dense[name] = row
        elif name == SPARSE:
            indices, values = sparse_children(array)
            for i, query in enumerate(queries):
                query.sparse = SparseVector.from_pairs(indices[i].values.to_numpy(zero_copy_only=False),
                                                       values[i].values.to_numpy(zero_copy_only=False))
        elif name == COLBERT:
            for i, query in enumerate(queries):
                row = array[i].values
                query.colbert = np.asarray(row.flatten().to_numpy(zero_copy_only=False),
                                           dtype=np.float32).reshape(-1, row.type.list_size)
    return queries
