"""Drawing an Explanation: the query and the result side by side, each map laid over its image
(upsampled to the part of the image it covers), a colour key that says what hot means, and the
formula under them. Matplotlib's object API with the Agg canvas (no pyplot state), so the app's
worker threads can draw at once; the same inputs give the same pixels.
"""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize

    from .explain import Box, Explanation

WIDTH_IN, DPI = 10.0, 100          # 1000 px wide
SHOW_SIDE = 640                    # images are drawn from a copy no larger than this
MAP_ALPHA = 0.55
WRAP = 128                         # characters per text line at the figure's width
LINE_IN = 0.2                      # inches per line of text


def colour_key(expl: Explanation) -> str:
    """What the colours mean, for the key beside the maps."""
    if expl.key:
        return expl.key
    if expl.similarity_map:
        return "cosine with the other image's vector\nhot = agrees most"
    if expl.shown.metric in ("l1", "l2"):
        unit = "|difference|" if expl.shown.metric == "l1" else "squared difference / values"
        return f"{unit} in the cell (R+G+B)\nhot = differs most"
    if expl.shown.metric == "corr":
        return "the cell's share of the correlation\nred = agrees most, blue = disagrees"
    return "the cell's share of the cosine\nhot = agrees most"


def _norm(expl: Explanation) -> tuple[str, Normalize]:
    """The colour map and the scale shared by both maps."""
    from matplotlib.colors import Normalize, TwoSlopeNorm
    both = np.concatenate([expl.query_map.ravel(), expl.result_map.ravel()]).astype(np.float64)
    lo, hi = float(both.min()), float(both.max())
    if not expl.similarity_map and expl.shown.metric == "corr":
        m = max(abs(lo), abs(hi), 1e-12)
        return "RdBu_r", TwoSlopeNorm(0.0, -m, m)
    lo = min(lo, 0.0)   # zero is the coldest colour unless the map goes below it
    return "inferno", Normalize(lo, hi if hi > lo else lo + 1e-6)


def _small(image: Image.Image) -> Image.Image:
    img = image.convert("RGB")
    scale = SHOW_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return img


def _panel(ax: Axes, image: Image.Image, grid: np.ndarray, box: Box, cmap: str, norm: Normalize,
           title: str) -> object:
    """One image with its map over the part it covers; returns the map's artist (for the key)."""
    from matplotlib.patches import Rectangle
    img = _small(image)
    w, h = img.size
    ax.imshow(np.asarray(img), extent=(0, w, h, 0), interpolation="bilinear")
    left, top, right, bottom = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    art = ax.imshow(grid, extent=(left, right, bottom, top), cmap=cmap, norm=norm, alpha=MAP_ALPHA,
                    interpolation="bilinear")
    if box != (0.0, 0.0, 1.0, 1.0):   # the network saw only this part
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, lw=1.5, ls="--", ec="white"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(f"{title}  ({grid.shape[0]}x{grid.shape[1]} map)", fontsize=11)
    ax.axis("off")
    return art


def _text_lines(expl: Explanation) -> tuple[list[str], list[str]]:
    summary = textwrap.wrap(expl.summary, WRAP)
    formula = [part for line in expl.formula.splitlines() for part in (textwrap.wrap(line, WRAP - 10) or [""])]
    return summary, formula


def render(expl: Explanation, query: Image.Image, result: Image.Image) -> Image.Image:
    """The figure as an RGB PIL image, WIDTH_IN * DPI pixels wide."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    summary, formula = _text_lines(expl)
    head_in, maps_in = 0.45 + LINE_IN * len(summary), 4.3
    foot_in = 0.35 + LINE_IN * 1.1 * len(formula)
    total = head_in + maps_in + foot_in
    fig = Figure(figsize=(WIDTH_IN, total), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    score = f"{expl.shown} score {expl.score:,.6g}" if expl.shown != expl.method else f"score {expl.score:,.6g}"
    fig.text(0.02, 1 - 0.3 / total, f"Why this result: {expl.method}  ({score})",
             fontsize=13, fontweight="bold", va="center")
    fig.text(0.02, 1 - 0.5 / total, "\n".join(summary), fontsize=9.5, va="top", linespacing=1.35)
    cmap, norm = _norm(expl)
    bottom, height = foot_in / total, (maps_in - 0.35) / total
    ax_q = fig.add_axes((0.02, bottom, 0.40, height))
    ax_r = fig.add_axes((0.44, bottom, 0.40, height))
    art = _panel(ax_q, query, expl.query_map, expl.query_box, cmap, norm, "query")
    _panel(ax_r, result, expl.result_map, expl.result_box, cmap, norm, "result")
    cax = fig.add_axes((0.87, bottom + 0.1 * height, 0.018, 0.8 * height))
    bar = fig.colorbar(art, cax=cax)   # type: ignore[arg-type]
    bar.ax.tick_params(labelsize=8)
    bar.set_label(colour_key(expl), fontsize=9)
    fig.text(0.02, (foot_in - 0.2) / total, "\n".join(formula), fontsize=9.5, family="monospace",
             va="top", linespacing=1.45)
    canvas = fig.canvas
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())   # type: ignore[attr-defined]
    return Image.fromarray(rgba[..., :3].copy(), "RGB")
