"""What a table remembers about how it was embedded, kept in its Arrow schema metadata.

Search, evaluation and incremental runs need to re-create the encoder that wrote a table (to encode
queries, or to know whether a row is up to date) without the user repeating every option.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import pyarrow as pa

from operators.schema import MODEL

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
    # How the vectors are stored beyond float (operators/stored_vectors.py): quantised copies of the dense
    # columns, their int8 ranges (calibrated once per table: {column: [mins, maxs]}), ColBERT's precision.
    quantize: list[str] = field(default_factory=list)
    int8_ranges: dict[str, list[list[float]]] = field(default_factory=dict)
    colbert_precision: str = "float16"
    colbert_pool_factor: float = 1.0
    # A passage table (embed --chunk-tokens): {"mode", "max_tokens", "overlap"}; `model_id` then ends with
    # ":chunks=<mode>/<max_tokens>/<overlap>" (rows of other chunking are not up to date), `encoder_id` without.
    chunking: dict = field(default_factory=dict)

    @property
    def encoder_id(self) -> str:
        """The identity of the encoder alone (what a query encoder's model_id must equal)."""
        mark = ":chunks="
        return self.model_id.rsplit(mark, 1)[0] if self.chunking and mark in self.model_id else self.model_id

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


def check_one_model(dataset, where: str) -> None:
    """Refuse a table version whose rows hold vectors of a model other than the one its metadata names:
    queries are encoded by the metadata's model, so scoring them against such rows gives wrong answers
    without any sign. A run that finished leaves one model; a run in progress or killed (seen only
    when pinned, or in a table written before serving versions) can leave two. Counted through the
    `model` column's bitmap index where the table has one."""
    meta = read_meta(dataset.schema)
    if meta is None or MODEL not in dataset.schema.names:
        return
    quoted = meta.model_id.replace("'", "''")
    others = dataset.count_rows(filter=f"{MODEL} != '{quoted}'")
    if others:
        msg = (f"{where} holds {others} of {dataset.count_rows()} rows embedded by another model than its "
               f"metadata's {meta.model_id}: queries would be scored against vectors of another model. Read "
               "the serving version (no --version/--tag), pin a finished run's (embedlake versions), or re-run "
               "the embed command to finish")
        raise ValueError(msg)


# The routing rule `evaluate --tune-routing` learned (operators/search/routing.py), JSON under its own key:
# an embed run rewrites the `embedlake` key with its own TableMeta and leaves this one, so a rule outlives
# nightly runs; it names the model it was tuned with, and `search --mode auto` ignores it for another.
ROUTING_KEY = b"embedlake.routing"


def read_routing(schema: pa.Schema) -> dict | None:
    raw = (schema.metadata or {}).get(ROUTING_KEY)
    return json.loads(raw) if raw else None
