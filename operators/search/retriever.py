"""Search one table in every mode: dense (any column, optionally through the Matryoshka funnel), sparse,
ColBERT and hybrid, all returning exact BGE-M3 scores for what they return.

- dense: LanceDB vector search on `dense` or `dense_<d>` (the ANN index when one exists, unless `exact`);
  scores recomputed from the returned vectors, so an approximate index never changes a reported score.
- funnel: shortlist with a small `dense_<d>`, re-rank the shortlist with `dense`.
- sparse: the persisted inverted index (operators/search/sparse_index.py).
- colbert and hybrid: candidates = union of the dense and sparse shortlists (as in BGE-M3's paper, where
  multi-vector and hybrid scores re-rank a first-stage shortlist); each candidate gets its exact dense,
  sparse and ColBERT scores from the stored columns; colbert ranks by MaxSim, hybrid by the weighted sum
  (or RRF).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pyarrow as pa

from operators import scoring
from operators.errors import UsageError
from operators.schema import COLBERT, DENSE, ID, SPARSE, dense_column, is_blank, is_dense_column
from operators.scoring import COLBERT_MODE, DENSE_MODE, SPARSE_MODE, Fusion, QueryVectors, top_k
from operators.search.sparse_index import SparseIndex, open_sparse_index
from operators.search.store import TableStore
from operators.vectors import as_matrix


class SearchMode(StrEnum):
    DENSE = DENSE_MODE
    SPARSE = SPARSE_MODE
    COLBERT = COLBERT_MODE
    HYBRID = "hybrid"


DEFAULT_SHORTLIST = 100  # per first stage (dense, sparse) before ColBERT / hybrid re-ranking
# The funnel re-ranks a shortlist of the small column alone, so it needs a longer one: on the 1M-vector benchmark
# with a hard spectrum (39% of the variance in the first 64 of 384 dims) 400 kept 0.995 of exact top-10.
DEFAULT_FUNNEL_SHORTLIST = 400


@dataclass
class Candidates:
    """Rows a query's first stage found, with each mode's exact score."""

    ids: np.ndarray
    scores: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.ids.size)


def hits(ids: np.ndarray, scores: np.ndarray, k: int) -> list[dict]:
    best = top_k(ids, scores, k)
    return [{"id": str(ids[i]), "score": float(scores[i])} for i in best]


def resolve_funnel_column(funnel: str | int | None) -> str | None:
    if funnel is None or funnel == "":
        return None
    name = dense_column(int(funnel)) if str(funnel).isdigit() else str(funnel)
    if not is_dense_column(name) or name == DENSE:
        msg = f"--funnel takes a nested column (dense_<d>) or its size, got {funnel!r}"
        raise ValueError(msg)
    return name


class Retriever:
    """Searches one table; holds the query encoder and the sparse index between queries."""

    def __init__(
        self,
        uri: str,
        table: str,
        model: str | None = None,
        shortlist: int = DEFAULT_SHORTLIST,
        exact: bool = False,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        persist_index: bool = True,
        funnel_shortlist: int = DEFAULT_FUNNEL_SHORTLIST,
        storage: dict | None = None,
    ) -> None:
        for name, value in (("--shortlist", shortlist), ("--funnel-shortlist", funnel_shortlist)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be at least 1, got {value!r}"
                raise UsageError(msg)
        self.funnel_shortlist = funnel_shortlist
        self.store = TableStore(uri, table, storage)
        self.model = model
        self.shortlist = shortlist
        self.exact = exact
        self.nprobes = nprobes
        self.refine_factor = refine_factor
        self.persist_index = persist_index
        self._encoder = None
        self._sparse_index: SparseIndex | None = None

    # -- queries -------------------------------------------------------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            from operators.search.queries import load_query_encoder

            self._encoder = load_query_encoder(self.store, self.model)
        return self._encoder

    def encode(self, texts: Sequence[str]) -> list[QueryVectors]:
        from operators.search.queries import encode_queries

        return encode_queries(self.encoder, texts)

    @property
    def sparse_index(self) -> SparseIndex:
        if self._sparse_index is None:
            self._sparse_index, _action = open_sparse_index(self.store, persist=self.persist_index)
        return self._sparse_index

    def available_modes(self) -> list[str]:
        return [mode for mode, column in ((DENSE_MODE, DENSE), (SPARSE_MODE, SPARSE), (COLBERT_MODE, COLBERT))
                if self.store.has(column)]

    # -- one entry point -----------------------------------------------------------------------
    def search(
        self,
        query: str | QueryVectors,
        mode: str = SearchMode.DENSE,
        column: str | None = None,
        k: int = 10,
        weights: Sequence[float] | None = None,
        fusion: str = Fusion.WEIGHTED,
        funnel: str | int | None = None,
    ) -> list[dict]:
        """The k best rows for one query: [{"id", "score"}], best first, ties broken by id."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            msg = f"--k must be at least 1, got {k!r}"
            raise UsageError(msg)
        if mode not in list(SearchMode):
            msg = f"unknown mode {mode!r} (choose from {', '.join(SearchMode)})"
            raise UsageError(msg)
        for option, value in (("--column", column), ("--funnel", funnel)):
            if value is not None and mode != DENSE_MODE:
                msg = f"{option} applies to dense mode only, not {mode}"
                raise UsageError(msg)
        if isinstance(query, str) and is_blank(query):
            msg = "--query is empty (nothing but whitespace or invisible characters): there is nothing to search for"
            raise UsageError(msg)
        self._check_mode(mode)
        vectors = self.encode([query])[0] if isinstance(query, str) else query
        if mode == DENSE_MODE:
            funnel_column = resolve_funnel_column(funnel)
            if funnel_column is not None:
                return self.funnel(vectors, funnel_column, k, column or DENSE)
            return self.dense(vectors, column or DENSE, k)
        if mode == SPARSE_MODE:
            return self.sparse(vectors, k)
        candidates = self.candidates(vectors)
        if mode == COLBERT_MODE:
            return hits(candidates.ids, candidates.scores[COLBERT_MODE], k)
        weights_by_mode = scoring.mode_weights(weights, self.available_modes())
        return hits(candidates.ids, scoring.fuse(candidates.ids, candidates.scores, weights_by_mode, fusion), k)

    def _check_mode(self, mode: str) -> None:
        needed = {SPARSE_MODE: [SPARSE], COLBERT_MODE: [COLBERT, DENSE], SearchMode.HYBRID: [DENSE]}.get(mode, [])
        missing = [column for column in needed if not self.store.has(column)]
        if mode == SearchMode.HYBRID and not (self.store.has(SPARSE) or self.store.has(COLBERT)):
            missing.append("sparse or colbert")
        if missing:
            msg = (f"{mode} search needs column(s) {', '.join(missing)}, which table {self.store.name!r} lacks "
                   f"(it has {', '.join(self.store.vector_columns()) or 'no vector columns'}); "
                   "embed with BGE-M3 for sparse/colbert/hybrid")
            raise ValueError(msg)

    # -- modes ---------------------------------------------------------------------------------
    def dense(self, query: QueryVectors, column: str, k: int) -> list[dict]:
        self.store.require(column)
        rows = self._vector_search(column, query, k, [ID, column])
        ids = np.asarray(rows.column(ID).to_pylist(), dtype=object)
        return hits(ids, scoring.dense_scores(query.dense[column], as_matrix(rows.column(column))), k)

    def funnel(self, query: QueryVectors, small: str, k: int, full: str = DENSE) -> list[dict]:
        """Shortlist `self.funnel_shortlist` rows by the small nested column, return the k best by the full one."""
        self.store.require(small)
        self.store.require(full)
        rows = self._vector_search(small, query, max(self.funnel_shortlist, k), [ID, full])
        ids = np.asarray(rows.column(ID).to_pylist(), dtype=object)
        return hits(ids, scoring.dense_scores(query.dense[full], as_matrix(rows.column(full))), k)

    def sparse(self, query: QueryVectors, k: int) -> list[dict]:
        index = self.sparse_index
        positions, scores = index.search(query.sparse, k)
        return [{"id": str(index.ids[p]), "score": float(s)} for p, s in zip(positions, scores, strict=True)]

    def candidates(self, query: QueryVectors, dense_positions: np.ndarray | None = None) -> Candidates:
        """Union of the dense and sparse shortlists with every available mode's exact score.

        `dense_positions` replaces the dense first stage (evaluation passes exact-scan results)."""
        columns = [ID, *(column for column in (DENSE, SPARSE, COLBERT) if self.store.has(column))]
        parts = []
        if dense_positions is not None:
            parts.append(self.store.take(dense_positions, columns))
        else:
            parts.append(self._vector_search(DENSE, query, self.shortlist, columns))
        if self.store.has(SPARSE) and query.sparse is not None:
            positions, _ = self.sparse_index.search(query.sparse, self.shortlist)
            parts.append(self.store.take(positions, columns))
        rows = _unique_rows(pa.concat_tables([part.select(columns) for part in parts]))
        ids = np.asarray(rows.column(ID).to_pylist(), dtype=object)
        scores = {DENSE_MODE: scoring.dense_scores(query.dense[DENSE], as_matrix(rows.column(DENSE)))}
        if self.store.has(SPARSE) and query.sparse is not None:
            scores[SPARSE_MODE] = scoring.sparse_scores(query.sparse, rows.column(SPARSE))
        if self.store.has(COLBERT) and query.colbert is not None:
            scores[COLBERT_MODE] = scoring.colbert_scores(query.colbert, rows.column(COLBERT))
        return Candidates(ids, scores)

    def _vector_search(self, column: str, query: QueryVectors, limit: int, columns: list[str]) -> pa.Table:
        if column not in query.dense:
            msg = f"the query encoder gives no {column!r}; was the table written with other nested sizes?"
            raise ValueError(msg)
        return self.store.vector_search(column, query.dense[column], limit, columns, exact=self.exact,
                                        nprobes=self.nprobes, refine_factor=self.refine_factor)


def _unique_rows(rows: pa.Table) -> pa.Table:
    """First occurrence of each id."""
    ids = rows.column(ID).to_pylist()
    seen: set[str] = set()
    keep = []
    for i, doc in enumerate(ids):
        if doc not in seen:
            seen.add(doc)
            keep.append(i)
    return rows.take(keep)

