"""One query through every method: the rows that the Compare tab, `python -m retrieval compare` and
its --plot show side by side.

The query is decoded once and turned into each source's vector once (pixels; the embedding), then
ranked by every method. Where the query's class is known (a library image, a test-split image, or a
class the caller gives) each hit is marked right or wrong, and each row carries P@k and the AP of
this one query over the whole ranking (so rows compare on their full orderings, as in evaluate).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import LookalikeError
from .evaluate import average_precision
from .images import QUERY_SIDE, ImageSource, load_image, resize_pixels
from .metrics import METRICS
from .methods import Kind, Method
from .search import Hit, LookalikeIndex, check_k

# Why a query's class is not known (Comparison.label_from when label is None), in words for a reader.
UNKNOWN = "unknown"                              # an image that is not in the library, nor a test image
NO_CLASSES = "no classes in this library"        # an unlabelled library: nothing to mark right or wrong
UNLABELLED_IMAGE = "a library image without a class"


@dataclass(frozen=True)
class Row:
    """One method's answer to the query."""

    method: str
    kind: str                  # the method's family, Method.kind's value
    hits: list[Hit]
    correct: list[bool] | None # per hit, where the query's class is known
    p_at_k: float | None
    ap: float | None
    ms: float
    scale: str                 # what the scores mean, in words


@dataclass(frozen=True)
class Comparison:
    label: str | None          # the query's class, where known
    label_from: str            # how it is known ("library image", "test split", "given"), else why not
                               # (UNKNOWN, NO_CLASSES, UNLABELLED_IMAGE)
    thumbnail: np.ndarray      # the size x size RGB pixels the pixel metrics compare
    rows: list[Row]


def scale_text(m: Method) -> str:
    """How to read a method's scores (the Compare tab and the CLI print it beside the numbers)."""
    if m.kr:
        return "1 − the k-reciprocal mixed distance after DBA + QE (1 = the same image)"
    if m.reranked:
        return "cosine after " + " + ".join(x for x, on in (("DBA", m.dba), ("QE", m.qe)) if on) + ", on −1..1 (1 = same direction)"
    if m.hnsw:
        return "Chroma cosine similarity 1 − distance, on −1..1" if m.metric == "cosine" else \
            "Chroma squared Euclidean distance (sum over dimensions), 0 = identical"
    return {"l1": "sum of |differences|" + (" (and mean per channel on 0–255)" if m.source == "pixel" else ""),
            "l2": "mean of squared differences" + (" (and its root on 0–255)" if m.source == "pixel" else ""),
            "cosine": "cosine on −1..1 (1 = same direction)",
            "corr": "Pearson correlation on −1..1 (1 = same pattern)"}[m.metric]


RIGHT_COLOUR, WRONG_COLOUR = "#1a9850", "#d73027"   # frames of right / wrong results (page and plots)


def readable_score(m: Method, score: float, dims: int, *, short: bool = False) -> str:
    """A score as a visitor can read it (the raw score stays in the data view and the API): cosine,
    correlation and re-ranked scores as a percentage; pixel L1 as the mean difference per colour
    value and pixel L2 as its root mean square, on the 0-255 scale; other distances as they are
    (0 = the same). readable_legend says it in words. `short`: for a small thumbnail's caption."""
    if m.reranked or m.metric in ("cosine", "corr"):
        return f"{100 * score:.0f}%"
    if m.source == "pixel" and m.metric == "l1" and not m.hnsw:
        return f"Δ{score / dims:.0f}" + ("" if short else "/255")
    if m.source == "pixel" and m.metric == "l2":
        rms = float(np.sqrt(max(score, 0.0)))
        return f"Δ{rms:.0f}" + ("" if short else "/255 RMS")
    return f"d {score:.2g}"


def readable_legend(m: Method) -> str:
    """What readable_score's numbers mean, in a visitor's words."""
    if m.kr:
        return "% = similarity after k-reciprocal re-ranking (100% = the same image)"
    if m.reranked or m.metric in ("cosine", "corr"):
        what = "correlation" if m.metric == "corr" and not m.reranked else "cosine similarity"
        return f"% = {what} as a percentage (100% = the same pattern)"
    if m.source == "pixel" and m.metric == "l1" and not m.hnsw:
        return "Δ = mean difference per colour value, on 0–255 (0 = identical)"
    if m.source == "pixel" and m.metric == "l2":
        return "Δ…RMS = root mean square difference per colour value, on 0–255 (0 = identical)"
    return "d = distance (0 = identical)"


def score_text(m: Method, score: float, dims: int) -> str:
    """One score with its scale: L1 as the raw sum and, for pixels, the mean absolute difference
    per channel on 0-255; pixel L2 also as the root-mean-square difference on 0-255."""
    if m.reranked or m.metric in ("cosine", "corr"):
        return f"{score:+.3f}"
    if m.metric == "l1" and m.source == "pixel" and not m.hnsw:
        return f"{score:,.0f} (Δ {score / dims:.1f}/255)"
    if m.metric == "l2" and m.source == "pixel":
        return f"{score:,.0f} (RMS {np.sqrt(max(score, 0.0)):.1f}/255)"
    return f"{score:,.4g}"


