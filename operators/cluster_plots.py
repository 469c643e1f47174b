"""PNG pictures of a clustering: how big the clusters are, and a 2-D projection of a sample.

Numbers in the JSON say how good a clustering is; the pictures show what it looks like (one giant cluster,
a long tail of tiny ones, topics that overlap). Matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import numpy as np

from operators.figures import save_figure

# Colours beyond this many clusters or labels repeat, so the projection colours the largest ones only.
MAX_COLOURED = 20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sizes(sizes: np.ndarray, path: str, title: str) -> str:
    """Cluster sizes, largest first (bars for small k, a line for large k), with a log axis when they
    span more than two orders of magnitude."""
    plt = _pyplot()
    ordered = np.sort(np.asarray(sizes))[::-1]
    fig, ax = plt.subplots(figsize=(8, 4))
    ranks = np.arange(1, len(ordered) + 1)
    if len(ordered) <= 100:
        ax.bar(ranks, ordered, width=0.8, color="tab:blue")
    else:
        ax.plot(ranks, ordered, color="tab:blue")
        ax.fill_between(ranks, ordered, alpha=0.3, color="tab:blue")
    positive = ordered[ordered > 0]
    if len(positive) and positive.max() > 100 * positive.min():
        ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("rows")
    ax.set_title(f"{title}: {len(ordered)} clusters, {int(ordered.sum())} rows")
    return save_figure(fig, path, dpi=100)


def project_2d(vectors: np.ndarray, seed: int) -> np.ndarray:
    """PCA to 2-D: cheap, deterministic, and honest about distances (no t-SNE artefacts)."""
    from sklearn.decomposition import PCA

    if vectors.shape[0] < 2:
        return np.zeros((vectors.shape[0], 2), dtype=np.float32)
    return PCA(n_components=2, random_state=seed).fit_transform(vectors)


def plot_projection(
    vectors: np.ndarray,
    clusters: np.ndarray,
    path: str,
    title: str,
    labels: np.ndarray | None = None,
    seed: int = 0,
) -> str:
    """Scatter of a sample in 2-D, coloured by cluster (and, beside it, by the known label when given)."""
    plt = _pyplot()
    points = project_2d(np.asarray(vectors, dtype=np.float32), seed)
    panels = [("cluster", np.asarray(clusters))]
    if labels is not None:
        panels.append(("label", np.asarray(labels, dtype=object).astype(str)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels, strict=True):
        _scatter(ax, points, values)
        ax.set_title(f"{title}: sample of {len(points)} coloured by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path, dpi=100)


def _scatter(ax, points: np.ndarray, values: np.ndarray) -> None:
    """The MAX_COLOURED most frequent values in colour (with a legend when few), the rest grey."""
    names, counts = np.unique(values, return_counts=True)
    top = names[np.argsort(-counts, kind="stable")][:MAX_COLOURED]
    rest = ~np.isin(values, top)
    if rest.any():
        ax.scatter(points[rest, 0], points[rest, 1], s=4, c="lightgrey", label="other")
    cmap = _pyplot().get_cmap("tab20")
    for n, name in enumerate(top):
        chosen = values == name
        ax.scatter(points[chosen, 0], points[chosen, 1], s=6, color=cmap(n % 20), label=str(name))
    if len(top) <= 12:
        ax.legend(fontsize=7, markerscale=2, loc="best")
