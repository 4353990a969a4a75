"""The seed's `plot_results`: the query beside its top-k results, each titled with class and score."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .images import load_image
from .search import Hit


def plot_results(query: Path, hits: Sequence[Hit], method: str, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(hits) + 1
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 3.0))
    axes[0].imshow(load_image(query))
    axes[0].set_title("query", fontsize=9)
    for ax, hit in zip(axes[1:], hits):
        ax.imshow(load_image(hit.path))
        ax.set_title(f"#{hit.rank} {hit.label}\n{hit.score:.4g}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(method, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
