"""An inverted index over the `sparse` column: exact BGE-M3 lexical-matching scores without a full scan.

LanceDB has no sparse vector type or index (lancedb#1032), so we keep our own: postings in CSR form
(for each token id, the positions of the rows that contain it and their weights), built with numpy in
one pass over the column. A query touches only the postings of its own tokens and sums
w_q[t] * w_p[t] per row, which is exactly BGE-M3's lexical score for every row that shares a token.

Persisted next to the table as `<T>.sparse_index/v<version>/` (numpy arrays + the ids; a local folder or
the same object store as the table), tagged with the table version it was built at; the folders of versions
no tag holds are dropped (a reader pinned to an older version does not cost the serving version its index).
Opening the index for a newer version updates it: when the table only gained rows since (appends, new keys
upserted), just the new fragments are read and merged in; any other change (updates, deletes, compaction)
rebuilds it. A version's meta.json is written last, and a folder without it is never read, so a reader
never sees half an index.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from operators.schema import ID, SPARSE
from operators.scoring import SparseVector, top_k
from operators.vectors import ragged_lengths, sparse_children

log = logging.getLogger(__name__)

FORMAT = 1
ARRAYS = ("terms", "offsets", "docs", "weights")
META_FILE = "meta.json"
IDS_FILE = "ids.arrow"


@dataclass
class SparseIndex:
    """CSR postings: rows holding token `terms[i]` are `docs[offsets[i]:offsets[i+1]]`, weights alongside."""

    terms: np.ndarray  # int64, sorted unique token ids
    offsets: np.ndarray  # int64, len(terms) + 1
    docs: np.ndarray  # int64 row positions, sorted within each token
    weights: np.ndarray  # float32
    ids: np.ndarray  # object: the id of each row position
    version: int  # table version the index reflects
    fragments: list[tuple[int, int, str]]  # (fragment id, physical rows, deletion file) at that version

    @property
    def rows(self) -> int:
        return int(self.ids.size)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_postings(
        cls, tokens: np.ndarray, docs: np.ndarray, weights: np.ndarray, ids: np.ndarray, version: int,
        fragments: list[tuple[int, int, str]],
    ) -> SparseIndex:
        """CSR from unsorted (token, row, weight) triples; a token repeated in a row keeps its max weight."""
        tokens = np.asarray(tokens, dtype=np.int64)
        docs = np.asarray(docs, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        order = np.lexsort((-weights, docs, tokens))
        tokens, docs, weights = tokens[order], docs[order], weights[order]
        first = np.ones(tokens.size, dtype=bool)
        first[1:] = (tokens[1:] != tokens[:-1]) | (docs[1:] != docs[:-1])
        tokens, docs, weights = tokens[first], docs[first], weights[first]
        positive = weights > 0
        tokens, docs, weights = tokens[positive], docs[positive], weights[positive]
        terms, starts = np.unique(tokens, return_index=True)
        offsets = np.append(starts, tokens.size).astype(np.int64)
        return cls(terms, offsets, docs, weights, np.asarray(ids, dtype=object), version, fragments)

    @classmethod
    def build(cls, store, batch_rows: int = 65536) -> SparseIndex:
        """Read the table's `sparse` column once and invert it."""
        store.require(SPARSE)
        tokens, docs, weights, ids = _read_postings(store.scan([ID, SPARSE], batch_rows), start=0)
        return cls.from_postings(tokens, docs, weights, ids, store.version, fragment_signature(store.dataset))

    def extended(self, store, batch_rows: int = 65536) -> SparseIndex | None:
        """This index plus the rows appended since, or None when the table changed in another way."""
        now = fragment_signature(store.dataset)
        if now[: len(self.fragments)] != self.fragments:
            return None
        new_fragments = [fragment for fragment, _rows, _deletions in now[len(self.fragments):]]
        if not new_fragments:
            return SparseIndex(self.terms, self.offsets, self.docs, self.weights, self.ids, store.version, now)
        fragments = [store.dataset.get_fragment(fragment_id) for fragment_id in new_fragments]
        scanner = store.dataset.scanner(columns=[ID, SPARSE], fragments=fragments, batch_size=batch_rows,
                                        scan_in_order=True)
        tokens, docs, weights, ids = _read_postings(scanner.to_batches(), start=self.rows)
        old_tokens = np.repeat(self.terms, np.diff(self.offsets))
        return SparseIndex.from_postings(
            np.concatenate([old_tokens, tokens]),
            np.concatenate([self.docs, docs]),
            np.concatenate([self.weights, weights]),
            np.concatenate([self.ids, ids]),
            store.version,
            now,
        )

    # -- querying ------------------------------------------------------------------------------
    def scores(self, query: SparseVector) -> np.ndarray:
        """Lexical-matching score of the query against every row (0 where no token is shared)."""
        if self.terms.size == 0 or len(query) == 0:
            return np.zeros(self.rows, dtype=np.float64)
        found = np.minimum(np.searchsorted(self.terms, query.indices), self.terms.size - 1)
        present = self.terms[found] == query.indices
        slices = [(self.offsets[f], self.offsets[f + 1], w)
                  for f, w in zip(found[present], query.values[present], strict=True)]
        if not slices:
            return np.zeros(self.rows, dtype=np.float64)
        docs = np.concatenate([self.docs[a:b] for a, b, _w in slices])
        contributions = np.concatenate([self.weights[a:b].astype(np.float64) * w for a, b, w in slices])
        return np.bincount(docs, weights=contributions, minlength=self.rows)

    def search(self, query: SparseVector, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and scores of the k best rows sharing at least one token with the query."""
        scores = self.scores(query)
        matching = np.flatnonzero(scores > 0)
        best = matching[top_k(self.ids[matching], scores[matching], k)]
        return best, scores[best]

    # -- persistence ---------------------------------------------------------------------------
    def save(self, location: IndexLocation) -> str:
        """Write as `<location>/v<version>/`; meta.json goes last and marks the folder complete (object
        stores have no atomic folder rename). A version another process completed first is kept."""
        folder = location.version_path(self.version)
        if location.fs.exists(f"{folder}/{META_FILE}"):
            return folder
        location.fs.makedirs(folder, exist_ok=True)
        for name in ARRAYS:
            buffer = io.BytesIO()
            np.save(buffer, getattr(self, name), allow_pickle=False)
            location.write(f"{folder}/{name}.npy", buffer.getvalue())
        ids = pa.table({ID: pa.array(self.ids.tolist(), type=pa.string())})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, ids.schema) as writer:
            writer.write_table(ids)
        location.write(f"{folder}/{IDS_FILE}", sink.getvalue().to_pybytes())
        meta = {"format": FORMAT, "version": self.version, "rows": self.rows, "terms": int(self.terms.size),
                "postings": int(self.docs.size), "fragments": self.fragments}
        location.write(f"{folder}/{META_FILE}", json.dumps(meta).encode())
        return folder

    @classmethod
    def load(cls, location: IndexLocation, version: int) -> SparseIndex:
        folder = location.version_path(version)
        meta = json.loads(location.read(f"{folder}/{META_FILE}"))
        if meta.get("format") != FORMAT:
            msg = f"sparse index {folder} has format {meta.get('format')}, expected {FORMAT}"
            raise ValueError(msg)
        arrays = {name: np.load(io.BytesIO(location.read(f"{folder}/{name}.npy")), allow_pickle=False)
                  for name in ARRAYS}
        ids = pa.ipc.open_file(pa.BufferReader(location.read(f"{folder}/{IDS_FILE}"))).read_all().column(ID)
        return cls(**arrays, ids=np.asarray(ids.to_pylist(), dtype=object), version=int(meta["version"]),
                   fragments=[tuple(f) for f in meta["fragments"]])


@dataclass
class IndexLocation:
    """Where a table's sparse index lives (a local folder or an object-store prefix), through fsspec."""

    fs: object
    root: str

    @classmethod
    def open(cls, uri: str, storage: dict | None = None) -> IndexLocation:
        from operators.storage import as_settings, filesystem

        fs, root = filesystem(uri, as_settings(storage))
        return cls(fs, root.rstrip("/"))

    def version_path(self, version: int) -> str:
        return f"{self.root}/v{version}"

    def write(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "wb") as handle:
            handle.write(data)

    def read(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as handle:
            return handle.read()

    def versions(self) -> list[int]:
        """Versions whose folder is complete (has its meta.json)."""
        if not self.fs.exists(self.root):
            return []
        names = [os.path.basename(path.rstrip("/")) for path in self.fs.ls(self.root, detail=False)]
        found = sorted(int(name[1:]) for name in names if name.startswith("v") and name[1:].isdigit())
        return [v for v in found if self.fs.exists(f"{self.version_path(v)}/{META_FILE}")]

    def drop(self, versions: list[int]) -> None:
        for version in versions:
            self.fs.rm(self.version_path(version), recursive=True)


def stored_versions(index_uri: str, storage: dict | None = None) -> list[int]:
    return IndexLocation.open(index_uri, storage).versions()


def open_sparse_index(store, persist: bool = True) -> tuple[SparseIndex, str]:
    """The index for the store's table version: loaded if stored, else extended from an older one when the
    table only grew, else rebuilt; saved when `persist`. Returns it and what was done."""
    location = IndexLocation.open(store.sparse_index_uri(), store.storage)
    versions = location.versions()
    if store.version in versions:
        return SparseIndex.load(location, store.version), "loaded"
    older = [v for v in versions if v < store.version]
    index, action = None, "built"
    if older:
        index = SparseIndex.load(location, older[-1]).extended(store)
        action = "updated" if index is not None else "rebuilt"
    if index is None:
        index = SparseIndex.build(store)
    log.info("sparse index of %s %s at version %d (%d rows, %d postings)", store.name, action, store.version,
             index.rows, index.docs.size)
    if persist:
        try:
            index.save(location)
            location.drop([v for v in versions if v not in kept_versions(store.ref, store.version)])
        except OSError as error:  # a read-only lake still gets searched, with an index rebuilt per process
            log.warning("could not save the sparse index to %s (%s); using it from memory", location.root, error)
    return index, action


def kept_versions(ref, reading: int | None = None) -> set[int]:
    """Versions of table `ref` whose sparse index is worth keeping: the one being read, the latest, and every
    tagged one (the serving version, retained runs, user pins; operators/serving.py)."""
    latest = ref.dataset()
    tagged = {int(tag["version"]) for tag in latest.tags.list().values()}
    return tagged | {latest.version} | ({reading} if reading is not None else set())


def fragment_signature(dataset) -> list[tuple[int, int, str]]:
    """What identifies the rows of a dataset version: each fragment's id, row count and deletion file."""
    signature = []
    for fragment in dataset.get_fragments():
        meta = fragment.metadata
        deletion = meta.deletion_file
        deletion_key = "" if deletion is None else f"{deletion.id}:{deletion.read_version}"
        signature.append((int(fragment.fragment_id), int(meta.physical_rows), deletion_key))
    return signature


def _read_postings(batches, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(token, row position, weight) triples and ids of the batches, positions counted from `start`."""
    tokens, docs, weights, ids = [], [], [], []
    position = start
    for batch in batches:
        column = batch.column(batch.schema.get_field_index(SPARSE))
        indices, values = sparse_children(column)
        lengths = ragged_lengths(indices)
        tokens.append(np.asarray(indices.flatten().to_numpy(zero_copy_only=False), dtype=np.int64))
        weights.append(np.asarray(values.flatten().to_numpy(zero_copy_only=False), dtype=np.float32))
        docs.append(np.repeat(np.arange(position, position + len(batch), dtype=np.int64), lengths))
        ids.append(np.asarray(batch.column(batch.schema.get_field_index(ID)).to_pylist(), dtype=object))
        position += len(batch)
    if not tokens:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=object)
    return np.concatenate(tokens), np.concatenate(docs), np.concatenate(weights), np.concatenate(ids)