def test_labels(index: LookalikeIndex) -> dict[str, str]:
    """Content hash -> class of the test-split images, so a copy of one (a web upload, an example the
    browser sent back) is recognised by its bytes. Empty without a test split."""
    from .errors import LibraryError
    from .library import file_sha256, scan_split
    try:
        items = scan_split(index.data_dir, "test")
    except LibraryError:
        return {}
    return {file_sha256(it.path(index.data_dir)): it.label for it in items if it.label}


@dataclass(frozen=True)
class Marks:
    """Right and wrong for one query's hits: the query's class (or why it is unknown) and, where
    it is known, whether each hit shares it."""

    label: str | None
    label_from: str              # as Comparison.label_from
    correct: list[bool] | None   # per hit, None where the class is unknown

    @property
    def p_at_k(self) -> float | None:
        return None if not self.correct else sum(self.correct) / len(self.correct)


def mark_hits(index: LookalikeIndex, query: ImageSource, hits: Sequence[Hit],
              known: dict[str, str] | None = None) -> Marks:
    """Each hit right or wrong where the query's class is known (query_label), for the search tabs."""
    label, how = query_label(index, query, known=known)
    return Marks(label, how, None if label is None else [h.label == label for h in hits])


def query_label(index: LookalikeIndex, query: ImageSource, given: str | None = None,
                known: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The query's class where it is known: given by the caller, a library image (by content), a
    test-split image (by content, via `known` from test_labels, or by its path under DATA/test/<class>/).
    Else (None, why): the library has no classes at all (NO_CLASSES, whatever the query), the query is
    a library image without one (UNLABELLED_IMAGE), or it is neither (UNKNOWN)."""
    if given:
        return given, "given"
    if not any(index.labels.tolist()):
        return None, NO_CLASSES
    rows = index.self_rows(query)
    if rows and index.labels[min(rows)]:
        return str(index.labels[min(rows)]), "library image"
    why = UNLABELLED_IMAGE if rows else UNKNOWN
    if known:
        from .search import content_sha256
        sha = content_sha256(query)
        if sha in known:
            return known[sha], "test split"
    if isinstance(query, (str, Path)):
        try:
            rel = Path(query).resolve().relative_to((index.data_dir / "test").resolve())
        except ValueError:
            return None, why
        if len(rel.parts) >= 2 and rel.parts[0] in set(index.labels.tolist()):
            return rel.parts[0], "test split"
    return None, why


def _row(index: LookalikeIndex, m: Method, vec: np.ndarray, k: int, skip: set[int],
         label: str | None) -> Row:
    t0 = time.perf_counter()
    full = label is not None
    ranked = index.rank(vec, m, len(index.rels) if full else k, [skip])[0]
    ms = 1000 * (time.perf_counter() - t0)
    hits = index.hits(ranked[:k])
    correct = p = ap = None
    if full:
        rel = index.labels[[i for i, _ in ranked]] == label
        n_rel = int(sum(1 for i in range(len(index.rels)) if index.labels[i] == label and i not in skip))
        correct = [bool(x) for x in rel[:k]]
        p = float(rel[:k].sum() / k)
        ap = average_precision(rel, n_rel)
    return Row(m.name, m.kind.value, hits, correct, p, ap, ms, scale_text(m))


def compare(index: LookalikeIndex, query: ImageSource, methods: Sequence[str] | None = None, k: int = 5,
            *, name: str | None = None, label: str | None = None, exclude_self: bool = True,
            known: dict[str, str] | None = None) -> Comparison:
    """Rank the library for one query by every method (default: all the index offers), pixels first,
    then deep exact, HNSW and re-ranked; the query is decoded and embedded once."""
    k = check_k(k)
    names = list(methods or index.methods)
    parsed = [index.parse_method(x) for x in names]
    if not parsed:
        raise LookalikeError("no methods to compare")
    image = load_image(query, name=name, reduce_to=QUERY_SIDE)
    skip = index.self_rows(query) if exclude_self else set()
    lab, how = query_label(index, query, label, known)
    vectors: dict[str, np.ndarray] = {}
    rows = []
    for m in sorted(parsed, key=lambda m: list(Kind).index(m.kind)):
        if m.source not in vectors:
            vectors[m.source] = index.query_vectors([image], m.source)
        rows.append(_row(index, m, vectors[m.source], k, skip, lab))
    return Comparison(lab, how, resize_pixels(image, index.manifest.pixel_size), rows)


LINE_WIDTH = 100   # the CLI's compare output fits this many columns


def _decimals(scores: Sequence[float]) -> int:
    """Decimals that give the largest |score| four significant digits (none from 1,000 up), so a
    method's scores share one format: 15.39, 17.00, 17.55 rather than 15.39, 17, 17.55."""
    top = max((abs(s) for s in scores if np.isfinite(s)), default=0.0)
    return 3 if top == 0 else int(min(8, max(0, 3 - np.floor(np.log10(top)))))


def score_column(m: Method, scores: Sequence[float], dims: int | None = None, *,
                 thousands: bool = True) -> list[str]:
    """One method's scores in one format (same decimals for all; with `thousands`, 98,387 rather
    than 98387). With `dims` (the pixel vector length) pixel L1 also gives the mean absolute
    difference per channel (Δ) and pixel L2 its root (RMS), both on 0-255, as score_text does."""
    if m.reranked or m.metric in ("cosine", "corr"):
        return [f"{s:+.3f}" for s in scores]
    fmt = f"{',' if thousands else ''}.{_decimals(scores)}f"
    bare = [format(s, fmt) for s in scores]
    if dims is None or m.source != "pixel" or m.metric not in ("l1", "l2") or (m.metric == "l1" and m.hnsw):
        return bare
    if m.metric == "l1":
        return [f"{b} Δ{s / dims:.1f}" for b, s in zip(bare, scores)]
    return [f"{b} RMS{np.sqrt(max(s, 0.0)):.1f}" for b, s in zip(bare, scores)]


def shorten(text: str, width: int) -> str:
    """Text cut to `width` with an ellipsis in the middle, so a file name keeps its end."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 3
    return text[:width - 1 - tail] + "…" + text[len(text) - tail:]


def _hit_lines(cells: Sequence[str], indent: str = "    ", sep: str = " | ") -> list[str]:
    """The hit cells packed into lines of at most LINE_WIDTH columns."""
    lines, line = [], ""
    for cell in cells:
        cell = shorten(cell, LINE_WIDTH - len(indent))
        if line and len(indent) + len(line) + len(sep) + len(cell) > LINE_WIDTH:
            lines.append(indent + line)
            line = ""
        line += (sep if line else "") + cell
    return lines + [indent + line]


def _legend(index: LookalikeIndex, result: Comparison, dims: int) -> list[str]:
    """What the marks and the scores mean, wrapped to LINE_WIDTH."""
    import textwrap
    parsed = [index.parse_method(r.method) for r in result.rows]
    text = "+ right class, - wrong class. " if any(r.correct is not None for r in result.rows) else ""
    text += "Scores: " + "; ".join(sorted(f"{n} = {METRICS[n].formula}" for n in METRICS)) + "."
    if any(m.source == "pixel" and m.metric == "l1" and not m.hnsw for m in parsed):
        text += f" Δ = pixel l1 per channel on 0–255 (the sum / {dims:,})."
    if any(m.source == "pixel" and m.metric == "l2" for m in parsed):
        text += " RMS = the root of pixel l2, on 0–255."
    if any(m.hnsw and m.metric == "l2" and not m.reranked for m in parsed):
        text += " HNSW l2 = Chroma's squared distance, a sum over the dimensions."
    return textwrap.wrap(text, LINE_WIDTH, subsequent_indent="  ")


def format_rows(index: LookalikeIndex, result: Comparison) -> str:
    """The rows as plain text for the CLI's `compare`, every line within LINE_WIDTH columns: per method
    a line with its kind, P@k, this query's AP and the time, then its hits (class, or the file name in
    an unlabelled library; + / - where the query's class is known) with their scores, wrapped."""
    dims = index.manifest.pixel_size ** 2 * 3
    k = max(len(r.hits) for r in result.rows)
    rest = f" ({result.label_from}); top {k} of each method"
    lines = [f"# query class: {shorten(result.label or 'unknown', max(12, LINE_WIDTH - 15 - len(rest)))}{rest}"]
    name_w, kind_w = (max(len(getattr(r, f)) for r in result.rows) for f in ("method", "kind"))
    stats_w = len(f"P@{k} 0.00  AP 0.000")
    for r in result.rows:
        stats = "" if r.ap is None else f"P@{len(r.hits)} {r.p_at_k:.2f}  AP {r.ap:.3f}"
        lines.append(f"{r.method:<{name_w}}  {r.kind:<{kind_w}}  {stats:>{stats_w}}  {r.ms:7.1f} ms".rstrip())
        scores = score_column(index.parse_method(r.method), [h.score for h in r.hits], dims)
        marks = [""] * len(r.hits) if r.correct is None else ["+" if c else "-" for c in r.correct]
        lines += _hit_lines([f"{mark}{shorten(h.label or Path(h.rel).name, 24)} {score}"
                             for mark, h, score in zip(marks, r.hits, scores)])
    return "\n".join(lines + _legend(index, result, dims))
