"""The classification job: how well each stored vector column predicts a label column, and (with `predict`)
labels for the rows that have none, written to T_predictions by Ray workers.

1. The driver reads the labelled rows (label neither null nor the empty string): all of them up to
   `max_rows`, else a seeded uniform sample of that many (random access to the sampled rows only).
2. Every vector column and the TF-IDF baseline (when the table keeps the text) are scored by stratified
   k-fold cross-validation on the same folds (operators/classify.py: MTEB's logistic-regression protocol,
   class-balanced). Classes with fewer rows than folds cannot be stratified and are left out, and listed.
3. `predict`: the best column's classifier is fitted on every labelled row read; Ray Data scores the
   unlabelled rows in workers and FragmentWriter tasks write T_predictions (id, label, probability), one
   commit. Only counts and fragment metadata reach the driver.
The JSON report and a PNG go to OUTPUT/<T>.classification.{json,png} (local OUTPUT) or --report.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from operators.classify import (
    ACCURACY,
    DEFAULT_FOLDS,
    DEFAULT_MAX_ITER,
    DEFAULT_SEED,
    MACRO_F1,
    LabelledRows,
    LabelPredictor,
    best_column,
    cross_validate,
    fit,
    is_labelled,
    label_strings,
    predictions_schema,
    probe,
    stratified_folds,
    tfidf_baseline,
    usable_classes,
)
from operators.figures import save_figure
from operators.schema import ID, dense_columns, require_columns, vector_dim
from operators.tables import Lake, Pin, check_table_name
from operators.vectors import as_matrix
from pipelines.downstream import Stopwatch, is_local_uri, local_path, num_blocks, using_ray, write_table_from_ray

log = logging.getLogger(__name__)

MAX_ROWS = 100_000  # labelled rows cross-validated: 5 fits of 80k x 384 take minutes on one core
TFIDF = "tfidf"
OVERSAMPLE = 1.2  # positions drawn per wanted labelled row, over the labelled fraction


@dataclass(frozen=True)
class ClassifyJob:
    """One classification run's options (pipelines/commands/classify.py says what each means)."""

    uri: str
    table: str
    labels_column: str
    columns: list[str] | None = None  # vector columns to score (default: every dense column)
    folds: int = DEFAULT_FOLDS
    seed: int = DEFAULT_SEED
    max_iter: int = DEFAULT_MAX_ITER
    max_rows: int = MAX_ROWS
    text_column: str = "text"
    baseline: bool = True
    predict: bool = False
    report: str | None = None
    plot: bool = True
    address: str | None = None
    version: int | None = None  # read this table version instead of the serving one
    tag: str | None = None  # or the version with this tag
    storage: Mapping | None = field(default=None, repr=False)  # operators/storage.py settings

    def __post_init__(self) -> None:
        check_table_name(self.table)  # before Ray starts or storage is touched


def predictions_table_name(table: str) -> str:
    return f"{table}_predictions"


def report_path(job: ClassifyJob) -> str:
    if job.report:
        return job.report
    name = f"{job.table}.classification.json"
    return os.path.join(local_path(job.uri), name) if is_local_uri(job.uri) else os.path.abspath(name)


def quote(column: str) -> str:
    """A column name inside a Lance filter."""
    return "`" + column.replace("`", "``") + "`"


def labelled_filter(column: str, kind: pa.DataType) -> str:
    blank = f" AND {quote(column)} != ''" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else ""
    return f"{quote(column)} IS NOT NULL{blank}"


def unlabelled_filter(column: str, kind: pa.DataType) -> str:
    blank = f" OR {quote(column)} = ''" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else ""
    return f"{quote(column)} IS NULL{blank}"


