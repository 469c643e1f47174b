"""Writing matplotlib figures: the one tail every report plot shares."""

from __future__ import annotations

import os


def save_figure(figure, path: str, dpi: int = 110) -> str:
    """Lay out `figure`, write it as PNG (its folder made first), close it (pyplot keeps every open figure
    alive otherwise), and return the path."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
