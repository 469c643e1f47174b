"""What a table remembers about how it was embedded, kept in its Arrow schema metadata.

Search, evaluation and incremental runs need to re-create the encoder that wrote a table (to encode
queries, or to know whether a row is up to date) without the user repeating every option.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

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
    precision: str = "auto"  # the --precision the vectors were computed with (operators/encoders/precision.py)

    def encoder_spec(self, **overrides):
        """An EncoderSpec that rebuilds the table's encoder (e.g. to encode queries)."""
        from operators.encoders.base import EncoderSpec  # torch loads only when an encoder is wanted

        spec = EncoderSpec(model=self.model, dims=list(self.dims), outputs=list(self.outputs),
                           max_length=self.max_length)
        for key, value in overrides.items():
            setattr(spec, key, value)
        return spec


def with_meta(schema: pa.Schema, meta: TableMeta) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), METADATA_KEY: json.dumps(asdict(meta)).encode()})


def read_meta(schema: pa.Schema) -> TableMeta | None:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    known = {f.name for f in fields(TableMeta)}
    return TableMeta(**{key: value for key, value in json.loads(raw).items() if key in known})


def write_meta(target, meta: TableMeta) -> None:
    """Record `meta` on the table `target` (operators/tables.TableRef) when it says otherwise: a run whose
    model or precision changed re-embeds every row, and the table must then say how they were made."""
    dataset = target.dataset()
    if read_meta(dataset.schema) == meta:
        return
    dataset.update_schema_metadata({METADATA_KEY.decode(): json.dumps(asdict(meta))})
