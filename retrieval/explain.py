"""Why this result: the contribution of each part of two images to the score that ranked them.

Pixel methods compare the two images' resized pixels value by value, so the score is a sum of
per-value terms: |a - b| for L1, (a - b)^2 / D for L2 (the mean of squares), a*b / (|a| |b|) for
cosine and the same on mean-centred values for correlation. Summed over R, G, B at each position
of the index's pixel grid, those terms are the maps (the query's and the result's are the same grid),
and they add up to the search's own score; `formula` writes that sum out with this pair's numbers.

Deep methods pool a network's feature map into one vector (retrieval.explain_deep). For the offline
backbone, GeM pooling with p = 2 lets the cosine split exactly into one share per region of each
image, and the maps are those shares (they add up to the score). For CLIP ViT no such split exists,
and each cell is the cosine between a projected patch token and the other image's vector.

Re-ranked methods (+dba, +qe, +kr) move the vectors with the library's neighbours: their maps show
the base metric (e.g. effnet-cosine) and `summary` says so; approximate (HNSW) methods show the exact
metric they approximate. Image queries only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import LookalikeError
from .images import QUERY_SIDE, ImageSource, load_image
from .methods import PIXEL, Method
from .metrics import EPS, METRICS

if TYPE_CHECKING:
    from .search import LookalikeIndex

Box = tuple[float, float, float, float]   # (left, top, right, bottom) as fractions of an image
WHOLE: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Explanation:
    """One query-result pair explained: two maps, the score and its formula (issue 22's contract).

    Beyond the contract, with defaults: query_box / result_box, the part of each image its map
    covers (pixels: all of it; a network may see a centre crop), as fractions of the image, for
    drawing the map over the right region; and `key`, what the colours mean."""

    method: Method           # the method asked for
    shown: Method            # the metric the maps show: the method itself, or its base metric
    score: float             # the shown metric's score for this pair
    query_map: np.ndarray    # (h, w) float32 over the query
    result_map: np.ndarray   # (h, w) float32 over the result
    signed: bool             # True when terms can be negative
    formula: str             # plain-text lines with this pair's numbers
    summary: str             # what the maps show and how to read the colours
    query_box: Box = field(default=WHOLE)
    result_box: Box = field(default=WHOLE)
    key: str = ""            # what the colours mean, for the figure's colour key ("" : from the metric)

    @property
    def similarity_map(self) -> bool:
        """True for deep similarity maps (hot: agrees most), False for pixel score terms."""
        return not self.shown.pixel


def shown_method(method: Method) -> Method:
    """The metric an explanation can show for `method`: its exact, un-re-ranked base."""
    return method.plain().exact()


def library_row(index: LookalikeIndex, result: str) -> int:
    """The index row of a library image's rel (Hit.rel), or a LookalikeError naming it."""
    if not isinstance(result, str) or not index.holds(result):
        raise LookalikeError(f"{str(result)[:200]!r} is not an image of this library")
    return index.rels.index(result)


def explain(index: LookalikeIndex, query: ImageSource, result: str, method: str | Method, *,
            name: str | None = None) -> Explanation:
    """Why `result` (a library rel) matched `query` under `method`: maps, score and formula.
    The query is decoded as a search decodes it, so the score equals the search's."""
    m = index.parse_method(method)
    row = library_row(index, result)
    shown = shown_method(m)
    image = load_image(query, name=name, reduce_to=QUERY_SIDE)
    if shown.pixel:
        expl = explain_pixels(index, image, row, shown)
    else:
        from .explain_deep import explain_deep
        expl = explain_deep(index, image, row, shown)
    if shown == m:
        return expl
    return Explanation(m, shown, expl.score, expl.query_map, expl.result_map, expl.signed, expl.formula,
                       f"{why_base(m, shown)} {expl.summary}", expl.query_box, expl.result_box, expl.key)


def why_base(method: Method, shown: Method) -> str:
    """The sentence that says why the maps show another metric than the one asked for."""
    if method.reranked:
        return (f"{method} re-ranks with the library's nearest neighbours, which no single pair "
                f"explains; the maps and the formula show its base metric, {shown}.")
    return f"{method} is an approximate search; the maps and the formula show the exact {shown}."


# -- terms and formulas --------------------------------------------------------------------------
def score_terms(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Per-value terms (float64, a's shape) whose sum is the metric's score for vectors a and b,
    written as retrieval.metrics computes it (the same EPS guard)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "l1":
        return np.abs(x - y)
    if metric == "l2":
        return (x - y) ** 2 / x.size
    if metric == "corr":
        x, y = x - x.mean(), y - y.mean()
    elif metric != "cosine":
        raise LookalikeError(f"unknown metric {metric!r}")
    return x * y / (np.sqrt((x * x).sum()) * np.sqrt((y * y).sum()) + EPS)


@dataclass(frozen=True)
class Numbers:
    """The numbers a formula is written with (all float64, from the two vectors)."""

    values: int
    total: float      # l1: sum |a - b|; l2: sum (a - b)^2; cosine/corr: the (centred) dot product
    norm_a: float = 0.0
    norm_b: float = 0.0
    mean_a: float = 0.0
    mean_b: float = 0.0


def numbers(a: np.ndarray, b: np.ndarray, metric: str) -> Numbers:
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if metric == "l1":
        return Numbers(x.size, float(np.abs(x - y).sum()))
    if metric == "l2":
        return Numbers(x.size, float(((x - y) ** 2).sum()))
    ma, mb = (float(x.mean()), float(y.mean())) if metric == "corr" else (0.0, 0.0)
    xc, yc = x - ma, y - mb
    return Numbers(x.size, float(xc @ yc), float(np.sqrt(xc @ xc)), float(np.sqrt(yc @ yc)), ma, mb)


def formula_score(n: Numbers, metric: str) -> float:
    """The score the formula's numbers give (equal to the search's to float rounding)."""
    if metric == "l1":
        return n.total
    if metric == "l2":
        return n.total / n.values
    return n.total / (n.norm_a * n.norm_b + EPS)


def _g(v: float) -> str:
    """A number as a student would copy it: thousands separated, 6 significant digits."""
    if abs(v) >= 1e5:
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
    return f"{v:,.6g}"


def formula_lines(name: str, n: Numbers, metric: str, *, pixels: bool) -> list[str]:
    """This pair's formula, line by line; pixel differences also on the 0-255 scale."""
    score = formula_score(n, metric)
    if metric in ("l1", "l2"):
        per = n.total / n.values if metric == "l1" else float(np.sqrt(n.total / n.values))
        scale = f" (\u0394{per:.0f}/255)" if pixels else ""
        if metric == "l1":
            return [f"{name} = sum of |query - result| over {n.values:,} values = {_g(n.total)}",
                    f"mean difference per value = {_g(n.total)} / {n.values:,} = {per:.4g}{scale}"]
        return [f"{name} = mean of (query - result)^2 over {n.values:,} values",
                f"= {_g(n.total)} / {n.values:,} = {_g(score)}",
                f"root mean square difference = sqrt({_g(score)}) = {per:.4g}{scale}"]
    lines = [f"{name} = (q . r) / (|q| |r|)"]
    if metric == "corr":
        lines = [f"{name} = (q . r) / (|q| |r|), q and r centred on their means "
                 f"({n.mean_a:.4g} and {n.mean_b:.4g}, over {n.values:,} values)"]
    return lines + [f"q . r = {_g(n.total)}   |q| = {_g(n.norm_a)}   |r| = {_g(n.norm_b)}",
                    f"= {_g(n.total)} / ({_g(n.norm_a)} x {_g(n.norm_b)}) = {score:.6f}"]


# -- pixels ----------------------------------------------------------------------------------------
def pixel_vectors(index: LookalikeIndex, image: Image.Image, row: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, result) pixel vectors as the search compares them: the query resized as a search
    resizes it, the result the index's own row."""
    return index.query_vectors([image], PIXEL)[0], np.asarray(index.pixels.data[row])


def explain_pixels(index: LookalikeIndex, image: Image.Image, row: int, shown: Method) -> Explanation:
    """Pixel methods: per-position terms of the score on the index's pixel grid (both maps alike)."""
    size = index.manifest.pixel_size
    q, r = pixel_vectors(index, image, row)
    score = float(index.matrix(PIXEL).scores(q, shown.metric)[row])
    grid = score_terms(q, r, shown.metric).reshape(size, size, 3).sum(axis=2).astype(np.float32)
    n = numbers(q, r, shown.metric)
    lines = formula_lines(str(shown), n, shown.metric, pixels=True)
    lines.append(f"the {size}x{size} cells of the maps add up to {score:.6g}, the search's score "
                 f"({METRICS[shown.metric].order})")
    return Explanation(shown, shown, score, grid, grid.copy(), shown.metric in ("cosine", "corr"),
                       "\n".join(lines), pixel_summary(shown, size))


def pixel_summary(shown: Method, size: int) -> str:
    if shown.metric in ("l1", "l2"):
        what = "absolute" if shown.metric == "l1" else "squared"
        return (f"Both images are shrunk to {size}x{size} pixels and compared spot by spot: each cell is the "
                f"{what} difference there, summed over red, green and blue. Hot cells differ most and add most "
                "to the distance; the cells add up to the score (lower is more similar).")
    centred = " after subtracting each image's mean brightness" if shown.metric == "corr" else ""
    return (f"Both images are shrunk to {size}x{size} pixels; each cell is that spot's share of the "
            f"normalised dot product{centred}. Hot cells agree most and raise the score; "
            + ("cold cells, where one image is brighter than its mean and the other darker, lower it; "
               if shown.metric == "corr" else "")
            + "the cells add up to the score (higher is more similar).")


def library_image(index: LookalikeIndex, rel: str) -> Image.Image:
    """A library image decoded for display, named by its rel in any error (never a server path)."""
    return load_image(Path(index.paths[library_row(index, rel)]), name=rel)


def explanation_figure(expl: Explanation, query: Image.Image, result: Image.Image) -> Image.Image:
    """The explanation as one RGB image: both images with their maps, a colour key, the formula."""
    from .explain_figure import render
    return render(expl, query, result)
