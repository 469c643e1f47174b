"""The clustering job and `embedlake cluster`: every row assigned through Ray Data, tables, metrics, PNGs."""

from __future__ import annotations

import json
import os

import lancedb
import numpy as np
import pytest

from operators.cluster import assign, label_metrics
from operators.schema import CENTROID, CLUSTER, DISTANCE, ID, SIZE
from operators.vectors import as_matrix
from pipelines.cluster import ClusterJob, run_cluster
from tests.cli_runs import cli_error, cli_result
from tests.corpus import NESTED_DIM, column

pytestmark = pytest.mark.ray

INTERFACE_KEYS = {"k", "rows", "silhouette", "davies_bouldin", "sizes"}
LABEL_KEYS = {"nmi", "ari", "v_measure"}


def test_every_row_assigned_in_parallel_and_scored(ray_session, sections_lake, sections):
    result = run_cluster(ClusterJob(uri=sections_lake, table="docs", k=4, labels_column="section", nredo=5))
    db = lancedb.connect(sections_lake)
    clusters = db.open_table("docs_clusters").to_arrow().sort_by(ID)
    centroids = db.open_table("docs_centroids").to_arrow().sort_by(CLUSTER)
    docs = sections.table.sort_by(ID)

    assert column(clusters, ID) == column(docs, ID)
    # The Ray Data pass gives what the in-process operator gives with the stored centroids.
    expected_clusters, expected_distances = assign(
        as_matrix(docs.column("dense")), as_matrix(centroids.column(CENTROID))
    )
    np.testing.assert_array_equal(clusters.column(CLUSTER).to_numpy(), expected_clusters)
    np.testing.assert_allclose(clusters.column(DISTANCE).to_numpy(), expected_distances, atol=1e-6)
    assert column(centroids, SIZE) == np.bincount(expected_clusters, minlength=4).tolist() == result["sizes"]

    assert INTERFACE_KEYS | LABEL_KEYS <= set(result)
    assert result["rows"] == docs.num_rows and result["k"] == 4
    scored = label_metrics(column(docs, "section"), expected_clusters)
    assert result["nmi"] == pytest.approx(scored["nmi"]) and result["nmi"] > 0.7
    assert result["ari"] == pytest.approx(scored["ari"])
    assert -1 <= result["silhouette"] <= 1 and result["davies_bouldin"] > 0
    assert result["metrics_sample_rows"] == docs.num_rows  # small table: the metrics cover every row

    report = os.path.join(sections_lake, "docs_cluster_report")
    assert result["plots"] == {
        "sizes": os.path.join(report, "cluster_sizes.png"),
        "projection": os.path.join(report, "projection.png"),
    }
    for path in result["plots"].values():
        assert os.path.getsize(path) > 1000
    with open(result["report"]) as handle:
        assert json.load(handle)["sizes"] == result["sizes"]


def test_cli_clusters_a_nested_column(ray_session, sections_lake, tmp_path):
    column_name = f"dense_{NESTED_DIM}"
    result = cli_result("cluster", sections_lake, "--table", "docs", "--k", "4", "--column", column_name,
                        "--labels-column", "section", "--plot-dir", str(tmp_path), "--json")
    assert INTERFACE_KEYS | LABEL_KEYS <= set(result)
    assert result["column"] == column_name and sum(result["sizes"]) == result["rows"]
    assert result["nmi"] > 0.5
    assert os.path.exists(tmp_path / "cluster_sizes.png") and os.path.exists(tmp_path / "projection.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--table", "nope", "--k", "3"], "no table 'nope' in "),
        (
            ["--table", "docs", "--k", "3", "--column", "dense_7"],
            "has no column 'dense_7' (vector columns: dense",
        ),
        (["--table", "docs", "--k", "3", "--column", "section"], "not a fixed-size float vector"),
        (["--table", "docs", "--k", "3", "--labels-column", "topic"], "has no column 'topic'"),
        (["--table", "docs", "--k", "100000"], "fewer than k=100000"),
    ],
)
def test_cli_errors_are_one_line(sections_lake, args, message):
    assert message in cli_error("cluster", sections_lake, *args, "--json", alone=True)
