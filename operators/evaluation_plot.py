"""The evaluation plot: retrieval quality against nested Matryoshka size, and against bytes per vector.

Left: Recall/MRR/nDCG@k of each `dense_<d>` column (and `dense`) against d, with the funnel at each
size (shortlist by dense_<d>, re-rank by dense) for comparison. Right: nDCG@k of every column and mode
against its storage per row, quantised copies (`_int8`, `_bin`) and quantised funnels included, the
trade-off a deployment has to choose on.
"""

from __future__ import annotations

from operators.figures import save_figure
from operators.metrics import METRICS, metric_name

FUNNEL_PREFIX = "funnel_"


def _dense_points(results: dict[str, dict]) -> list[tuple[int, str]]:
    from operators.schema import DENSE, is_dense_column, nested_dim

    points = []
    for name, entry in results.items():
        if name == DENSE:
            points.append((int(entry["bytes_per_vector"] // 4), name))
        elif is_dense_column(name):  # dense_<d>; quantised copies (dense_64_bin) go on the bytes plot only
            points.append((nested_dim(name), name))
    return sorted(points)


def plot_quality(results: dict[str, dict], k: int, path: str, title: str = "") -> str:
    """Write the PNG and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_size, by_bytes) = plt.subplots(1, 2, figsize=(12, 4.6))
    dense = _dense_points(results)
    if dense:
        sizes = [size for size, _name in dense]
        for metric in METRICS:
            key = metric_name(metric, k)
            by_size.plot(sizes, [results[name][key] for _size, name in dense], marker="o", label=key)
        funnel = sorted((int(name[len(FUNNEL_PREFIX):]), name) for name in results
                        if name.startswith(FUNNEL_PREFIX) and name[len(FUNNEL_PREFIX):].isdigit())
        if funnel:
            key = metric_name("ndcg", k)
            by_size.plot([size for size, _ in funnel], [results[name][key] for _, name in funnel], marker="x",
                         linestyle="--", label=f"{key}, funnel -> full re-rank")
        by_size.set_xscale("log", base=2)
        by_size.set_xticks(sizes, [str(size) for size in sizes])
        by_size.set_xlabel("nested size d (dense_<d>; rightmost = dense)")
        by_size.legend()
    else:
        by_size.text(0.5, 0.5, "no dense columns", ha="center", va="center")
    by_size.set_ylabel("quality")
    by_size.set_title("quality vs nested Matryoshka size")
    by_size.grid(True, alpha=0.3)

    key = metric_name("ndcg", k)
    for name, entry in results.items():
        if not isinstance(entry, dict) or key not in entry or not entry.get("bytes_per_vector"):
            continue
        marker = "x" if name.startswith(FUNNEL_PREFIX) else "o"
        by_bytes.scatter(entry["bytes_per_vector"], entry[key], marker=marker)
        by_bytes.annotate(name, (entry["bytes_per_vector"], entry[key]), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
    if isinstance(results.get("dense"), dict) and key in results["dense"]:
        by_bytes.axhline(0.99 * results["dense"][key], linestyle=":", color="grey", label=f"99% of dense {key}")
        by_bytes.legend(loc="lower right", fontsize=8)
    by_bytes.set_xscale("log")
    by_bytes.set_xlabel("bytes per row (float32 dense, int8 / 1 bit a dim quantised, int32+float32 sparse,\n"
                        "ColBERT at its precision; funnel: the column its first stage scans)")
    by_bytes.set_ylabel(key)
    by_bytes.set_title(f"{key} vs storage")
    by_bytes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(f"retrieval quality: {title}")
    return save_figure(figure, path)
