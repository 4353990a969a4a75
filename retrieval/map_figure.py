"""The library maps as one picture: a panel per source (pixels | deep), points coloured by class,
the neighbour agreement printed on each panel, and a placed query drawn as a star with its top k
ringed. Used by the command line (saved as PNG) and the app (shown as is, clicks mapped back to
library rows through `MapGeometry` and `point_at`).

The figure is drawn with matplotlib's Agg canvas at a fixed size and dpi, and read back as pixels,
so every point's position in the returned image is known exactly: `MapGeometry` holds them. Points
are small and rasterised, so 60,000 of them draw in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .projection import NEIGHBOURS, LibraryMap, Placed

PANEL_INCHES = 5.0
DPI = 100
REACH_PX = 8.0          # a click farther than this from every point selects none
STAR = "#000000"


@dataclass(frozen=True)
class Panel:
    source: str
    box: tuple[float, float, float, float]   # left, top, right, bottom in image pixels
    points: np.ndarray                        # (N, 2) float32 image pixel coordinates (x right, y down)


@dataclass(frozen=True)
class MapGeometry:
    """Where each library point lies in the figure image, per panel."""

    size: tuple[int, int]          # the image's (width, height)
    panels: tuple[Panel, ...]
    reach: float = REACH_PX


def _colours(labels: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(per-point RGBA, class names, their RGBA) with a qualitative colour per class; one colour
    when there are no classes."""
    from matplotlib import colormaps
    names = sorted({str(x) for x in labels if x})
    if len(names) < 2:
        return np.tile(np.array([0.2, 0.4, 0.7, 1.0]), (len(labels), 1)), [], np.zeros((0, 4))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    palette = np.array([cmap(i % cmap.N) for i in range(len(names))])
    if len(names) > cmap.N:   # more classes than colours: spread them over a continuous map
        palette = colormaps["turbo"](np.linspace(0.05, 0.95, len(names)))
    index = {name: i for i, name in enumerate(names)}
    grey = np.array([0.6, 0.6, 0.6, 1.0])
    rgba = np.array([palette[index[str(x)]] if x else grey for x in labels])
    return rgba, names, palette


def _caption(m: LibraryMap) -> str:
    if m.agreement is None:
        return "no classes: no neighbour agreement"
    text = f"{NEIGHBOURS}-NN share the class: {m.agreement:.0%}"
    if m.map_agreement is not None:
        text += f"\non the map: {m.map_agreement:.0%}"
    return text


def _draw_panel(ax, m: LibraryMap, rgba: np.ndarray, placed: Placed | None) -> None:
    n = len(m.xy)
    size = float(np.clip(6000 / max(n, 1), 0.5, 30))   # marker area shrinks as the library grows
    ax.scatter(m.xy[:, 0], m.xy[:, 1], s=size, c=rgba, linewidths=0, rasterized=True)
    lo, hi = m.xy.min(axis=0), m.xy.max(axis=0)
    pad = (hi - lo) * 0.04 + 1e-6
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(m.title, fontsize=12)
    ax.text(0.02, 0.98, _caption(m), transform=ax.transAxes, va="top", ha="left", fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "#999999"})
    if placed is not None:
        top = m.xy[placed.top_rows] if placed.top_rows else np.zeros((0, 2))
        ax.scatter(top[:, 0], top[:, 1], s=140, facecolors="none", edgecolors=STAR, linewidths=1.6, zorder=3)
        ax.scatter([placed.xy[0]], [placed.xy[1]], s=420, marker="*", c="#ffd400", edgecolors=STAR,
                   linewidths=1.4, zorder=4)


def map_figure(maps: Sequence[LibraryMap], labels: Sequence[str],
               placed: Sequence[Placed] = ()) -> tuple[Image.Image, MapGeometry]:
    """The maps side by side (RGB image) and where each point landed in it (for `point_at`)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D
    rgba, names, palette = _colours(labels)
    legend_rows = -(-(len(names) + 2 * bool(placed)) // 5)
    fig = Figure(figsize=(PANEL_INCHES * len(maps), PANEL_INCHES + 0.3 + 0.25 * legend_rows), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    by_source = {p.source: p for p in placed}
    for ax, m in zip(axes, maps):
        _draw_panel(ax, m, rgba, by_source.get(m.source))
    bottom = (0.3 + 0.25 * legend_rows) / (PANEL_INCHES + 0.3 + 0.25 * legend_rows) + 0.01
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=bottom, wspace=0.04)
    handles = [Line2D([], [], marker="o", linestyle="", color=palette[i], label=name) for i, name in enumerate(names)]
    if placed:
        k = max(len(p.top_rows) for p in placed)
        handles += [Line2D([], [], marker="*", markersize=14, linestyle="", color="#ffd400", markeredgecolor=STAR,
                           label="the query"),
                    Line2D([], [], marker="o", markersize=9, linestyle="", markerfacecolor="none",
                           markeredgecolor=STAR, label=f"its top {k}")]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=9, frameon=False)
    canvas.draw()
    width, height = canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba()).convert("RGB")
    return image, MapGeometry((width, height), tuple(_panel(ax, m, height) for ax, m in zip(axes, maps)))


def _panel(ax, m: LibraryMap, height: int) -> Panel:
    """The panel's box and its points in image pixels (matplotlib counts y from the bottom)."""
    disp = ax.transData.transform(np.asarray(m.xy, dtype=np.float64))
    points = np.column_stack([disp[:, 0], height - disp[:, 1]]).astype(np.float32)
    (x0, y0), (x1, y1) = ax.bbox.get_points()
    return Panel(m.source, (float(x0), float(height - y1), float(x1), float(height - y0)), points)


def point_at(geometry: MapGeometry, x: float, y: float) -> int | None:
    """The library row whose point is nearest a click at (x, y) in the figure image's pixels; None
    outside the panels or farther than `geometry.reach` from every point."""
    for panel in geometry.panels:
        left, top, right, bottom = panel.box
        if left <= x <= right and top <= y <= bottom and len(panel.points):
            d2 = (panel.points[:, 0] - x) ** 2 + (panel.points[:, 1] - y) ** 2
            row = int(np.argmin(d2))
            return row if d2[row] <= geometry.reach ** 2 else None
    return None
