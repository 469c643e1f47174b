"""Clustering operators: spherical k-means fit / assign, metrics equal sklearn's, topics recovered."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
    v_measure_score,
)

from operators.cluster import (
    CentroidAssigner,
    KMeansConfig,
    assign,
    cluster_sizes,
    fit_spherical_kmeans,
    internal_metrics,
    label_metrics,
)
from operators.cluster_plots import plot_projection, plot_sizes
from operators.schema import CLUSTER, DENSE, DISTANCE, ID
from operators.vectors import normalize_rows, to_vector_array
from tests.corpus import SECTIONS, build_corpus


def blobs(n_per: int, k: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around k random directions: a clustering with a known answer."""
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.normal(size=(k, dim)))
    labels = np.repeat(np.arange(k), n_per)
    return normalize_rows(centres[labels] + spread * rng.normal(size=(k * n_per, dim))), labels


@pytest.fixture(scope="module")
def corpus(sample_dir, minilm_path):
    return build_corpus(str(sample_dir), minilm_path)


def test_fit_gives_k_unit_centroids_and_is_seeded():
    x, _ = blobs(50, 5, 16, 0.3, seed=0)
    first = fit_spherical_kmeans(x, KMeansConfig(k=5, seed=3))
    again = fit_spherical_kmeans(x, KMeansConfig(k=5, seed=3))
    assert first.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, again)


def test_fit_recovers_well_separated_blobs():
    x, labels = blobs(40, 6, 32, 0.2, seed=1)
    clusters, _ = assign(x, fit_spherical_kmeans(x, KMeansConfig(k=6, nredo=3)))
    assert normalized_mutual_info_score(labels, clusters) > 0.99


def test_assign_is_the_nearest_centroid_by_cosine():
    x, _ = blobs(30, 4, 8, 0.8, seed=2)
    centroids = normalize_rows(np.random.default_rng(5).normal(size=(7, 8)))
    clusters, distances = assign(x * 3.0, centroids)  # unnormalised input: cosine, not dot product
    sims = x @ centroids.T
    np.testing.assert_array_equal(clusters, sims.argmax(axis=1))
    np.testing.assert_allclose(distances, 1.0 - sims.max(axis=1), atol=1e-5)


def test_fit_rejects_more_clusters_than_rows():
    x, _ = blobs(2, 2, 4, 0.1, seed=0)
    with pytest.raises(ValueError, match="cannot fit k=5 clusters on 4 rows"):
        fit_spherical_kmeans(x, KMeansConfig(k=5))
    with pytest.raises(ValueError, match="k must be at least 1"):
        KMeansConfig(k=0)


def test_centroid_assigner_is_a_batch_transform():
    x, _ = blobs(10, 3, 8, 0.2, seed=4)
    centroids = fit_spherical_kmeans(x, KMeansConfig(k=3))
    batch = pa.table({ID: [f"r{i}" for i in range(30)], DENSE: to_vector_array(x), "section": ["s"] * 30})
    out = CentroidAssigner(centroids, DENSE, ("section",))(batch)
    assert out.column_names == [ID, CLUSTER, DISTANCE, "section"]
    clusters, distances = assign(x, centroids)
    np.testing.assert_array_equal(out.column(CLUSTER).to_numpy(), clusters)
    np.testing.assert_allclose(out.column(DISTANCE).to_numpy(), distances)


def test_internal_metrics_equal_sklearn():
    x, labels = blobs(40, 4, 16, 0.6, seed=6)
    clusters, _ = assign(x, fit_spherical_kmeans(x, KMeansConfig(k=4)))
    ours = internal_metrics(x, clusters)
    assert ours["silhouette"] == pytest.approx(silhouette_score(x, clusters, metric="cosine"), abs=1e-6)
    assert ours["davies_bouldin"] == pytest.approx(davies_bouldin_score(x, clusters), abs=1e-6)
    sampled = internal_metrics(x, clusters, silhouette_sample=50, seed=9)
    expected = silhouette_score(x, clusters, metric="cosine", sample_size=50, random_state=9)
    assert sampled["silhouette"] == pytest.approx(expected, abs=1e-6)


def test_internal_metrics_are_none_when_undefined():
    x, _ = blobs(5, 1, 4, 0.1, seed=0)
    assert internal_metrics(x, np.zeros(5, dtype=int)) == {"silhouette": None, "davies_bouldin": None}


def test_label_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    predicted = np.where(rng.random(200) < 0.7, truth, rng.integers(0, 5, 200))
    ours = label_metrics(truth, predicted)
    assert ours["nmi"] == pytest.approx(normalized_mutual_info_score(truth, predicted))
    assert ours["ari"] == pytest.approx(adjusted_rand_score(truth, predicted))
    assert ours["v_measure"] == pytest.approx(v_measure_score(truth, predicted))
    assert cluster_sizes(predicted, 6).tolist() == np.bincount(predicted, minlength=6).tolist()


def test_topics_recovered_like_sklearn_kmeans(corpus):
    """MiniLM vectors of four Debian sections: spherical k-means finds the sections about as well as
    sklearn's KMeans on the same vectors, far above chance."""
    rows = corpus.table.to_pylist()
    originals = [i for i, row in enumerate(rows) if "~" not in row[ID]]
    x = corpus.vectors[originals]
    sections = np.array([rows[i]["section"] for i in originals])
    assert set(sections) == set(SECTIONS)

    clusters, _ = assign(x, fit_spherical_kmeans(x, KMeansConfig(k=4, nredo=10)))
    ours = label_metrics(sections, clusters)
    sklearn_nmi = normalized_mutual_info_score(sections, KMeans(4, n_init=10, random_state=0).fit_predict(x))
    chance = normalized_mutual_info_score(sections, np.random.default_rng(0).permutation(clusters))
    assert ours["nmi"] > 0.7
    assert ours["nmi"] > sklearn_nmi - 0.1
    assert chance < 0.05
    assert ours["ari"] > 0.6


def test_plots_are_pngs(tmp_path):
    x, labels = blobs(30, 3, 8, 0.3, seed=0)
    clusters, _ = assign(x, fit_spherical_kmeans(x, KMeansConfig(k=3)))
    sizes = plot_sizes(cluster_sizes(clusters, 3), str(tmp_path / "sizes.png"), "t")
    projection = plot_projection(x, clusters, str(tmp_path / "proj.png"), "t", labels=labels)
    for path in (sizes, projection):
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
