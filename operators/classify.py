"""Stored vectors as features for a linear classifier: cross-validated accuracy and macro-F1 per column,
a TF-IDF baseline on the same folds, and a fitted model that labels rows in batches.

The protocol is MTEB's classification task (scikit-learn `LogisticRegression` on the raw vectors, no
scaling, `max_iter=100`, the seed as `random_state`; accuracy and macro-F1) with two changes:
- `class_weight="balanced"`, so a big class does not drown the small ones (the issue asks for it);
- stratified k-fold cross-validation (`StratifiedKFold`, shuffled with the seed) instead of MTEB's fixed
  train/test split: a table has no fixed split, and k folds use every labelled row once for testing.
The figures are the mean over folds, exactly what `cross_val_score(estimator, X, y, cv=folds)` returns
for the same estimator and folds (tests/test_classify.py checks it). Plain numpy and scikit-learn, no Ray.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from operators.schema import ID

DEFAULT_FOLDS = 5
DEFAULT_SEED = 1234
DEFAULT_MAX_ITER = 100  # MTEB's logRegClassificationEvaluator
BASELINE_MAX_ITER = 1000  # sparse TF-IDF features converge slower; the baseline should not be starved
ACCURACY = "accuracy"
MACRO_F1 = "macro_f1"
SCORERS = {ACCURACY: "accuracy", MACRO_F1: "f1_macro"}  # scikit-learn's names

LABEL = "label"
STRING = pa.string()
PROBABILITY = "probability"


def probe(seed: int = DEFAULT_SEED, max_iter: int = DEFAULT_MAX_ITER):
    """The linear classifier fitted on vectors: class-balanced logistic regression (lbfgs, multinomial)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight="balanced", max_iter=max_iter, random_state=seed)


def tfidf_baseline(seed: int = DEFAULT_SEED, max_iter: int = BASELINE_MAX_ITER):
    """The lexical baseline on the raw texts: TF-IDF (sublinear tf, unigrams) + the same classifier."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(sublinear_tf=True), probe(seed, max_iter))


def stratified_folds(folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED):
    """The folds every column and the baseline share."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        msg = f"--folds must be at least 2, got {folds}"
        raise ValueError(msg)
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)


def usable_classes(labels: np.ndarray, folds: int) -> tuple[np.ndarray, dict[str, int]]:
    """Rows whose class has at least `folds` members (stratified k-fold needs one per fold), and the
    classes left out with their counts."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = counts >= folds
    dropped = {str(c): int(n) for c, n in zip(classes[~keep], counts[~keep], strict=True)}
    return keep[inverse], dropped


def cross_validate(estimator, features, labels: np.ndarray, cv) -> dict:
    """Mean and per-fold accuracy and macro-F1 of `estimator` over the folds of `cv`."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import cross_validate as sk_cross_validate

    with warnings.catch_warnings():
        # MTEB's 100 iterations do not always converge; the score is still what that protocol gives.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = sk_cross_validate(estimator, features, labels, cv=cv, scoring=SCORERS)
    result = {}
    for name in SCORERS:
        per_fold = scores[f"test_{name}"]
        result[name] = float(np.mean(per_fold))
        result[f"{name}_std"] = float(np.std(per_fold))
        result[f"{name}_folds"] = [float(value) for value in per_fold]
    result["fit_seconds"] = round(float(np.sum(scores["fit_time"])), 3)
    return result


def fit(estimator, features, labels: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(features, labels)


@dataclass
class LabelledRows:
    """The rows a classifier learns from: labels (strings), a matrix per vector column, texts when kept."""

    ids: list[str]
    labels: np.ndarray
    vectors: dict[str, np.ndarray]
    texts: list[str] | None = None

    def subset(self, mask: np.ndarray) -> LabelledRows:
        rows = np.flatnonzero(mask)
        return LabelledRows(
            ids=[self.ids[i] for i in rows],
            labels=self.labels[rows],
            vectors={name: matrix[rows] for name, matrix in self.vectors.items()},
            texts=None if self.texts is None else [self.texts[i] for i in rows],
        )


def is_labelled(labels: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A row is labelled when its label is neither null nor the empty string."""
    return np.asarray([value is not None and value != "" for value in labels.to_pylist()], dtype=bool)


def label_strings(labels: Iterable) -> np.ndarray:
    """Labels as strings, the classifier's classes (a numeric label column prints the same in the report)."""
    return np.asarray([str(value) for value in labels], dtype=object)


class LabelPredictor:
    """A fitted classifier as a batch transform: (id, vector column) rows in, (id, label, probability) out,
    the label being the most probable class. Plain and picklable, so Ray Data can ship it to workers."""

    def __init__(self, model, column: str, label_type: pa.DataType = STRING) -> None:
        self.model = model
        self.column = column
        self.label_type = label_type

    def __call__(self, batch: pa.Table) -> pa.Table:
        from operators.vectors import as_matrix

        ids = batch.column(ID)
        if batch.num_rows == 0:
            return predictions_schema(self.label_type).empty_table()
        probabilities = self.model.predict_proba(as_matrix(batch.column(self.column)))
        best = probabilities.argmax(axis=1)
        labels = pa.array(self.model.classes_[best].tolist(), type=pa.string())
        if self.label_type != pa.string():
            labels = labels.cast(self.label_type)
        return pa.table({ID: ids, LABEL: labels,
                         PROBABILITY: pa.array(probabilities[np.arange(len(best)), best], type=pa.float32())},
                        schema=predictions_schema(self.label_type))


def predictions_schema(label_type: pa.DataType = STRING) -> pa.Schema:
    """T_predictions: the predicted label of each unlabelled row and the classifier's probability for it."""
    return pa.schema([pa.field(ID, pa.string(), nullable=False), pa.field(LABEL, label_type),
                      pa.field(PROBABILITY, pa.float32())])


def best_column(results: dict[str, dict], columns: Sequence[str]) -> str:
    """The column with the best cross-validated accuracy (then macro-F1, then the order given)."""
    return max(columns, key=lambda c: (results[c][ACCURACY], results[c][MACRO_F1], -list(columns).index(c)))
