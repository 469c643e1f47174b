"""Classification on stored vectors: figures equal scikit-learn's cross_val_score with the same estimator,
folds and seed; the TF-IDF baseline likewise; labelled-row selection, rare classes, sampling, the report."""

from __future__ import annotations

import json
import os

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from operators.classify import LABEL, PROBABILITY, LabelPredictor, fit, is_labelled, probe, usable_classes
from operators.schema import DENSE, ID
from operators.vectors import normalize_rows, to_vector_array
from pipelines.classify import ClassifyJob, read_labelled, run_classify

CLASSES = ("alpha", "beta", "gamma", "delta")
WORDS = {"alpha": "kernel driver module", "beta": "font glyph typeface", "gamma": "game level player",
         "delta": "database query index"}


def labelled_table(rows: int = 160, seed: int = 0, rare: int = 0) -> tuple[pa.Table, np.ndarray]:
    """Clustered vectors by class (with overlap, so scores are not all 1.0), a nested column, texts with
    class words and noise; every 9th row unlabelled (null or empty), `rare` rows of a class too small."""
    rng = np.random.default_rng(seed)
    labels = np.asarray([CLASSES[i % len(CLASSES)] for i in range(rows)], dtype=object)
    centres = rng.standard_normal((len(CLASSES), 24)).astype(np.float32)
    raw = centres[[CLASSES.index(c) for c in labels]] + 1.6 * rng.standard_normal((rows, 24)).astype(np.float32)
    vocabulary = " ".join(WORDS.values()).split()
    texts = [" ".join([*rng.choice(WORDS[c].split(), 2), *rng.choice(vocabulary, 4)]) for c in labels]
    stored = labels.copy()
    stored[::9] = None
    stored[4::18] = ""
    if rare:
        stored[1:1 + 2 * rare:2] = "rare"
    table = pa.table({ID: [f"id{i:04d}" for i in range(rows)], DENSE: to_vector_array(normalize_rows(raw)),
                      "dense_8": to_vector_array(normalize_rows(raw[:, :8])), "text": texts,
                      "section": pa.array(stored.tolist(), type=pa.string())})
    return table, stored


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("classify"))
    table, _ = labelled_table()
    lancedb.connect(uri).create_table("docs", table)
    return uri, table


def reference_rows(table: pa.Table, column: str):
    keep = is_labelled(table.column("section"))
    labelled = table.filter(pa.array(keep))
    matrix = np.stack(labelled.column(column).to_numpy(zero_copy_only=False))
    return matrix, np.asarray(labelled.column("section").to_pylist(), dtype=object), labelled


def test_figures_equal_cross_val_score_on_the_stored_vectors(lake):
    uri, table = lake
    result = run_classify(ClassifyJob(uri=uri, table="docs", labels_column="section", folds=5, seed=7))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=7)
    for column in (DENSE, "dense_8"):
        x, y, _ = reference_rows(table, column)
        estimator = LogisticRegression(class_weight="balanced", max_iter=100, random_state=7)
        accuracy = cross_val_score(estimator, x, y, cv=folds, scoring="accuracy")
        macro_f1 = cross_val_score(estimator, x, y, cv=folds, scoring="f1_macro")
        np.testing.assert_allclose(result[column]["accuracy_folds"], accuracy, atol=1e-12)
        np.testing.assert_allclose(result[column]["macro_f1_folds"], macro_f1, atol=1e-12)
        assert result[column]["accuracy"] == pytest.approx(accuracy.mean())
        assert 0.4 < result[column]["accuracy"] < 1.0  # informative but not trivial data
    _, y, labelled = reference_rows(table, DENSE)
    baseline = make_pipeline(TfidfVectorizer(sublinear_tf=True),
                             LogisticRegression(class_weight="balanced", max_iter=1000, random_state=7))
    expected = cross_val_score(baseline, labelled.column("text").to_pylist(), y, cv=folds, scoring="accuracy")
    np.testing.assert_allclose(result["tfidf"]["accuracy_folds"], expected, atol=1e-12)
    assert result["labelled_rows"] == result["rows_used"] == len(y) < table.num_rows
    assert result["classes"] == 4 and sum(result["class_sizes"].values()) == len(y)
    with open(result["report"]) as handle:
        assert json.load(handle)[DENSE]["accuracy"] == result[DENSE]["accuracy"]
    assert result["report"] == os.path.join(uri, "docs.classification.json")
    assert os.path.getsize(result["plot"]) > 5000


