"""Settling how a run stores its vectors before any row is encoded: the table's quantisation settings,
and int8 ranges calibrated once for the table.

Ranges must be fixed before the encoder actors start (ranges per actor or per batch would make codes
incomparable). A table that already holds rows is calibrated from a sample of its stored float vectors (no
model needed); a new or empty table from a sample of this, its first, run's input: up to
`calibration_rows` rows spread over the input's files, encoded in one Ray task placed like an encoder
actor (a GPU when the cluster has them), so the driver never loads the model and the cost does not grow
with the corpus. The ranges go into the table's metadata, where every later run finds them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import quantize
from operators.encoders.base import EncoderSpec
from operators.exchange import REASON_COL, TEXT_COL
from operators.schema import is_dense_column
from operators.serving import serving_version
from operators.sinks.requantize import (
    calibrate_from_table,
    quantized_stored,
    requantize,
    stored_meta,
    update_storage_meta,
)
from operators.sources import ShardReader
from operators.stored_vectors import VectorStorage
from operators.table_meta import read_meta
from operators.tables import TableRef

log = logging.getLogger(__name__)
SAMPLE_FILES = 16  # files the input sample is spread over


def requested_storage(quantize_: Sequence[str], colbert_precision: str | None, colbert_pool_factor: float | None,
                      target: TableRef, model_id: str, overwrite: bool, recalibrate: bool) -> VectorStorage:
    """The run's storage: what the job asks for on top of what the table already stores (a table keeps its
    quantised columns and ColBERT precision; its ranges unless `recalibrate` or another model wrote it)."""
    meta = None if overwrite else stored_meta(target)
    stored = VectorStorage.from_meta(meta) if meta is not None else VectorStorage()
    keep_ranges = meta is not None and meta.model_id == model_id and not recalibrate
    storage = VectorStorage(
        quantize=tuple(dict.fromkeys([*stored.quantize, *quantize_])),
        int8_ranges=dict(stored.int8_ranges) if keep_ranges else {},
        colbert_precision=colbert_precision or stored.colbert_precision,
        colbert_pool_factor=colbert_pool_factor or stored.colbert_pool_factor,
    )
    if meta is not None and (storage.colbert_precision, storage.colbert_pool_factor) != (
            stored.colbert_precision, stored.colbert_pool_factor) and target.dataset().count_rows():
        msg = (f"table {target.name!r} stores ColBERT as {stored.colbert_precision} (pool factor "
               f"{stored.colbert_pool_factor:g}); changing it needs --overwrite")
        raise ValueError(msg)
    return storage


def settle_existing(target: TableRef, storage: VectorStorage, encoder_fields: Sequence[pa.Field], model_id: str,
                    calibration_rows: int) -> VectorStorage:
    """`plan_existing`, then re-quantise the stored rows when it says they are stale. Returns the storage."""
    storage, stale = plan_existing(target, storage, encoder_fields, model_id, calibration_rows)
    if stale:
        requantize_stored(target, storage)
    return storage


def plan_existing(target: TableRef, storage: VectorStorage, encoder_fields: Sequence[pa.Field], model_id: str,
                  calibration_rows: int) -> tuple[VectorStorage, bool]:
    """For a table that holds this model's rows: calibrate what is uncalibrated from its stored vectors, and
    say whether every row must be re-quantised (its quantised columns are missing or its ranges changed).
    Writes nothing: the embed job re-quantises after its run has begun (operators/serving.py), so the new
    codes are published with the metadata that holds their ranges. A table of another model or with other
    dense columns is left alone (the run re-embeds it, calibrating from its input, or stops on the columns
    that differ)."""
    if not target.exists():
        return storage, False
    # Compared with what readers are served: a killed run that re-quantised part of the rows, or recorded
    # new ranges, is not mistaken for a finished one, and its re-quantisation is done again in full.
    latest = target.dataset()
    dataset = target.dataset(serving_version(latest) or latest.version)
    meta = read_meta(dataset.schema)
    dense = [f for f in encoder_fields if is_dense_column(f.name)]
    types = {f.name: f.type for f in dataset.schema}
    if (dataset.count_rows() == 0 or meta is None or meta.model_id != model_id
            or any(types.get(f.name) != f.type for f in dense)):
        return storage, False
    missing = storage.uncalibrated(encoder_fields)
    if missing:
        storage = storage.with_ranges({**storage.int8_ranges, **calibrate_from_table(target, missing,
                                                                                     calibration_rows)})
    wanted = set(storage.quantized_columns([f.name for f in encoder_fields if is_dense_column(f.name)]))
    have = set(quantized_stored(dataset.schema.names))
    recorded = VectorStorage.from_meta(meta) if meta is not None else VectorStorage()
    changed = storage.int8 and any(name not in recorded.int8_ranges
                                   or not np.array_equal(recorded.int8_ranges[name], ranges)
                                   for name, ranges in storage.int8_ranges.items())
    return storage, bool(wanted != have or changed)


def requantize_stored(target: TableRef, storage: VectorStorage) -> int:
    """Re-quantise every stored row of `target` with `storage` (operators/sinks/requantize.py)."""
    rows = requantize(target, storage)
    log.info("re-quantised %d stored rows of %s", rows, target.name)
    return rows


def settle_new(target: TableRef, storage: VectorStorage, encoder_fields: Sequence[pa.Field], spec: EncoderSpec,
               reader: ShardReader, files: Sequence[str], calibration_rows: int, num_gpus: float = 0,
               resources: dict | None = None) -> VectorStorage:
    """For a table without rows: calibrate what is uncalibrated from a sample of the input (inside the
    running Ray) and record the ranges. Returns the storage to apply."""
    missing = storage.uncalibrated(encoder_fields)
    if not missing:
        return storage
    import ray

    task = ray.remote(calibrate_from_input).options(num_gpus=num_gpus, resources=resources or None)
    ranges = ray.get(task.remote(spec, reader, list(files), calibration_rows))
    if not ranges:  # no valid input row: nothing will be quantised in this run
        return storage
    storage = storage.with_ranges({**storage.int8_ranges, **{name: ranges[name] for name in missing}})
    update_storage_meta(target, storage)
    return storage


def sample_texts(reader: ShardReader, files: Sequence[str], rows: int) -> list[str]:
    """Up to `rows` embeddable texts, the first rows of up to SAMPLE_FILES files spread over the input."""
    step = max(1, len(files) // SAMPLE_FILES)
    chosen = list(files)[::step][:SAMPLE_FILES]
    per_file = math.ceil(rows / max(1, len(chosen)))
    texts: list[str] = []
    for path in chosen:
        taken = 0
        for table in reader.read(path):  # rows that cannot be embedded come with a reason
            good = table.filter(pc.is_null(table.column(REASON_COL))).column(TEXT_COL).to_pylist()
            texts.extend(good[:per_file - taken])
            taken += min(len(good), per_file - taken)
            if taken >= per_file:
                break
    return texts[:rows]


def calibrate_from_input(spec: EncoderSpec, reader: ShardReader, files: list[str], rows: int) -> dict[str, np.ndarray]:
    """Runs in a Ray task: encode a sample of the input, return the int8 ranges of each dense column
    (empty when the input has no embeddable row)."""
    from operators.encoders.loader import load_encoder

    texts = sample_texts(reader, files, rows)
    if not texts:
        return {}
    encoded = load_encoder(spec).encode(texts, prompt_name=spec.prompt_name)
    log.info("calibrated int8 ranges on %d input rows", len(texts))
    return {name: quantize.calibrate_ranges(quantize.vector_matrix(array))
            for name, array in encoded.columns.items() if is_dense_column(name)}