def run_classify(job: ClassifyJob) -> dict:
    """Score every column (and the baseline), optionally write T_predictions; returns the JSON summary."""
    watch = Stopwatch()
    ref = Lake(job.uri, job.storage).table(job.table)
    dataset = ref.snapshot(Pin(job.version, job.tag))  # the serving version (or the one pinned), for the whole run
    where = f"table {job.table!r}"
    require_columns(dataset.schema, [job.labels_column], where, "--labels-column (embed --keep-columns)")
    columns = list(job.columns or dense_columns(dataset.schema))
    if not columns:
        msg = f"{where} has no dense vector columns to classify with"
        raise ValueError(msg)
    dims = {column: vector_dim(dataset.schema, column, where) for column in columns}
    label_type = dataset.schema.field(job.labels_column).type
    with_text = job.baseline and job.text_column in dataset.schema.names
    stratified_folds(job.folds)  # fail on a bad --folds before reading anything

    with watch.stage("read"):
        rows, labelled_total = read_labelled(dataset, job, columns, with_text)
    result: dict = {"table": job.table, "labels_column": job.labels_column, "folds": job.folds, "seed": job.seed,
                    "table_version": dataset.version, "rows": dataset.count_rows(), "labelled_rows": labelled_total,
                    "rows_used": len(rows.ids)}
    keep, dropped = usable_classes(rows.labels, job.folds)
    scored = rows.subset(keep)
    classes, sizes = np.unique(scored.labels, return_counts=True)
    result["classes"] = len(classes)
    result["class_sizes"] = {str(c): int(n) for c, n in zip(classes, sizes, strict=True)}
    if dropped:
        result["classes_dropped"] = dropped
        log.warning("classes with fewer than %d labelled rows are left out of cross-validation: %s", job.folds,
                    ", ".join(f"{c} ({n})" for c, n in dropped.items()))
    if len(classes) < 2:
        msg = (f"{job.labels_column!r} has {len(classes)} class(es) with at least {job.folds} labelled rows; "
               "classification needs two")
        raise ValueError(msg)

    with watch.stage("cross_validate"):
        result.update(_score_columns(job, scored, columns, dims))
        if with_text:
            result[TFIDF] = cross_validate(tfidf_baseline(job.seed), scored.texts, scored.labels,
                                           stratified_folds(job.folds, job.seed))
        else:
            result["baseline_skipped"] = (f"table keeps no {job.text_column!r} column (embed --keep-columns "
                                          f"{job.text_column})" if job.baseline else "--no-baseline")
    if job.predict:
        with watch.stage("predict"):
            result.update(_predict(job, ref, dataset, rows, result, columns, label_type, watch))
    path = report_path(job)
    result["report"] = path
    if job.plot:
        result["plot"] = plot_classification(result, columns, os.path.splitext(path)[0] + ".png", job.table)
    result["seconds"] = watch.summary()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


def _score_columns(job: ClassifyJob, rows: LabelledRows, columns: list[str], dims: dict[str, int]) -> dict:
    from tqdm import tqdm

    scores = {}
    for column in tqdm(columns, desc="cross-validating", unit="column", disable=None, leave=False):
        scores[column] = {**cross_validate(probe(job.seed, job.max_iter), rows.vectors[column], rows.labels,
                                           stratified_folds(job.folds, job.seed)),
                          "dim": dims[column]}
        log.info("%s: accuracy %.4f, macro-F1 %.4f", column, scores[column][ACCURACY], scores[column][MACRO_F1])
    return scores


def read_labelled(dataset, job: ClassifyJob, columns: list[str], with_text: bool) -> tuple[LabelledRows, int]:
    """The labelled rows to learn from (all, or a seeded uniform sample of `max_rows`) and how many there are."""
    label_type = dataset.schema.field(job.labels_column).type
    condition = labelled_filter(job.labels_column, label_type)
    wanted = list(dict.fromkeys([ID, job.labels_column, *columns, *([job.text_column] if with_text else [])]))
    labelled_total = dataset.count_rows(filter=condition)
    if labelled_total == 0:
        msg = f"table {job.table!r} has no labelled rows in {job.labels_column!r}"
        raise ValueError(msg)
    if labelled_total <= job.max_rows:
        table = dataset.to_table(columns=wanted, filter=condition)
    else:
        table = dataset.take(_sample_positions(dataset, job, labelled_total), columns=wanted)
    table = table.filter(pa.array(is_labelled(table.column(job.labels_column))))
    texts = None
    if with_text:
        texts = [text or "" for text in table.column(job.text_column).to_pylist()]
    rows = LabelledRows(ids=table.column(ID).to_pylist(), labels=label_strings(table.column(job.labels_column)
                                                                                 .to_pylist()),
                        vectors={column: as_matrix(table.column(column)) for column in columns}, texts=texts)
    return rows, labelled_total


