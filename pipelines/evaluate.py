"""The evaluate job: Recall/MRR/nDCG@k of every stored column and mode of a table on labelled queries
(operators/evaluation.py), per (query language, document language) pair when they carry languages
(operators/crosslingual.py), and STS correlations on scored pairs (operators/similarity.py), written as a JSON
report with PNG plots next to it."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from operators.errors import UsageError, check_positive, check_range
from operators.evaluation import Evaluator, bytes_per_vector, load_labelled_queries, smallest_within
from operators.metrics import evaluate_run, json_safe
from operators.schema import COLBERT, DENSE, SPARSE
from operators.scoring import DEFAULT_WEIGHTS
from operators.search.documents import document_of, is_passage_table
from operators.search.retriever import DEFAULT_FUNNEL_SHORTLIST, DEFAULT_SHORTLIST, Retriever
from operators.storage import local_path
from operators.tables import Pin, check_table_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateJob:
    """One evaluation's options (pipelines/commands/evaluate.py says what each means)."""

    uri: str
    queries: str | None = None  # Parquet: query_id, text (and language); with qrels
    qrels: str | None = None  # Parquet: query_id, doc_id, relevance
    pairs: str | None = None  # Parquet: text_a, text_b, score (STS)
    language_column: str | None = None  # the table's document languages (default: `language` when it has one)
    table: str = "docs"
    k: int = 10
    tune_weights: bool = False
    tune_routing: bool = False  # learn `search --mode auto`'s rule from the qrels and store it in the table
    weights: Sequence[float] = DEFAULT_WEIGHTS
    shortlist: int = DEFAULT_SHORTLIST
    funnel_shortlist: int = DEFAULT_FUNNEL_SHORTLIST
    rescore_multiplier: int | None = None  # quantised funnels shortlist k x this (None: 100 binary, 10 int8)
    model: str | None = None
    report: str | None = None  # JSON report path; default report_path()
    use_index: bool = False
    limit: int | None = None
    plot: bool = True
    version: int | None = None  # read this table version instead of the serving one
    tag: str | None = None  # or the version with this tag
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)
        for name in ("k", "shortlist", "funnel_shortlist"):
            check_range(name, getattr(self, name), 1)
        check_positive(self, "limit", "rescore_multiplier")
        if (self.queries is None) != (self.qrels is None) or (self.queries is None and self.pairs is None):
            msg = "evaluate needs --queries with --qrels (retrieval), --pairs (similarity), or both"
            raise UsageError(msg)
        if self.tune_routing and self.queries is None:
            msg = "--tune-routing learns from labelled queries: give --queries and --qrels"
            raise UsageError(msg)


def report_path(job: EvaluateJob) -> str:
    """--report, else `<uri>/<T>.evaluation.json` for a local database, else `./<T>.evaluation.json`."""
    name = f"{job.table}.evaluation.json"
    if job.report:
        return job.report
    folder = local_path(job.uri)
    return os.path.join(folder, name) if folder is not None else os.path.abspath(name)


