"""Cross-lingual retrieval evaluation: every metric per (query language, document language) pair, so
"German queries against English documents" is one entry of one `evaluate` run.

Query languages come from a `language` column of the queries file, document languages from a column the
table keeps (`embed --keep-columns language`, `evaluate --language-column`). For a pair (q, d) the queries
in language q search only the documents in language d (an exact scan of each dense column restricted to
them, and the sparse index's scores restricted the same way), and only relevant documents in language d
count: a query with none there is left out of that pair and counted (`queries_without_relevant`), as in
the whole-table figures. Without one of the two columns the other side is one group, `all`. Rows whose
language is null or blank are `und` (BCP 47's "undetermined"). Relevant doc ids that are not in the
table have no language and count in no pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq

from operators.figures import save_figure
from operators.metrics import evaluate_run, metric_name
from operators.schema import SPARSE, require_columns
from operators.scoring import top_k
from operators.search.dense import exact_topn
from operators.vectors import as_matrix

LANGUAGE = "language"
ALL = "all"
UNDETERMINED = "und"


def language_labels(values: Sequence) -> np.ndarray:
    return np.asarray([str(v).strip() if v is not None and str(v).strip() else UNDETERMINED for v in values],
                      dtype=object)


def query_languages(queries_path: str, query_ids: Sequence[str]) -> np.ndarray | None:
    """The language of each query (by query_id), or None when the file has no `language` column."""
    schema = pq.read_schema(queries_path)
    if LANGUAGE not in schema.names:
        return None
    table = pq.read_table(queries_path, columns=["query_id", LANGUAGE])
    by_id = dict(zip((str(v) for v in table.column("query_id").to_pylist()),
                     language_labels(table.column(LANGUAGE).to_pylist()), strict=True))
    return np.asarray([by_id[qid] for qid in query_ids], dtype=object)


def document_languages(store, column: str) -> np.ndarray:
    """Every row's language, by position (the order exact scans and the sparse index use)."""
    require_columns(store.schema, [column], f"table {store.name!r}", "--language-column names a kept column")
    values = [value for batch in store.scan([column]) for value in batch.column(0).to_pylist()]
    return language_labels(values)


def masked_topn(store, column: str, queries: np.ndarray, n: int, allowed: np.ndarray) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """Exact top-n positions and scores over the rows where `allowed`, streaming the column in batches."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    positions, scores = [], []
    start = 0
    for batch in store.scan([column]):
        matrix = as_matrix(batch.column(0))
        rows = np.flatnonzero(allowed[start:start + len(matrix)])
        if rows.size:
            found, best = exact_topn(matrix[rows], queries, n)
            positions.append(rows[found] + start)
            scores.append(best)
        start += len(matrix)
    if not positions:
        return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
    positions, scores = np.concatenate(positions, axis=1), np.concatenate(scores, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(positions, order, axis=1), np.take_along_axis(scores, order, axis=1)


def restricted_qrels(qrels: dict[str, dict[str, int]], doc_language: dict[str, str], language: str | None):
    """The judgments of documents in `language` (all of them for None)."""
    if language is None:
        return qrels
    return {qid: {doc: rel for doc, rel in judged.items() if doc_language.get(doc) == language}
            for qid, judged in qrels.items()}


def language_pair_entries(evaluator, query_langs: np.ndarray | None, doc_langs: np.ndarray | None,
                          progress: bool = True) -> dict:
    """{"query_languages": {lang: queries}, "document_languages": {lang: rows},
    "pairs": {query language: {document language: {"queries", "queries_without_relevant",
    "<column>": {"recall@k", "mrr@k", "ndcg@k"}}}}} for every dense column and sparse."""
    from tqdm import tqdm

    store, labelled, k = evaluator.store, evaluator.labelled, evaluator.k
    ids = store.ids()
    query_ids = np.asarray(labelled.ids, dtype=object)
    q_groups = _groups(query_langs, len(query_ids))
    d_groups = _groups(doc_langs, len(ids))
    doc_language = dict(zip(ids.tolist(), doc_langs.tolist(), strict=True)) if doc_langs is not None else {}
    columns = list(store.dense_columns()) + ([SPARSE] if store.has(SPARSE) else [])
    pairs: dict[str, dict[str, dict]] = {q_lang: {} for q_lang in q_groups}
    steps = tqdm(total=len(d_groups) * len(columns), desc="language pairs", unit="column", disable=not progress,
                 leave=False)
    for d_lang, allowed in d_groups.items():
        runs = {}
        for column in columns:
            runs[column] = _run(evaluator, column, allowed, ids)
            steps.update(1)
        qrels = restricted_qrels(labelled.qrels, doc_language, None if doc_langs is None else d_lang)
        for q_lang, members in q_groups.items():
            subset = query_ids[members].tolist()
            summary = evaluate_run({}, qrels, subset, k)
            entry: dict = {"queries": summary.queries, "queries_without_relevant": summary.queries_without_relevant,
                           "documents": int(allowed.sum())}
            for column, run in runs.items():
                entry[column] = evaluate_run(run, qrels, subset, k).as_dict()
            pairs[q_lang][d_lang] = entry
    steps.close()
    return {
        "query_languages": {lang: int(mask.sum()) for lang, mask in q_groups.items()},
        "document_languages": {lang: int(mask.sum()) for lang, mask in d_groups.items()},
        "pairs": pairs,
    }


def _groups(languages: np.ndarray | None, count: int) -> dict[str, np.ndarray]:
    if languages is None:
        return {ALL: np.ones(count, dtype=bool)}
    return {lang: languages == lang for lang in sorted(set(languages.tolist()))}


def _run(evaluator, column: str, allowed: np.ndarray, ids: np.ndarray) -> dict:
    """Each query's top-k among the allowed rows, by one column."""
    qids = evaluator.labelled.ids
    if column == SPARSE:
        index = evaluator.retriever.sparse_index
        run = {}
        for qid, query in zip(qids, evaluator.vectors, strict=True):
            scores = index.scores(query.sparse)
            matching = np.flatnonzero((scores > 0) & allowed)
            best = matching[top_k(index.ids[matching], scores[matching], evaluator.k)]
            run[qid] = [(str(index.ids[p]), float(scores[p])) for p in best]
        return run
    positions, scores = masked_topn(evaluator.store, column, evaluator.query_matrix(column), evaluator.k, allowed)
    return {qid: list(zip(ids[positions[i]].tolist(), scores[i].tolist(), strict=True))
            for i, qid in enumerate(qids)}


