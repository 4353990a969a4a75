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


def plot_comparison(query: Path, result, index, out: Path) -> Path:
    """`plot_results` repeated per method: one row per method (query, then its top k), each hit
    titled with class and score, its frame green when right and red when wrong (class known)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .compare import RIGHT_COLOUR, WRONG_COLOUR, score_text

    rows = result.rows
    cols = max(len(r.hits) for r in rows) + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, 2.25 * len(rows)), squeeze=False)
    q = load_image(query)
    dims = index.manifest.pixel_size ** 2 * 3
    for ax_row, row in zip(axes, rows):
        m = index.parse_method(row.method)
        ax_row[0].imshow(q)
        stats = "" if row.ap is None else f"\nP@{len(row.hits)} {row.p_at_k:.2f} AP {row.ap:.2f}"
        ax_row[0].set_title(f"{row.method}{stats}", fontsize=7)
        for j, ax in enumerate(ax_row[1:]):
            if j >= len(row.hits):
                ax.set_visible(False)
                continue
            hit = row.hits[j]
            ax.imshow(load_image(hit.path))
            ax.set_title(f"#{hit.rank} {hit.label}\n{score_text(m, hit.score, dims)}", fontsize=7)
            if row.correct is not None:
                colour = RIGHT_COLOUR if row.correct[j] else WRONG_COLOUR
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(4)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"query class: {result.label or 'unknown'}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / len(rows)))   # room for the title above the first row
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
