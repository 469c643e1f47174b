"""The training report's plot: held-out quality at each nested size (base vs trained), and the loss curve."""

from __future__ import annotations

from operators.figures import save_figure
from operators.metrics import METRICS, metric_name
from operators.schema import DENSE, nested_dim


def size_of(column: str, full: int) -> int:
    return full if column == DENSE else int(nested_dim(column))


def plot_training(summary: dict, path: str) -> str:
    """Write the PNG and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (quality, loss) = plt.subplots(1, 2, figsize=(12, 4.6))
    evaluation = summary.get("evaluation") or {}
    k = evaluation.get("k", 10)
    full = max(summary.get("dims") or [0])
    for label, style in (("base", "--"), ("trained", "-")):
        results = evaluation.get(label) or {}
        points = sorted((size_of(column, full), entry) for column, entry in results.items())
        for metric, color in zip(METRICS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
            name = metric_name(metric, k)
            quality.plot([size for size, _ in points], [entry[name] for _, entry in points], style, marker="o",
                         color=color, label=f"{label} {name}")
    if evaluation:
        quality.set_xscale("log", base=2)
        quality.set_xticks(sorted(summary["dims"]), [str(d) for d in sorted(summary["dims"])])
    quality.set_xlabel("nested size (dims)")
    quality.set_ylabel("held-out quality")
    quality.set_title(f"held-out pairs ({summary.get('evaluated_pairs', 0)}): base vs trained")
    quality.grid(alpha=0.3)
    quality.legend(fontsize=7)
    curve = summary.get("loss") or []
    loss.plot([point["epoch"] for point in curve], [point["loss"] for point in curve], color="tab:red")
    loss.set_xlabel("epoch")
    loss.set_ylabel("Matryoshka loss (sum over sizes)")
    loss.set_title(f"training loss ({summary.get('steps', 0)} steps, {summary.get('workers', 1)} worker(s))")
    loss.grid(alpha=0.3)
    return save_figure(figure, path)