def plot_language_pairs(entries: dict, k: int, path: str, column: str = "dense", title: str = "") -> str:
    """A heatmap of nDCG@k of one column, query languages down, document languages across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = metric_name("ndcg", k)
    q_langs = list(entries["query_languages"])
    d_langs = list(entries["document_languages"])
    grid = np.full((len(q_langs), len(d_langs)), np.nan)
    for i, q_lang in enumerate(q_langs):
        for j, d_lang in enumerate(d_langs):
            value = entries["pairs"].get(q_lang, {}).get(d_lang, {}).get(column, {}).get(key)
            if value is not None:
                grid[i, j] = value
    figure, axis = plt.subplots(figsize=(1.2 * len(d_langs) + 3, 0.8 * len(q_langs) + 2.2))
    image = axis.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(q_langs)):
        for j in range(len(d_langs)):
            if np.isfinite(grid[i, j]):
                axis.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w", fontsize=9)
    axis.set_xticks(range(len(d_langs)), d_langs)
    axis.set_yticks(range(len(q_langs)), q_langs)
    axis.set_xlabel("document language")
    axis.set_ylabel("query language")
    axis.set_title(f"{key} of {column} per language pair{': ' + title if title else ''}", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046)
    return save_figure(figure, path)


def cross_lingual_report(evaluator, queries_path: str, language_column: str | None = None,
                         plot_path: str | None = None, title: str = "") -> dict | None:
    """`evaluate`'s per-language-pair entries, or None when neither the queries nor the table carry a
    language (the table's column: `language_column`, else one named `language` when it has one)."""
    store = evaluator.store
    column = language_column or (LANGUAGE if store.has(LANGUAGE) else None)
    query_langs = query_languages(queries_path, evaluator.labelled.ids)
    doc_langs = document_languages(store, column) if column else None
    if query_langs is None and doc_langs is None:
        return None
    entries = language_pair_entries(evaluator, query_langs, doc_langs)
    entries["query_column"] = LANGUAGE if query_langs is not None else None
    entries["document_column"] = column
    if plot_path and store.dense_columns():
        entries["plot"] = plot_language_pairs(entries, evaluator.k, plot_path, store.dense_columns()[0], title)
    return _json_safe(entries)


def _json_safe(value):
    """NaN (a pair where no query has a relevant document) as null, so the report is valid JSON."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
