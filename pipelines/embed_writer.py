"""The writer stage of the embed job: upsert a batch of embedded rows and its quarantined rows, and
send only counts back to the driver.

It lives apart from pipelines/embed.py so that the Ray workers running it import Arrow and Lance
only, not torch and the encoders: on a small CPU cluster, idle workers are recycled and each writer
task may start a fresh process, and 3 s of imports there is 3 s taken from the encoders.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from operators.row_status import (
    EMBEDDED,
    PADDED_COL,
    QUARANTINED,
    STATUS_COL,
    TOKENS_COL,
    TRUNCATED_COL,
    UNCHANGED,
    WORKER_COL,
)
from operators.schema import COLBERT, ID, QUARANTINE_SCHEMA, REASON, RUN_ID, SOURCE, SPARSE, is_dense_column
from operators.sinks.lance_sink import upsert
from operators.sources import READ_AT_COL, REASON_COL, SOURCE_COL
from operators.tables import TableRef

VECTOR_OUTPUTS = (SPARSE, COLBERT)


@dataclass
class Tables:
    """The two tables a run's writers fill (the table and its quarantine) and the schema of the main one."""

    main: TableRef
    quarantine: TableRef
    schema: pa.Schema


def write_batch(batch: pa.Table, tables: Tables, run_id: str) -> pa.Table:
    """Upsert a batch's embedded rows into the table and its bad rows into the quarantine table;
    return one row of counts for the driver."""
    status = batch.column(STATUS_COL)
    embedded = batch.filter(pc.equal(status, EMBEDDED))
    bad = batch.filter(pc.equal(status, QUARANTINED))
    quarantined = pa.table({
        ID: bad.column(ID),
        SOURCE: bad.column(SOURCE_COL),
        REASON: bad.column(REASON_COL),
        RUN_ID: pa.array([run_id] * bad.num_rows, pa.string()),
    })
    written = upsert(embedded, tables.main, tables.schema, ID)
    vector_columns = [name for name in tables.schema.names if name in VECTOR_OUTPUTS or is_dense_column(name)]
    column_bytes = {name: embedded.column(name).nbytes for name in vector_columns}
    upsert(quarantined, tables.quarantine, QUARANTINE_SCHEMA, SOURCE)
    return pa.table({
        "rows_written": [embedded.num_rows],
        "rows_inserted": [written.inserted],
        "rows_updated": [written.updated],
        "rows_unchanged": [int(pc.sum(pc.equal(status, UNCHANGED)).as_py() or 0)],
        "rows_quarantined": [bad.num_rows],
        "rows_truncated": [int(pc.sum(batch.column(TRUNCATED_COL).cast(pa.int64())).as_py() or 0)],
        "tokens": [int(pc.sum(batch.column(TOKENS_COL)).as_py() or 0)],
        "padded_tokens": [int(pc.sum(batch.column(PADDED_COL)).as_py() or 0)],
        "first_read_at": [pc.min(batch.column(READ_AT_COL)).as_py() or time.time()],
        "workers": pa.array([pc.unique(batch.column(WORKER_COL)).to_pylist()], pa.list_(pa.string())),
        "column_bytes": [json.dumps(column_bytes)],
    })