def run_evaluate(job: EvaluateJob) -> dict:
    """{"<column or mode>": {"recall@k", "mrr@k", "ndcg@k", "bytes_per_vector", ...}, ..., "k", "queries",
    "queries_without_relevant", "smallest_within_1pct", "table_version", "seconds", "report", "plot"}, at the serving
    version of the table (or the one pinned), with "languages" when queries or documents carry a language and "sts"
    for `pairs` (only "sts" without queries)."""
    started = time.perf_counter()
    if job.queries is None:
        retriever = Retriever(job.uri, job.table, model=job.model, storage=job.storage, pin=Pin(job.version, job.tag))
        return _write_report(job, {**_extra_entries(job, retriever, None), "report": report_path(job),
                                   "seconds": round(time.perf_counter() - started, 3)})
    labelled = load_labelled_queries(job.queries, job.qrels, job.limit)
    if not labelled.ids:
        msg = f"{job.queries} has no queries"
        raise ValueError(msg)
    retriever = Retriever(job.uri, job.table, model=job.model, shortlist=max(job.shortlist, job.k),
                          exact=not job.use_index, funnel_shortlist=max(job.funnel_shortlist, job.k),
                          storage=job.storage, pin=Pin(job.version, job.tag), rescore_multiplier=job.rescore_multiplier)
    store = retriever.store
    judged_docs = {doc for judged in labelled.qrels.values() for doc, rel in judged.items() if rel > 0}
    stored = store.ids().tolist()
    if is_passage_table(store.schema.names):  # qrels name documents; the table holds their passages
        stored = [document_of(passage) for passage in stored]
    missing_docs = len(judged_docs - set(stored))
    if missing_docs:
        log.warning("%d relevant doc ids in %s are not in table %s; they count as not retrieved",
                    missing_docs, job.qrels, job.table)
    evaluator = Evaluator(retriever, labelled, job.k, use_index=job.use_index)
    results, dense_positions = evaluator.dense_entries()
    if store.has(SPARSE):
        results[SPARSE] = {**evaluator.score(evaluator.sparse_run()),
                           "bytes_per_vector": bytes_per_vector(store, SPARSE)}
    if store.has(DENSE) and (store.has(SPARSE) or store.has(COLBERT)):
        results.update(evaluator.multi_mode_entries(dense_positions, job.weights, job.tune_weights, results))
    elif job.tune_weights:
        log.warning("--tune-weights needs a table with BGE-M3 sparse or colbert outputs; skipped")
    routing = _tune_routing(job, evaluator, dense_positions) if job.tune_routing else None
    summary = evaluate_run({}, labelled.qrels, labelled.ids, job.k)
    output = {
        **results,
        "k": job.k,
        "queries": summary.queries,
        "queries_without_relevant": summary.queries_without_relevant,
        "smallest_within_1pct": smallest_within(results, job.k),
        "table_version": store.version,
        "seconds": round(time.perf_counter() - started, 3),
    }
    path = report_path(job)
    output["report"] = path
    if job.plot:
        from operators.evaluation_plot import plot_quality

        output["plot"] = plot_quality(results, job.k, os.path.splitext(path)[0] + ".png", title=job.table)
    if routing is not None:
        output["routing"] = routing
    output.update(_extra_entries(job, retriever, evaluator))
    output["seconds"] = round(time.perf_counter() - started, 3)
    return _write_report(job, output)


def _tune_routing(job: EvaluateJob, evaluator: Evaluator, dense_positions) -> dict:
    """The report's `routing` entry (operators/routing_tuning.py) with its PNG; the rule stored in the table's
    metadata when it was tuned on the serving version (operators/serving.py `publish_schema_metadata`)."""
    from operators.routing_tuning import plot_routing, tune_routing
    from operators.serving import publish_schema_metadata, serving_version
    from operators.table_meta import ROUTING_KEY

    entry, rule = tune_routing(evaluator, dense_positions, job.weights)
    if rule is None:
        return entry
    if job.plot:
        entry["plot"] = plot_routing(entry, os.path.splitext(report_path(job))[0] + ".routing.png", job.table)
    store = evaluator.store
    latest = store.ref.dataset()
    serving = serving_version(latest) or latest.version
    if store.version != serving:
        entry["not_stored"] = (f"tuned on version {store.version}, not the serving version {serving}: a rule is "
                               "stored only from the version search reads")
    else:
        try:
            entry["stored_version"] = publish_schema_metadata(
                store.ref, {ROUTING_KEY.decode(): json.dumps(rule.to_dict())}, expected=store.version)
            entry["stored"] = True
        except ValueError as error:
            entry["not_stored"] = str(error)
    if not entry["stored"]:
        log.warning("--tune-routing: rule not stored: %s", entry["not_stored"])
    return entry


def _extra_entries(job: EvaluateJob, retriever: Retriever, evaluator: Evaluator | None) -> dict:
    """Per-language-pair metrics (with labelled queries) and STS figures, each with its own PNG next to the
    report."""
    from operators.crosslingual import cross_lingual_report
    from operators.similarity import sts_report

    stem = os.path.splitext(report_path(job))[0]
    extra = {}
    if evaluator is not None:
        languages = cross_lingual_report(evaluator, job.queries, job.language_column,
                                         f"{stem}.languages.png" if job.plot else None, job.table)
        if languages is not None:
            extra["languages"] = languages
    if job.pairs:
        extra["sts"] = sts_report(retriever, job.pairs, f"{stem}.sts.png" if job.plot else None, job.table)
    return extra


def _write_report(job: EvaluateJob, output: dict) -> dict:
    path = report_path(job)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(json_safe(output), handle, indent=2, allow_nan=False)  # an undefined mean is null, never NaN
    return output
