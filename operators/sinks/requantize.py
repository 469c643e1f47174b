"""Bringing a table's stored quantised columns in line with its settings: int8 ranges calibrated from a
sample of its rows, and every row re-quantised when the ranges change (`embed --recalibrate`) or when a
table written without `--quantize` gains quantised columns.

Re-quantising is three commits, each leaving the table consistent (codes never disagree with the ranges
the metadata records): drop the old quantised columns; record the new settings and ranges; add the new
columns, computed from the stored float columns fragment by fragment (Lance `add_columns`), so memory
stays at one batch. A run killed between them finds columns missing and the ranges recorded, and adds
the columns on its next start. Readers that opened the table before keep their version; one that opens
it in between sees the table without quantised columns.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pyarrow as pa

from operators import quantize
from operators.schema import is_dense_column
from operators.stored_vectors import VectorStorage
from operators.table_meta import METADATA_KEY, TableMeta, meta_json, read_meta
from operators.tables import TableRef

log = logging.getLogger(__name__)


def stored_meta(target: TableRef) -> TableMeta | None:
    """The table's metadata, None for a missing table or one written without it."""
    return read_meta(target.dataset().schema) if target.exists() else None


def update_storage_meta(target: TableRef, storage: VectorStorage) -> None:
    """Record `storage`'s settings and int8 ranges in the table's metadata, keeping its other fields."""
    meta = stored_meta(target)
    if meta is None:
        msg = f"table {target.name!r} has no embedlake metadata to record its quantisation in"
        raise ValueError(msg)
    meta = replace(meta, quantize=list(storage.quantize), int8_ranges=quantize.ranges_to_json(storage.int8_ranges),
                   colbert_precision=storage.colbert_precision, colbert_pool_factor=storage.colbert_pool_factor)
    target.dataset().update_schema_metadata({METADATA_KEY.decode(): meta_json(meta)})


def calibrate_from_table(target: TableRef, columns: list[str], rows: int = quantize.CALIBRATION_ROWS,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """int8 ranges of `columns` from a random sample of up to `rows` of the table's stored vectors."""
    dataset = target.dataset()
    count = dataset.count_rows()
    positions = np.sort(np.random.default_rng(seed).choice(count, size=min(rows, count), replace=False))
    sample = dataset.take(positions, columns=columns)
    return {name: quantize.calibrate_ranges(quantize.vector_matrix(sample.column(name))) for name in columns}


def quantized_stored(names: list[str]) -> list[str]:
    """The quantised copies of dense columns among a table's column names."""
    return quantize.quantized_columns(names)


def requantize(target: TableRef, storage: VectorStorage) -> int:
    """Rewrite the table's quantised columns from its float columns with `storage` (ranges included);
    returns the rows re-quantised."""
    dataset = target.dataset()
    dense = [f for f in dataset.schema if is_dense_column(f.name)]
    stale = quantized_stored(dataset.schema.names)
    if stale:
        dataset.drop_columns(stale)
    update_storage_meta(target, storage)
    fields = quantize.quantized_fields(dense, storage.quantize)
    if not fields:
        return 0
    output = pa.schema(fields)
    names = [f.name for f in dense]

    def quantise(batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = quantize.quantize_columns({name: batch.column(name) for name in names}, storage.quantize,
                                            storage.int8_ranges)
        return pa.record_batch([columns[f.name] for f in fields], schema=output)

    from lance import batch_udf

    dataset = target.dataset()
    rows = dataset.count_rows()
    log.info("re-quantising %d rows of %s: %s", rows, target.name, ", ".join(f.name for f in fields))
    dataset.add_columns(batch_udf(output_schema=output)(quantise), read_columns=names)
    return rows
