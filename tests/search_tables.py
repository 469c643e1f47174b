"""Synthetic embedlake tables for search tests: random unit vectors in every column the pipeline writes.

Search is tested against brute force on the very vectors stored, so random vectors are enough; the
MiniLM and BGE-M3 tests cover real encoders.
"""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa

from operators.schema import (
    COLBERT,
    DENSE,
    ID,
    MODEL,
    SPARSE,
    SPARSE_TYPE,
    TEXT_HASH,
    colbert_type,
    dense_column,
    dense_type,
    embeddings_schema,
)
from operators.table_meta import TableMeta, with_meta
from operators.vectors import normalize_rows

VOCAB = 60
FAKE_MODEL_ID = "fake:1"  # every row's model and the metadata's model_id agree, as in a table embed wrote


def random_rows(rng: np.random.Generator, n: int, dim: int = 32, dims=(16, 8), colbert_dim: int = 16,
                start: int = 0, sparse: bool = True, colbert: bool = True) -> dict:
    """Columns of n rows: raw vectors with decaying variance so nested prefixes are meaningful."""
    raw = rng.normal(size=(n, dim)) * np.linspace(2.0, 0.5, dim)
    columns = {
        ID: [f"doc{start + i:05d}" for i in range(n)],
        TEXT_HASH: ["h"] * n,
        MODEL: [FAKE_MODEL_ID] * n,
        DENSE: normalize_rows(raw),
    }
    for d in dims:
        columns[dense_column(d)] = normalize_rows(raw[:, :d])
    if sparse:
        rows = []
        for _ in range(n):
            size = int(rng.integers(0, 12))
            tokens = rng.choice(VOCAB, size=size, replace=False).astype(np.int32)
            weights = rng.uniform(0.01, 0.4, size).astype(np.float32)
            rows.append({"indices": tokens.tolist(), "values": weights.tolist()})
        columns[SPARSE] = rows
    if colbert:
        columns[COLBERT] = [normalize_rows(rng.normal(size=(int(rng.integers(1, 9)), colbert_dim))).astype(np.float16)
                            for _ in range(n)]
    return columns


def to_arrow(columns: dict, dim: int = 32, dims=(16, 8), colbert_dim: int = 16, meta: TableMeta | None = None
             ) -> pa.Table:
    fields = [pa.field(DENSE, dense_type(dim))] + [pa.field(dense_column(d), dense_type(d)) for d in dims]
    if SPARSE in columns:
        fields.append(pa.field(SPARSE, SPARSE_TYPE))
    if COLBERT in columns:
        fields.append(pa.field(COLBERT, colbert_type(colbert_dim)))
    schema = embeddings_schema(fields)
    if meta is not None:
        schema = with_meta(schema, meta)
    arrays = []
    for field in schema:
        if field.name not in columns:  # source_file: these rows come from no shard
            arrays.append(pa.nulls(len(columns[ID]), field.type))
            continue
        values = columns[field.name]
        if pa.types.is_fixed_size_list(field.type):
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), field.type.list_size))
        elif field.name == COLBERT:
            lengths = np.array([len(v) for v in values])
            flat = np.concatenate(values).reshape(-1)
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float16()), colbert_dim)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            arrays.append(pa.ListArray.from_arrays(offsets, inner, type=field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def make_table(path: str, name: str = "docs", n: int = 300, seed: int = 0, **kwargs) -> tuple[pa.Table, dict]:
    rng = np.random.default_rng(seed)
    columns = random_rows(rng, n, **kwargs)
    meta = TableMeta(model="fake", model_id=FAKE_MODEL_ID, kind="bge-m3", dims=list(kwargs.get("dims", (16, 8))),
                     outputs=["dense", "sparse", "colbert"])
    table = to_arrow(columns, dim=kwargs.get("dim", 32), dims=kwargs.get("dims", (16, 8)),
                     colbert_dim=kwargs.get("colbert_dim", 16), meta=meta)
    lancedb.connect(path).create_table(name, table)
    return table, columns


# -- brute-force references -------------------------------------------------------------------
def brute_lexical(query, row: dict) -> float:
    """FlagEmbedding's compute_lexical_matching_score: loop over query tokens present in the passage."""
    passage = {}
    for token, weight in zip(row["indices"], row["values"], strict=True):
        passage[token] = max(weight, passage.get(token, 0.0))
    return sum(float(w) * passage[int(t)] for t, w in zip(query.indices, query.values, strict=True)
               if int(t) in passage)


def brute_maxsim(query: np.ndarray, passage: np.ndarray) -> float:
    passage = passage.astype(np.float32)
    return float(np.mean([max(float(q @ p) for p in passage) for q in query]))


def brute_ranking(ids, scores, k):
    return sorted(zip(ids, scores, strict=True), key=lambda pair: (-pair[1], pair[0]))[:k]
