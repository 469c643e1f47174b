"""Search one table in every mode: dense (any column, optionally through the Matryoshka funnel), sparse,
ColBERT and hybrid, all returning exact BGE-M3 scores for what they return.

- dense: LanceDB vector search on `dense` or `dense_<d>` (the ANN index when one exists, unless `exact`);
  scores recomputed from the returned vectors, so an approximate index never changes a reported score.
- quantised columns (`embed --quantize`): `<col>_bin` by Hamming distance (LanceDB), `<col>_int8` by the
  dot product with the dequantised rows (operators/search/quantized.py); scores are those of the column.
- funnel: shortlist with a small `dense_<d>` or a quantised column (`dense_bin`, `dense_64_bin`,
  `dense_int8`), re-rank the shortlist with the float query against `--column` (`dense` by default; an
  `_int8` column re-ranks on the int8 codes). A quantised shortlist is k x `rescore_multiplier` rows.
- sparse: the persisted inverted index (operators/search/sparse_index.py).
- colbert and hybrid: candidates = union of the dense and sparse shortlists (as in BGE-M3's paper, where
  multi-vector and hybrid scores re-rank a first-stage shortlist); each candidate gets its exact dense,
  sparse and ColBERT scores from the stored columns; colbert ranks by MaxSim, hybrid by the weighted sum
  (or RRF).
- auto: one of the above per query, chosen by the routing rule the table's metadata keeps (`evaluate
  --tune-routing`), else the default rule (operators/search/routing.py); then exactly that mode's search.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pyarrow as pa

from operators import scoring
from operators.colbert_codec import scale_column
from operators.errors import UsageError
from operators.quantize import split_quantized_name
from operators.schema import COLBERT, DENSE, ID, SPARSE, dense_column, is_blank, is_dense_column
from operators.scoring import COLBERT_MODE, DENSE_MODE, SPARSE_MODE, Fusion, QueryVectors, top_k
from operators.search.quantized import DEFAULT_RESCORE_MULTIPLIER, column_scores, quantized_rows
from operators.search.routing import Route, RoutingRule, TermStats, default_rule, query_features
from operators.search.sparse_index import SparseIndex, open_sparse_index
from operators.search.store import TableStore
from operators.table_meta import read_routing
from operators.tables import Pin
from operators.vectors import as_matrix

log = logging.getLogger(__name__)


class SearchMode(StrEnum):
    DENSE = DENSE_MODE
    SPARSE = SPARSE_MODE
    COLBERT = COLBERT_MODE
    HYBRID = "hybrid"
    AUTO = "auto"  # per query, by the table's routing rule


COLBERT_SCALE = scale_column(COLBERT)  # int8 ColBERT's per-token scales (operators/colbert_codec.py)
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
    """`64` -> `dense_64`; nested and quantised columns (`dense_64`, `dense_bin`, `dense_64_int8`) as given."""
    if funnel is None or funnel == "":
        return None
    name = dense_column(int(funnel)) if str(funnel).isdigit() else str(funnel)
    base, precision = split_quantized_name(name)
    if not is_dense_column(base) or (name == DENSE and precision is None):
        msg = (f"--funnel takes a nested column (dense_<d>) or its size, or a quantised column (dense_bin, "
               f"dense_<d>_bin, dense_int8, ...), got {funnel!r}")
        raise ValueError(msg)
    return name


def check_dense_column(column: str) -> str:
    """A dense column's name, float (`dense`, `dense_<d>`) or quantised (`dense_bin`, `dense_<d>_int8`)."""
    if not is_dense_column(split_quantized_name(column)[0]):
        msg = f"--column takes dense, dense_<d> or their _int8 / _bin copies, got {column!r}"
        raise ValueError(msg)
    return column


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
        rescore_multiplier: int | None = None,
        pin: Pin | None = None,
    ) -> None:
        for name, value in (("--shortlist", shortlist), ("--funnel-shortlist", funnel_shortlist),
                            ("--rescore-multiplier", 1 if rescore_multiplier is None else rescore_multiplier)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be at least 1, got {value!r}"
                raise UsageError(msg)
        self.funnel_shortlist = funnel_shortlist
        self.rescore_multiplier = rescore_multiplier
        self.store = TableStore(uri, table, storage, pin)
        self.model = model
        self.shortlist = shortlist
        self.exact = exact
        self.nprobes = nprobes
        self.refine_factor = refine_factor
        self.persist_index = persist_index
        self._encoder = None
        self._sparse_index: SparseIndex | None = None
        self._term_stats: TermStats | None = None

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

    # -- routing -------------------------------------------------------------------------------
    @property
    def term_stats(self) -> TermStats | None:
        """Document frequencies of the sparse tokens (from the sparse index), None without a sparse column."""
        if self._term_stats is None and self.store.has(SPARSE):
            self._term_stats = TermStats.from_index(self.sparse_index)
        return self._term_stats

    def features(self, text: str, query: QueryVectors) -> dict[str, float]:
        return query_features(text, query, self.term_stats)

    def routing_rule(self, weights: Sequence[float] | None = None) -> RoutingRule:
        """The rule the version read keeps, when it was tuned with this table's model and its routes' modes are
        stored; else the default rule (the hybrid at `weights`, or the one mode there is)."""
        model_id = self.store.meta.model_id if self.store.meta is not None else None
        modes = self.available_modes()
        stored = read_routing(self.store.schema)
        if stored is not None:
            try:
                rule = RoutingRule.from_dict(stored)
            except (ValueError, KeyError, TypeError) as error:
                log.warning("table %s: ignoring its routing rule (%s); using the default rule", self.store.name, error)
            else:
                missing = [mode for mode in rule.modes if mode not in modes]
                if rule.model_id != model_id:
                    log.warning("table %s: its routing rule was tuned for model %s, the table holds %s; using the "
                                "default rule (run evaluate --tune-routing again)", self.store.name, rule.model_id,
                                model_id)
                elif missing:
                    log.warning("table %s: its routing rule routes to %s, which it lacks; using the default rule",
                                self.store.name, ", ".join(missing))
                else:
                    return rule
        return default_rule(modes, weights, model_id)

    def route(self, text: str, query: QueryVectors | None = None, weights: Sequence[float] | None = None) -> Route:
        """The route the table's rule picks for this query text (`query`: its vectors, when already encoded)."""
        vectors = query if query is not None else self.encode([text])[0]
        return self.routing_rule(weights).choose(self.features(text, vectors))

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
        if mode == SearchMode.AUTO:
            if not isinstance(query, str):
                msg = "--mode auto routes a query text; searching like a stored item takes a fixed --mode"
                raise UsageError(msg)
            if fusion != Fusion.WEIGHTED:
                msg = "--mode auto uses weighted fusion, as its rule was tuned; --fusion rrf needs --mode hybrid"
                raise UsageError(msg)
        else:
            self._check_mode(mode)
        vectors = self.encode([query])[0] if isinstance(query, str) else query
        if mode == SearchMode.AUTO:
            route = self.route(query, vectors, weights)
            log.info("--mode auto: %s", route.label)
            return self.search(vectors, k=k, **route.search_options())
        if mode == DENSE_MODE:
            column = check_dense_column(column or DENSE)
            funnel_column = resolve_funnel_column(funnel)
            if funnel_column is not None:
                return self.funnel(vectors, funnel_column, k, column)
            return self.dense(vectors, column, k)
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
        rows = self._first_stage(column, query, k, [ID, column])
        ids = np.asarray(rows.column(ID).to_pylist(), dtype=object)
        return hits(ids, self._scores(column, rows.column(column), query), k)

    def funnel(self, query: QueryVectors, small: str, k: int, full: str = DENSE) -> list[dict]:
        """Shortlist rows by the small column (nested or quantised; `funnel_shortlist_for` rows), return the
        k best by the full one's scores (float, or int8 codes with the float query)."""
        self.store.require(small)
        self.store.require(full)
        rows = self._first_stage(small, query, self.funnel_shortlist_for(small, k), [ID, full])
        ids = np.asarray(rows.column(ID).to_pylist(), dtype=object)
        return hits(ids, self._scores(full, rows.column(full), query), k)

    def funnel_shortlist_for(self, small: str, k: int) -> int:
        """Rows a funnel's first stage keeps: k x `rescore_multiplier` (default per precision for a quantised
        column, quantized.DEFAULT_RESCORE_MULTIPLIER), else `funnel_shortlist` for a nested float column."""
        precision = split_quantized_name(small)[1]
        if self.rescore_multiplier is not None:
            return k * self.rescore_multiplier
        if precision is not None:
            return k * DEFAULT_RESCORE_MULTIPLIER[precision]
        return max(self.funnel_shortlist, k)

    def sparse(self, query: QueryVectors, k: int) -> list[dict]:
        index = self.sparse_index
        positions, scores = index.search(query.sparse, k)
        return [{"id": str(index.ids[p]), "score": float(s)} for p, s in zip(positions, scores, strict=True)]

    def candidates(self, query: QueryVectors, dense_positions: np.ndarray | None = None) -> Candidates:
        """Union of the dense and sparse shortlists with every available mode's exact score.

        `dense_positions` replaces the dense first stage (evaluation passes exact-scan results)."""
        columns = [ID, *(column for column in (DENSE, SPARSE, COLBERT, COLBERT_SCALE) if self.store.has(column))]
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
            scales = rows.column(COLBERT_SCALE) if self.store.has(COLBERT_SCALE) else None  # int8 ColBERT
            scores[COLBERT_MODE] = scoring.colbert_scores(query.colbert, rows.column(COLBERT), scales)
        return Candidates(ids, scores)

    def _first_stage(self, column: str, query: QueryVectors, limit: int, columns: list[str]) -> pa.Table:
        """`columns` of the `limit` best rows by one dense column, float or quantised."""
        base, precision = split_quantized_name(column)
        if precision is None:
            return self._vector_search(column, query, limit, columns)
        return quantized_rows(self.store, column, self._query_vector(base, query), limit, columns)

    def _scores(self, column: str, values: pa.ChunkedArray, query: QueryVectors) -> np.ndarray:
        """Exact scores of the float query against rows of a dense column (float or quantised)."""
        base, precision = split_quantized_name(column)
        if precision is None:
            return scoring.dense_scores(self._query_vector(column, query), as_matrix(values))
        return column_scores(self.store, column, values, self._query_vector(base, query))

    @staticmethod
    def _query_vector(column: str, query: QueryVectors) -> np.ndarray:
        if column not in query.dense:
            msg = f"the query encoder gives no {column!r}; was the table written with other nested sizes?"
            raise ValueError(msg)
        return query.dense[column]

    def _vector_search(self, column: str, query: QueryVectors, limit: int, columns: list[str]) -> pa.Table:
        self._query_vector(column, query)
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

