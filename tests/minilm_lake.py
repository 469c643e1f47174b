"""A LanceDB table of real MiniLM vectors (dense + dense_256/128/64) over part of the sample corpus,
written the way `embedlake embed` writes it (schema, TableMeta), built once per test session."""

from __future__ import annotations

import glob
import os

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators.encoders.base import EncoderSpec
from operators.schema import ID, MODEL, TEXT, TEXT_HASH, embeddings_schema, text_hash
from operators.table_meta import TableMeta, with_meta

DIMS = [256, 128, 64]
DOCS = 600
_CACHE: dict[str, str] = {}


def sample_docs(sample_dir: str, count: int = DOCS) -> pa.Table:
    files = sorted(glob.glob(os.path.join(sample_dir, "*.parquet")))
    table = pa.concat_tables([pq.read_table(path, columns=["id", "text"]) for path in files])
    rows = np.random.default_rng(0).choice(table.num_rows, size=count, replace=False)
    return table.take(np.sort(rows))


def write_minilm_table(uri: str, docs: pa.Table, name: str = "docs", model: str = "minilm",
                       dims: list[int] | None = None, keep_text: bool = False) -> str:
    """The table `embed --model MODEL --dims DIMS [--keep-text]` writes for `docs` (id, text)."""
    from operators.encoders.loader import load_encoder, model_kind

    dims = DIMS if dims is None else dims
    spec = EncoderSpec(model=model, dims=dims)
    encoder = load_encoder(spec)
    texts = docs.column("text").to_pylist()
    encoded = encoder.encode(texts, prompt_name="document")
    meta = TableMeta(model=model, model_id=encoder.model_id, kind=model_kind(model), dims=dims,
                     outputs=["dense"], max_length=encoder.max_length)
    row_fields = [pa.field(TEXT, pa.string())] if keep_text else []
    schema = with_meta(embeddings_schema(encoder.output_fields(), row_fields=row_fields), meta)
    columns = {ID: docs.column("id"), TEXT_HASH: pa.array([text_hash(t) for t in texts]),
               MODEL: pa.array([encoder.model_id] * len(texts)), TEXT: docs.column("text"), **encoded.columns}
    table = pa.Table.from_arrays([columns.get(field.name, pa.nulls(len(texts), field.type)) for field in schema],
                                 schema=schema)
    lancedb.connect(uri).create_table(name, table)
    return uri


def minilm_lake(tmp_path_factory, sample_dir) -> str:
    """The session's MiniLM lake (built on first use)."""
    if "uri" not in _CACHE:
        uri = str(tmp_path_factory.mktemp("minilm_lake"))
        _CACHE["uri"] = write_minilm_table(uri, sample_docs(str(sample_dir)))
    return _CACHE["uri"]
