"""One opened embedlake table: its LanceDB handle, Lance dataset, metadata and the reads search needs.

Search modes address rows by position (offset in the dataset's scan order at the opened version):
the sparse index stores positions, exact scans produce them, `take` reads the rows back. All reads go
through the version opened here, so positions stay valid for the life of the object; whatever writes to
the table (index builds) does it through `ref.open()` and then opens a new store to read what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from operators.schema import ID, dense_columns, require_columns, vector_columns
from operators.search.index_plan import plan_index, plan_type
from operators.table_meta import TableMeta, read_meta
from operators.tables import Lake, Pin

SCAN_BATCH_ROWS = 65536
SPARSE_INDEX_SUFFIX = ".sparse_index"
DISTANCE = "_distance"


class TableStore:
    """Read access to table `name` in the LanceDB at `uri`, at one version for its whole life: the serving
    version when opened (operators/tables.py `snapshot`), or the version or tag `pin` names."""

    def __init__(self, uri: str, name: str, storage: dict | None = None, pin: Pin | None = None) -> None:
        self.ref = Lake(uri, storage).table(name)
        self.uri = uri
        self.name = name
        self.storage = self.ref.lake.storage
        self.dataset = self.ref.snapshot(pin)
        self.version = int(self.dataset.version)
        self.table = self.ref.open()
        self.table.checkout(self.version)
        self.schema: pa.Schema = self.dataset.schema
        self.meta: TableMeta | None = read_meta(self.table.schema)
        self._ids: np.ndarray | None = None
        self._indexes: dict[str, tuple[str, str]] | None = None
        self._rows: int | None = None

    # -- what the table holds ----------------------------------------------------------------
    @property
    def rows(self) -> int:
        if self._rows is None:
            self._rows = self.dataset.count_rows()
        return self._rows

    def has(self, column: str) -> bool:
        return column in self.schema.names

    def dense_columns(self) -> list[str]:
        """`dense` first, then `dense_<d>` from the largest nested size to the smallest."""
        return dense_columns(self.schema)

    def vector_columns(self) -> list[str]:
        """Every stored vector column: dense ones, then sparse and colbert when present."""
        return vector_columns(self.schema)

    def dim(self, column: str) -> int:
        return self.schema.field(column).type.list_size

    def require(self, column: str) -> None:
        require_columns(self.schema, [column], f"table {self.name!r}", vectors=True)

    # -- reads ---------------------------------------------------------------------------------
    def ids(self) -> np.ndarray:
        """Every row's id, by position."""
        if self._ids is None:
            column = self.dataset.to_table(columns=[ID]).column(ID)
            self._ids = np.asarray(column.to_pylist(), dtype=object)
        return self._ids

    def scan(self, columns: list[str], batch_size: int = SCAN_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The table's rows in position order, in batches."""
        yield from self.dataset.to_batches(columns=columns, batch_size=batch_size, scan_in_order=True)

    def take(self, positions: np.ndarray, columns: list[str]) -> pa.Table:
        """Rows at `positions`, in the order given."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return self.schema.empty_table().select(columns)
        return self.dataset.take(positions, columns=columns)

    def vector_index(self, column: str) -> tuple[str, str] | None:
        """(index type, distance type) of the ANN index on `column`, None when it has none."""
        if self._indexes is None:
            self._indexes = {}
            for config in self.table.list_indices():
                if len(config.columns) == 1:
                    stats = self.table.index_stats(config.name)
                    if stats is not None and stats.distance_type:
                        self._indexes[config.columns[0]] = (stats.index_type, stats.distance_type)
        return self._indexes.get(column)

    def vector_search(
        self,
        column: str,
        query: np.ndarray,
        limit: int,
        columns: list[str],
        exact: bool = False,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        distance: str | None = None,
    ) -> pa.Table:
        """LanceDB's nearest neighbours by dot product (vectors are unit length), with the ANN index when one
        exists and `exact` is False (search parameters from the index plan unless given). Returns `columns`
        of the hits; callers rescore them exactly. `distance="hamming"` searches packed bits (a uint8 query)."""
        index = None if exact else self.vector_index(column)
        # an index's metric (l2, cosine) ranks unit vectors like dot: search with it, rescore with dot
        metric = distance or (index[1] if index else "dot")
        vector = np.asarray(query, dtype=np.uint8 if distance == "hamming" else np.float32)
        builder = (
            self.table.search(vector, vector_column_name=column)
            .distance_type(metric)
            .limit(limit)
            .select(list(dict.fromkeys([*columns, DISTANCE])))  # naming it keeps Lance from warning about it
        )
        if exact:
            builder = builder.bypass_vector_index()
        elif index:
            plan = plan_index(column, self.rows, self.dim(column), plan_type(index[0]))
            nprobes = nprobes or plan.nprobes
            refine_factor = refine_factor or plan.refine_factor
        if nprobes:
            builder = builder.nprobes(nprobes)
        if refine_factor:
            builder = builder.refine_factor(refine_factor)

        return builder.to_arrow().select(columns)

    def sparse_index_uri(self) -> str:
        """Where this table's sparse inverted index lives: next to the table in the same database."""
        return f"{self.uri.rstrip('/')}/{self.name}{SPARSE_INDEX_SUFFIX}"