def _sample_positions(dataset, job: ClassifyJob, labelled_total: int) -> list[int]:
    """Positions of about `max_rows` labelled rows drawn uniformly: random positions over the table (more
    than needed by the labelled fraction), their labels read by random access, the labelled ones kept."""
    total = dataset.count_rows()
    rng = np.random.default_rng(job.seed)
    draw = min(total, math.ceil(job.max_rows * total / labelled_total * OVERSAMPLE))
    positions = np.sort(rng.choice(total, size=draw, replace=False))
    labels = dataset.take(positions.tolist(), columns=[job.labels_column]).column(job.labels_column)
    labelled = positions[is_labelled(labels)]
    if len(labelled) > job.max_rows:
        labelled = np.sort(rng.choice(labelled, size=job.max_rows, replace=False))
    return labelled.tolist()


def _predict(job: ClassifyJob, ref, dataset, rows: LabelledRows, scores: dict, columns: list[str],
             label_type: pa.DataType, watch: Stopwatch) -> dict:
    """Fit the best column's classifier on every labelled row read, label the unlabelled rows in Ray."""
    import ray

    column = best_column(scores, columns)
    model = fit(probe(job.seed, job.max_iter), rows.vectors[column], rows.labels)
    target = ref.lake.table(predictions_table_name(job.table))
    condition = unlabelled_filter(job.labels_column, label_type)
    unlabelled = dataset.count_rows(filter=condition)
    with using_ray(job.address, watch):
        from pipelines.ray_runtime import cluster_cpus

        source = ray.data.read_lance(ref.dataset_uri, version=dataset.version, columns=[ID, column],
                                     filter=condition, storage_options=ref.lake.lance_options(),
                                     override_num_blocks=num_blocks(max(unlabelled, 1), dims_of(dataset, column),
                                                                    cluster_cpus()))
        predicted = source.map_batches(LabelPredictor(model, column, label_type), batch_format="pyarrow",
                                       batch_size=None)
        written, version = write_table_from_ray(target, predictions_schema(label_type), predicted,
                                                total=unlabelled, desc="rows predicted")
    return {"predict": {"column": column, "trained_on": len(rows.ids), "classes": len(model.classes_),
                        "unlabelled_rows": unlabelled, "rows_written": written,
                        "predictions_table": target.name, "predictions_version": version}}


def dims_of(dataset, column: str) -> int:
    return dataset.schema.field(column).type.list_size


def plot_classification(result: dict, columns: list[str], path: str, title: str = "") -> str:
    """Accuracy and macro-F1 (mean over folds, with their spread) of each column, the TF-IDF baseline as
    lines: is a nested size, or the text alone, good enough?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [column for column in columns if column in result]
    figure, axis = plt.subplots(figsize=(1.3 * len(shown) + 3.5, 4.4))
    x = np.arange(len(shown))
    for offset, (metric, colour) in enumerate(((ACCURACY, "C0"), (MACRO_F1, "C1"))):
        axis.bar(x + (offset - 0.5) * 0.38, [result[c][metric] for c in shown], width=0.38, color=colour,
                 yerr=[result[c][f"{metric}_std"] for c in shown], capsize=3, label=metric)
        if TFIDF in result:
            axis.axhline(result[TFIDF][metric], color=colour, linestyle="--", label=f"{metric}, TF-IDF baseline")
    axis.set_xticks(x, [f"{c}\n({result[c]['dim']}-d)" for c in shown])
    axis.set_ylim(0, 1)
    axis.set_ylabel(f"{result['folds']}-fold cross-validated score")
    axis.set_title(f"classifying {result['labels_column']} ({result['classes']} classes, {result['rows_used']} rows)"
                   + (f": {title}" if title else ""), fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(True, axis="y", alpha=0.3)
    return save_figure(figure, path)
