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
from .methods import Method
from .search import Hit, LookalikeIndex, check_k

KIND_ORDER = ("pixels", "deep, exact", "deep, HNSW (Chroma)", "re-ranked")


@dataclass(frozen=True)
class Row:
    """One method's answer to the query."""

    method: str
    kind: str                  # one of KIND_ORDER
    hits: list[Hit]
    correct: list[bool] | None # per hit, where the query's class is known
    p_at_k: float | None
    ap: float | None
    ms: float
    scale: str                 # what the scores mean, in words


@dataclass(frozen=True)
class Comparison:
    label: str | None          # the query's class, where known
    label_from: str            # how it is known ("library image", "test split", "given", "unknown")
    thumbnail: np.ndarray      # the size x size RGB pixels the pixel metrics compare
    rows: list[Row]


def kind(m: Method) -> str:
    if m.reranked:
        return "re-ranked"
    if m.source == "pixel":
        return "pixels"
    return "deep, HNSW (Chroma)" if m.hnsw else "deep, exact"


def scale_text(m: Method) -> str:
    """How to read a method's scores (the Compare tab and the CLI print it beside the numbers)."""
    if m.reranked:
        return "cosine after " + " + ".join(x for x, on in (("DBA", m.dba), ("QE", m.qe)) if on) + ", on −1..1 (1 = same direction)"
    if m.hnsw:
        return "Chroma cosine similarity 1 − distance, on −1..1" if m.metric == "cosine" else \
            "Chroma squared Euclidean distance (sum over dimensions), 0 = identical"
    return {"l1": "sum of |differences|" + (" (and mean per channel on 0–255)" if m.source == "pixel" else ""),
            "l2": "mean of squared differences" + (" (and its root on 0–255)" if m.source == "pixel" else ""),
            "cosine": "cosine on −1..1 (1 = same direction)",
            "corr": "Pearson correlation on −1..1 (1 = same pattern)"}[m.metric]


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


def query_label(index: LookalikeIndex, query: ImageSource, given: str | None = None,
                known: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The query's class where it is known: given by the caller, a library image (by content), a
    test-split image (by content, via `known` from test_labels, or by its path under DATA/test/<class>/)."""
    if given:
        return given, "given"
    rows = index.self_rows(query)
    if rows and index.labels[min(rows)]:
        return str(index.labels[min(rows)]), "library image"
    if known:
        from .search import content_sha256
        sha = content_sha256(query)
        if sha in known:
            return known[sha], "test split"
    if isinstance(query, (str, Path)):
        try:
            rel = Path(query).resolve().relative_to((index.data_dir / "test").resolve())
        except ValueError:
            return None, "unknown"
        if len(rel.parts) >= 2 and rel.parts[0] in set(index.labels.tolist()):
            return rel.parts[0], "test split"
    return None, "unknown"


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
    return Row(m.name, kind(m), hits, correct, p, ap, ms, scale_text(m))


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
    for m in sorted(parsed, key=lambda m: KIND_ORDER.index(kind(m))):
        if m.source not in vectors:
            vectors[m.source] = index.query_vectors([image], m.source)
        rows.append(_row(index, m, vectors[m.source], k, skip, lab))
    return Comparison(lab, how, resize_pixels(image, index.manifest.pixel_size), rows)


def format_rows(index: LookalikeIndex, result: Comparison) -> str:
    """The rows as plain text, one line per method (the CLI's `compare`): hits marked + / - where
    the class is known, then P@k and this query's AP."""
    dims = index.manifest.pixel_size ** 2 * 3
    head = f"# query class: {result.label or 'unknown'} ({result.label_from})"
    width = max(len(r.method) for r in result.rows)
    lines = [head]
    for r in result.rows:
        m = index.parse_method(r.method)
        cells = []
        for i, h in enumerate(r.hits):
            mark = "" if r.correct is None else ("+" if r.correct[i] else "-")
            cells.append(f"{mark}{h.label} {score_text(m, h.score, dims)}")
        stats = "" if r.ap is None else f"P@{len(r.hits)} {r.p_at_k:.2f}  AP {r.ap:.3f}  "
        lines.append(f"{r.method:<{width}}  {stats}{r.ms:6.1f} ms | " + " | ".join(cells))
    lines.append("(+ right class, - wrong class; scores: " + "; ".join(
        sorted({f"{n} = {METRICS[n].formula}" for n in METRICS})) + ")")
    return "\n".join(lines)
