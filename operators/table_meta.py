"""What a table remembers about how it was embedded, kept in its Arrow schema metadata.

Search, evaluation and incremental runs need to re-create the encoder that wrote a table (to encode
queries, or to know whether a row is up to date) without the user repeating every option.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

METADATA_KEY = b"embedlake"


@dataclass
class TableMeta:
    model: str  # the --model argument: "minilm" or a folder path
    model_id: str  # encoder identity (weights fingerprint and vector-changing options)
    kind: str  # "mrl" or "bge-m3"
    dims: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    max_length: int | None = None
    # How the vectors are stored beyond float (operators/stored_vectors.py): quantised copies of the dense
    # columns, their int8 ranges (calibrated once per table: {column: [mins, maxs]}), ColBERT's precision.
    quantize: list[str] = field(default_factory=list)
    int8_ranges: dict[str, list[list[float]]] = field(default_factory=dict)
    colbert_precision: str = "float16"
    colbert_pool_factor: float = 1.0

    def encoder_spec(self, **overrides):
        """An EncoderSpec that rebuilds the table's encoder (e.g. to encode queries)."""
        from operators.encoders.base import EncoderSpec  # torch loads only when an encoder is wanted

        spec = EncoderSpec(model=self.model, dims=list(self.dims), outputs=list(self.outputs),
                           max_length=self.max_length)
        for key, value in overrides.items():
            setattr(spec, key, value)
        return spec


def meta_json(meta: TableMeta) -> str:
    return json.dumps(asdict(meta))


def with_meta(schema: pa.Schema, meta: TableMeta) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), METADATA_KEY: meta_json(meta).encode()})


def read_meta(schema: pa.Schema) -> TableMeta | None:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return TableMeta(**json.loads(raw)) if raw else None
