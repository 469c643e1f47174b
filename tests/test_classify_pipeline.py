"""`embedlake classify --predict` on the session's Ray: the figures are scikit-learn's, and T_predictions
holds, for every unlabelled row, what the same classifier fitted on the labelled rows predicts."""

from __future__ import annotations

import lancedb
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from operators.classify import LABEL, PROBABILITY, is_labelled
from operators.schema import DENSE, ID
from tests.cli_runs import cli_error, cli_result
from tests.test_classify import labelled_table

pytestmark = pytest.mark.ray


def test_cli_scores_columns_and_writes_predictions(ray_session, tmp_path):
    table, _ = labelled_table(200, seed=9)
    lancedb.connect(str(tmp_path)).create_table("docs", table)
    result = cli_result("classify", str(tmp_path), "--table", "docs", "--labels-column", "section", "--folds", "4",
                        "--seed", "5", "--predict", "--json")
    keep = is_labelled(table.column("section"))
    labelled, unlabelled = table.filter(keep), table.filter(~keep)
    y = np.asarray(labelled.column("section").to_pylist(), dtype=object)
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=5)
    for column in (DENSE, "dense_8"):
        x = np.stack(labelled.column(column).to_numpy(zero_copy_only=False))
        expected = cross_val_score(LogisticRegression(class_weight="balanced", random_state=5), x, y, cv=folds)
        assert result[column]["accuracy"] == pytest.approx(expected.mean(), abs=1e-12)
    assert "tfidf" in result and result["predict"]["column"] in (DENSE, "dense_8")

    column = result["predict"]["column"]
    model = LogisticRegression(class_weight="balanced", random_state=5)
    model.fit(np.stack(labelled.column(column).to_numpy(zero_copy_only=False)), y)
    probabilities = model.predict_proba(np.stack(unlabelled.column(column).to_numpy(zero_copy_only=False)))
    written = lancedb.connect(str(tmp_path)).open_table("docs_predictions").to_arrow().sort_by(ID)
    order = np.argsort(np.asarray(unlabelled.column(ID).to_pylist()))
    assert written.schema.names == [ID, LABEL, PROBABILITY]
    assert written.column(ID).to_pylist() == [unlabelled.column(ID)[int(i)].as_py() for i in order]
    assert written.column(LABEL).to_pylist() == model.classes_[probabilities.argmax(axis=1)][order].tolist()
    np.testing.assert_allclose(written.column(PROBABILITY).to_numpy(), probabilities.max(axis=1)[order], rtol=1e-5)
    assert result["predict"]["unlabelled_rows"] == result["predict"]["rows_written"] == unlabelled.num_rows


def test_cli_errors_are_one_line(tmp_path):
    table, _ = labelled_table(40)
    lancedb.connect(str(tmp_path)).create_table("docs", table)
    assert "no column 'topic'" in cli_error("classify", str(tmp_path), "--table", "docs", "--labels-column", "topic",
                                            alone=True)
    assert "required: --labels-column" in cli_error("classify", str(tmp_path), "--table", "docs", status=2,
                                                    alone=True)
