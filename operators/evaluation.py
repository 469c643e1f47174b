"""Retrieval evaluation of one table on labelled queries: every stored column and mode, the funnel at
each nested size, every quantised copy (`embed --quantize`: `<col>_int8`, `<col>_bin`) alone and as a
funnel's first stage, the hybrid (optionally with weights tuned on the qrels), a plot of quality against
nested size and bytes per vector, and the smallest setting within 1% of `dense`'s nDCG@k.

Queries are encoded once with the table's encoder (query prompt). Dense columns are ranked by an exact
scan (the representation's own quality, independent of any ANN index) unless `use_index`; sparse by the
inverted index; ColBERT and hybrid re-rank the union of the exact dense and the sparse shortlists with
exact scores, exactly as `embedlake search` does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators import scoring
from operators.colbert_codec import BINARY, bytes_per_token, precision_of
from operators.errors import UsageError
from operators.metrics import evaluate_run, metric_name, qrels_from_rows
from operators.quantize import quantized_columns, split_quantized_name
from operators.schema import COLBERT, DENSE, SPARSE, nested_dim, require_columns
from operators.scoring import Fusion, top_k
from operators.search.dense import TopN, exact_topn, scan_topn
from operators.search.documents import PASSAGE_DEPTH, documents_run, is_passage_table
from operators.search.quantized import table_searcher
from operators.search.retriever import Retriever, SearchMode, hits
from operators.vectors import as_matrix, ragged_lengths, sparse_children

log = logging.getLogger(__name__)

QUERY_ID = "query_id"
QUERY_TEXT = "text"
DOC_ID = "doc_id"
RELEVANCE = "relevance"
BYTES_SAMPLE_ROWS = 2000
TUNE_STEP = 0.1
WITHIN = 0.01  # the report names the smallest setting whose nDCG@k is within 1% of full-precision `dense`


@dataclass
class LabelledQueries:
    ids: list[str]
    texts: list[str]
    qrels: dict[str, dict[str, int]]


def load_labelled_queries(queries_path: str, qrels_path: str, limit: int | None = None) -> LabelledQueries:
    """Queries (query_id, text) and qrels (query_id, doc_id, relevance) from Parquet."""
    queries = _read(queries_path, [QUERY_ID, QUERY_TEXT])
    qrels = _read(qrels_path, [QUERY_ID, DOC_ID, RELEVANCE])
    ids = [str(value) for value in queries.column(QUERY_ID).to_pylist()]
    texts = queries.column(QUERY_TEXT).to_pylist()
    if any(text is None for text in texts):
        msg = f"{queries_path}: some queries have no text"
        raise ValueError(msg)
    if len(set(ids)) != len(ids):
        msg = f"{queries_path}: query_id values are not unique"
        raise ValueError(msg)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            msg = f"--limit must be a positive integer, got {limit!r}"
            raise UsageError(msg)
        ids, texts = ids[:limit], texts[:limit]
    judged = qrels_from_rows(qrels.column(QUERY_ID).to_pylist(), qrels.column(DOC_ID).to_pylist(),
                             relevance_grades(qrels.column(RELEVANCE), qrels_path))
    if not any(rel > 0 for query_id in ids for rel in judged.get(query_id, {}).values()):
        msg = (f"no query of {queries_path} has a relevant document (relevance > 0) in {qrels_path}: "
               "their query_id values match none of the queries'")
        raise ValueError(msg)
    return LabelledQueries(ids, texts, judged)


def relevance_grades(column: pa.ChunkedArray, path: str) -> list[int]:
    """Relevance labels as integers (0 or less: not relevant); a one-line error naming the first value that is
    not a whole number (a word such as 'high', a NaN, a null, 2.5)."""
    values = column.to_pylist()
    for row, value in enumerate(values):
        whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
        if isinstance(value, bool) or not whole:
            msg = f"{path}: relevance must be whole numbers (0 = not relevant), row {row} has {value!r}"
            raise ValueError(msg)
    return [int(value) for value in values]


def _read(path: str, columns: list[str]):
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:
        msg = f"cannot read {path}: {error}"
        raise ValueError(msg) from error
    require_columns(table.schema, columns, path, f"needs {', '.join(columns)}")
    return table.select(columns)


class Evaluator:
    """Runs every mode of one table over one set of labelled queries."""

    def __init__(self, retriever: Retriever, labelled: LabelledQueries, k: int, use_index: bool = False) -> None:
        self.retriever = retriever
        self.store = retriever.store
        self.labelled = labelled
        self.k = k
        # A passage table is scored by documents, each at its best passage (operators/search/documents.py): every
        # run ranks `depth` passages, of which the k best documents are scored.
        self.passages = is_passage_table(self.store.schema.names)
        self.depth = k * PASSAGE_DEPTH if self.passages else k
        retriever.shortlist = max(retriever.shortlist, self.depth)  # colbert and hybrid re-rank at least depth
        self.use_index = use_index
        started = time.perf_counter()
        self.vectors = retriever.encode(labelled.texts)
        self.runs: dict[str, dict] = {}  # the top-k run of `dense` and `sparse`, kept for routing
        self._candidates: tuple[np.ndarray | None, list] | None = None
        log.info("encoded %d queries in %.1f s", len(labelled.texts), time.perf_counter() - started)

    def score(self, run: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
        return self.evaluate(run, self.labelled.ids).as_dict()

    def evaluate(self, run: dict[str, list[tuple[str, float]]], query_ids: list[str]):
        """The metrics of a run over `query_ids` (by document on a passage table)."""
        return evaluate_run(self.documents(run), self.labelled.qrels, query_ids, self.k)

    def documents(self, run: dict[str, list[tuple[str, float]]]) -> dict[str, list[tuple[str, float]]]:
        """A run as the qrels see it: on a passage table each query's k best documents by their best passage."""
        return documents_run(run, self.k) if self.passages else run

    def query_matrix(self, column: str) -> np.ndarray:
        return np.stack([query.dense[column] for query in self.vectors])

    # -- modes ---------------------------------------------------------------------------------
    def scan(self, column: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-n of every query on a dense column, float or quantised (float queries)."""
        search: TopN = exact_topn if split_quantized_name(column)[1] is None else table_searcher(self.store, column)
        return scan_topn(self.store, column, self.query_matrix(split_quantized_name(column)[0]), n, search=search)

    def dense_run(self, column: str, n: int) -> tuple[dict, np.ndarray]:
        """Top-n per query on one dense column (float or quantised): the run, and the positions (exact scan)."""
        if self.use_index:
            run = {qid: [(h["id"], h["score"]) for h in self.retriever.dense(query, column, n)]
                   for qid, query in zip(self.labelled.ids, self.vectors, strict=True)}
            return run, np.zeros((0, 0), dtype=np.int64)
        positions, scores = self.scan(column, n)
        ids = self.store.ids()
        run = {qid: list(zip(ids[positions[i]].tolist(), scores[i].tolist(), strict=True))
               for i, qid in enumerate(self.labelled.ids)}
        return run, positions

    def funnel_run(self, small: str) -> dict:
        """Shortlist by the exact scan of `small` (nested or quantised; the index with `use_index`), re-rank
        the shortlist by `dense`."""
        if self.use_index:
            return {qid: [(h["id"], h["score"]) for h in self.retriever.funnel(query, small, self.depth)]
                    for qid, query in zip(self.labelled.ids, self.vectors, strict=True)}
        positions, _ = self.scan(small, self.retriever.funnel_shortlist_for(small, self.depth))
        unique, inverse = np.unique(positions, return_inverse=True)
        full = as_matrix(self.store.take(unique, [DENSE]).column(DENSE))
        ids = self.store.ids()
        run = {}
        for i, qid in enumerate(self.labelled.ids):
            rows = inverse.reshape(positions.shape)[i]
            scores = full[rows] @ self.vectors[i].dense[DENSE]
            candidate_ids = ids[positions[i]]
            best = top_k(candidate_ids, scores, self.depth)
            run[qid] = [(str(candidate_ids[b]), float(scores[b])) for b in best]
        return run

    def sparse_run(self) -> dict:
        if SPARSE in self.runs:
            return self.runs[SPARSE]
        index = self.retriever.sparse_index
        run = {}
        for qid, query in zip(self.labelled.ids, self.vectors, strict=True):
            positions, scores = index.search(query.sparse, self.depth)
            run[qid] = [(str(index.ids[p]), float(s)) for p, s in zip(positions, scores, strict=True)]
        self.runs[SPARSE] = run
        return run

    def candidates(self, dense_positions: np.ndarray | None) -> list:
        """Each query's candidates (computed once per first stage: the hybrid entries and routing share them)."""
        if self._candidates is not None and self._candidates[0] is dense_positions:
            return self._candidates[1]
        found = [self.retriever.candidates(query, None if dense_positions is None or not dense_positions.size
                                           else dense_positions[i])
                 for i, query in enumerate(self.vectors)]
        self._candidates = (dense_positions, found)
        return found

    def fused_run(self, candidates: list, weights: dict[str, float], fusion: str) -> dict:
        run = {}
        for qid, found in zip(self.labelled.ids, candidates, strict=True):
            fused = scoring.fuse(found.ids, found.scores, weights, fusion)
            run[qid] = [(h["id"], h["score"]) for h in hits(found.ids, fused, self.depth)]
        return run

    # -- entries of the report ----------------------------------------------------------------
    def dense_entries(self) -> tuple[dict[str, dict], np.ndarray | None]:
        """One entry per dense column, then the funnel at each nested size, then each quantised column
        alone and as a funnel's first stage (`funnel_<col>`, re-ranked by `dense`); also the exact `dense`
        shortlist positions, the first stage the ColBERT and hybrid entries re-rank."""
        results: dict[str, dict] = {}
        dense_positions = None
        shortlist = self.retriever.shortlist
        for column in self.store.dense_columns():
            run, positions = self.dense_run(column, shortlist if column == DENSE else self.depth)
            if column == DENSE:
                dense_positions = positions
                run = {qid: ranking[:self.depth] for qid, ranking in run.items()}
                self.runs[DENSE] = run
            results[column] = {**self.score(run), "bytes_per_vector": bytes_per_vector(self.store, column)}
        if self.store.has(DENSE):
            for column in self.store.dense_columns()[1:]:
                results[f"funnel_{nested_dim(column)}"] = {
                    **self.score(self.funnel_run(column)),
                    "bytes_per_vector": bytes_per_vector(self.store, column),  # what the first stage scans
                    "shortlist": self.retriever.funnel_shortlist_for(column, self.k),
                }
        for column in quantized_columns(self.store.schema.names):
            results[column] = {**self.score(self.dense_run(column, self.depth)[0]),
                               "bytes_per_vector": bytes_per_vector(self.store, column)}
            if self.store.has(DENSE):
                results[f"funnel_{column}"] = {
                    **self.score(self.funnel_run(column)),
                    "bytes_per_vector": bytes_per_vector(self.store, column),  # what the first stage scans
                    "shortlist": self.retriever.funnel_shortlist_for(column, self.k),
                }
        return results, dense_positions

    def multi_mode_entries(self, dense_positions: np.ndarray | None, weights: Sequence[float] | None,
                           tune_weights: bool, results: dict[str, dict]) -> dict[str, dict]:
        """ColBERT and hybrid entries (weighted, RRF, tuned) over the union of the dense and sparse shortlists."""
        entries: dict[str, dict] = {}
        modes = self.retriever.available_modes()
        candidates = self.candidates(dense_positions)
        if self.store.has(COLBERT):
            run = {qid: [(h["id"], h["score"]) for h in hits(found.ids, found.scores[scoring.COLBERT_MODE],
                                                               self.depth)]
                   for qid, found in zip(self.labelled.ids, candidates, strict=True)}
            entries[COLBERT] = {**self.score(run), "bytes_per_vector": bytes_per_vector(self.store, COLBERT),
                                "shortlist": self.retriever.shortlist}
        combined_bytes = sum((results | entries)[mode]["bytes_per_vector"] for mode in modes)
        chosen = scoring.mode_weights(weights, modes)
        entries[SearchMode.HYBRID] = {**self.score(self.fused_run(candidates, chosen, Fusion.WEIGHTED)),
                                "bytes_per_vector": combined_bytes,
                                "weights": [chosen.get(mode, 0.0) for mode in scoring.MODES]}
        equal = scoring.mode_weights((1.0, 1.0, 1.0), modes)
        entries[f"{SearchMode.HYBRID}_rrf"] = {**self.score(self.fused_run(candidates, equal, Fusion.RRF)),
                                         "bytes_per_vector": combined_bytes}
        if tune_weights:
            entries[f"{SearchMode.HYBRID}_tuned"] = {**self.tune(candidates, modes), "bytes_per_vector": combined_bytes}
        return entries

    def tune(self, candidates: list, modes: Sequence[str]) -> dict:
        """Grid search of hybrid weights on the qrels, by nDCG@k (then recall, then MRR).

        The best weights are fitted to these very queries, so their score is optimistic; `heldout` gives
        an honest estimate by 2-fold cross-validation (tune on even-numbered queries, score the odd ones,
        and the other way round, averaged)."""
        grid = scoring.weight_grid(list(modes), TUNE_STEP)
        ndcg, recall, mrr = (metric_name(m, self.k) for m in ("ndcg", "recall", "mrr"))
        per_query = []
        for weights in grid:
            run = self.fused_run(candidates, weights, Fusion.WEIGHTED)
            per_query.append(run)

        def best_on(query_ids: list[str]) -> tuple[dict, dict]:
            scored = [(self.evaluate(run, query_ids).means, weights)
                      for run, weights in zip(per_query, grid, strict=True)]
            means, weights = max(scored, key=lambda pair: (_finite(pair[0][ndcg]), _finite(pair[0][recall]),
                                                            _finite(pair[0][mrr])))
            return weights, means

        weights, means = best_on(self.labelled.ids)
        halves = [self.labelled.ids[0::2], self.labelled.ids[1::2]]
        heldout = []
        for tune_on, test_on in (halves, halves[::-1]):
            fold_weights, _ = best_on(tune_on)
            run = per_query[grid.index(fold_weights)]
            heldout.append(self.evaluate(run, test_on).means)
        result = {**means, "weights": [weights.get(mode, 0.0) for mode in scoring.MODES],
                  "grid_points": len(grid), "step": TUNE_STEP}
        result["heldout"] = {name: float(np.mean([fold[name] for fold in heldout])) for name in means}
        return result


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -1.0


def smallest_within(results: dict[str, dict], k: int, within: float = WITHIN) -> dict | None:
    """The entry with the fewest bytes per row whose nDCG@k is at least (1 - within) x `dense`'s."""
    key = metric_name("ndcg", k)
    full = results.get(DENSE, {}).get(key)
    if full is None or not math.isfinite(full):
        return None
    kept = [(entry["bytes_per_vector"], name, entry[key]) for name, entry in results.items()
            if entry.get("bytes_per_vector") and math.isfinite(entry.get(key, math.nan))
            and entry[key] >= (1 - within) * full]
    size, name, value = min(kept)
    return {"name": name, "bytes_per_vector": size, key: value, "of_dense": value / full if full else 1.0,
            "dense_bytes_per_vector": results[DENSE]["bytes_per_vector"], "within": within}


def bytes_per_vector(store, column: str) -> float:
    """Storage of one row's vector(s): 4 bytes per float32 dim, 1 per int8 dim, 1 bit per binary dim;
    sparse (int32 id + float32 weight) per token; ColBERT per token at its stored precision
    (operators/colbert_codec.py: 2 bytes a dim in float16, 1 + a scale in int8, 1 bit in binary). Ragged
    columns are averaged over a sample of rows."""
    if column == SPARSE or column == COLBERT:
        rows = store.rows
        if rows == 0:
            return 0.0
        sample = np.random.default_rng(0).choice(rows, size=min(rows, BYTES_SAMPLE_ROWS), replace=False)
        array = store.take(np.sort(sample), [column]).column(column).combine_chunks()
        if column == SPARSE:
            return float(ragged_lengths(sparse_children(array)[0]).mean() * 8)
        token_type = store.schema.field(column).type.value_type
        precision = precision_of(token_type.value_type)
        dim = token_type.list_size * (8 if precision == BINARY else 1)
        return float(ragged_lengths(array).mean() * bytes_per_token(dim, precision))
    return float(store.dim(column) * store.schema.field(column).type.value_type.bit_width // 8)