def test_rare_classes_are_left_out_and_named(tmp_path):
    table, _ = labelled_table(rare=3)
    lancedb.connect(str(tmp_path)).create_table("docs", table)
    result = run_classify(ClassifyJob(uri=str(tmp_path), table="docs", labels_column="section",
                                      columns=["dense_8"], baseline=False, plot=False))
    assert result["classes_dropped"] == {"rare": 3} and "rare" not in result["class_sizes"]
    assert set(result) >= {"dense_8"} and DENSE not in result
    assert result["baseline_skipped"] == "--no-baseline"


def test_a_sample_of_max_rows_labelled_rows_is_drawn_by_seed(lake):
    uri, _table = lake
    dataset = lancedb.connect(uri).open_table("docs").to_lance()
    job = ClassifyJob(uri=uri, table="docs", labels_column="section", max_rows=60, seed=3)
    rows, total = read_labelled(dataset, job, [DENSE], with_text=False)
    again, _ = read_labelled(dataset, job, [DENSE], with_text=False)
    assert total == 160 - 18 - 9 and 50 <= len(rows.ids) <= 60 and rows.ids == again.ids
    assert all(label not in (None, "") for label in rows.labels)
    assert len({int(doc[2:]) // 40 for doc in rows.ids}) == 4  # drawn over the whole table, not its start


def test_errors_are_one_line_and_name_the_problem(lake):
    uri, _ = lake
    with pytest.raises(ValueError, match="no column 'topic'"):
        run_classify(ClassifyJob(uri=uri, table="docs", labels_column="topic"))
    with pytest.raises(ValueError, match="--folds must be at least 2"):
        run_classify(ClassifyJob(uri=uri, table="docs", labels_column="section", folds=1))
    with pytest.raises(ValueError, match="not a fixed-size float vector"):
        run_classify(ClassifyJob(uri=uri, table="docs", labels_column="section", columns=["text"]))


def test_label_predictor_gives_the_most_probable_class_and_its_probability():
    table, stored = labelled_table(80, seed=2)
    x = np.stack(table.column(DENSE).to_numpy(zero_copy_only=False))
    keep = is_labelled(table.column("section"))
    model = fit(probe(), x[keep], stored[keep].astype(str))
    out = LabelPredictor(model, DENSE)(table.select([ID, DENSE]))
    probabilities = model.predict_proba(x)
    assert out.column(LABEL).to_pylist() == model.classes_[probabilities.argmax(axis=1)].tolist()
    np.testing.assert_allclose(out.column(PROBABILITY).to_numpy(), probabilities.max(axis=1), rtol=1e-6)
    ints = LabelPredictor(fit(probe(), x[:8], np.asarray(["1", "2"] * 4, dtype=object)), DENSE, pa.int64())
    assert ints(table.select([ID, DENSE]).slice(0, 3)).schema.field(LABEL).type == pa.int64()


def test_usable_classes_counts_members():
    keep, dropped = usable_classes(np.asarray(["a", "a", "b", "a"], dtype=object), 2)
    assert keep.tolist() == [True, True, False, True] and dropped == {"b": 1}


def test_cli_reads_the_serving_version_or_the_one_pinned(tmp_path):
    """classify reads `serving` by default and --version N / --tag NAME instead, as search and evaluate do: an
    unfinished run's rows on the main line are never scored."""
    import lance

    from operators.tables import SERVING
    from tests.cli_runs import cli_result

    uri = str(tmp_path)
    table, _ = labelled_table(160, seed=3)
    lancedb.connect(uri).create_table("docs", table.slice(0, 100))
    dataset = lance.dataset(f"{uri}/docs.lance")
    dataset.tags.create("first", dataset.version)
    lancedb.connect(uri).open_table("docs").add(table.slice(100))
    published = lance.dataset(f"{uri}/docs.lance").version
    lance.dataset(f"{uri}/docs.lance").tags.create(SERVING, published)
    lancedb.connect(uri).open_table("docs").delete("true")  # an unfinished run on top: no rows
    options = ("--table", "docs", "--labels-column", "section", "--folds", "3", "--no-baseline", "--json")
    served = cli_result("classify", uri, *options, "--report", str(tmp_path / "a.json"))
    assert served["table_version"] == published and served["rows"] == 160
    for pin in (("--version", str(dataset.version)), ("--tag", "first")):
        pinned = cli_result("classify", uri, *options, *pin, "--report", str(tmp_path / "b.json"))
        assert pinned["table_version"] == dataset.version and pinned["rows"] == 100
