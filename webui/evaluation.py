"""The Evaluation tab: which method wins and by how much, its chart, then the explanation and tables.

A visitor reads the answer first (one sentence and the mAP chart, within the first screen), then
the detail: why that kind of method wins and the tables, the best row highlighted (webui.texts).
The scores the tab leads with are the k-fold ones where they were computed (every image a query,
so the intervals are narrow), else the report's own (the test split).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import gradio as gr
import numpy as np

from retrieval.errors import LookalikeError
from retrieval.methods import Kind, Method
from retrieval.search import LookalikeIndex

from .texts import best_name, evaluation_markdown, read_evaluation

log = logging.getLogger(__name__)

KIND_COLOURS = {Kind.PIXEL: "#8c8c8c", Kind.EXACT: "#4575b4", Kind.HNSW: "#91bfdb", Kind.RERANKED: "#d73027"}
BAR_INCHES = 0.22       # the mAP chart's height per method: ~17 methods stay within one screen with the sentence
NO_FIGURES = ("_No figures: this index's `evaluation.json` predates them. Whoever runs this app can "
              "add them by evaluating the index again._")


@dataclass(frozen=True)
class Lead:
    """The scores the tab leads with, and how they were measured, in words ("5-fold, 443 queries")."""

    scores: Mapping[str, Any]
    what: str


def lead_scores(report: Mapping[str, Any] | None) -> Lead | None:
    """k-fold where it was computed (the k-fold part, or a k-fold-only report), else the test split;
    None without scores (no report, or one that scores no method)."""
    if not report or not report.get("methods"):
        return None
    kfold = report.get("kfold") or {}
    use = kfold if kfold.get("methods") else report
    n = use["queries"]
    queries = f"{n:,} {'query' if n == 1 else 'queries'}"
    if use.get("protocol") == "kfold":
        return Lead(use, f"{use['folds']}-fold, {queries}")
    return Lead(use, f"test split, {queries}")


def _ratio(a: float, b: float) -> str:
    return f"{a / max(b, 1e-9):.1f}×"


def winner_sentence(lead: Lead) -> str:
    """The tab's first line: the best method, its mAP, and how many times better it is than the same
    method without re-ranking and than the best pixel method (than chance where neither applies)."""
    methods = lead.scores["methods"]
    best = best_name(lead.scores)
    if best is None:
        raise ValueError("it scores no method by a known name")
    won, top = Method.parse(best), methods[best]["map"]
    parts = []
    plain = str(won.plain())
    if won.reranked and plain in methods:
        parts.append(f"{_ratio(top, methods[plain]['map'])} {plain} without re-ranking")
    pixel = [n for n in methods if _is_pixel(n)]
    if not won.pixel and pixel:
        bp = max(pixel, key=lambda n: methods[n]["map"])
        word = "method" if Method.parse(bp).reranked else "metric"
        parts.append(f"{_ratio(top, methods[bp]['map'])} the best pixel {word}, {bp}")
    if won.pixel or not parts:
        parts.append(f"{_ratio(top, lead.scores['chance']['map'])} chance")
    return (f"**{best}** finds the right class best here: mAP {top:.2f}, "
            f"{' and '.join(parts)} ({lead.what}).")


def _is_pixel(name: str) -> bool:
    """Whether a method named in evaluation.json ranks pixels (False for a name outside the grammar)."""
    try:
        return Method.parse(name).pixel
    except LookalikeError:
        return False


def _method_kind(name: str) -> Kind:
    """The kind of a method named in evaluation.json; a name outside the grammar (a hand edit) is a
    ValueError, which evaluation_tab turns into a note instead of a failed page."""
    try:
        return Method.parse(name).kind
    except LookalikeError as exc:
        raise ValueError(str(exc)) from None


def ordered_methods(report: Mapping[str, Any]) -> list[str]:
    """Pixels, then deep exact, HNSW, re-ranked; the evaluation's own order within each kind."""
    names = list(report.get("methods") or {})
    kinds = list(Kind)
    return sorted(names, key=lambda n: (kinds.index(_method_kind(n)), names.index(n)))


def map_figure(report: Mapping[str, Any], title: str):
    """mAP per method with its 95% bootstrap interval, one bar per method, coloured by kind; the
    winner's label in bold. Compact: the sentence and the chart's top fit the first screen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ordered_methods(report)
    vals = [report["methods"][n]["map"] for n in names]
    ci = [report["methods"][n].get("map_ci") or [v, v] for n, v in zip(names, vals)]
    err = np.array([[v - lo for (lo, _), v in zip(ci, vals)], [hi - v for (_, hi), v in zip(ci, vals)]])
    fig, ax = plt.subplots(figsize=(9, BAR_INCHES * len(names) + 1.1))
    y = np.arange(len(names))[::-1]
    ax.barh(y, vals, xerr=err, color=[KIND_COLOURS[_method_kind(n)] for n in names], capsize=2)
    ax.set_yticks(y, names, fontsize=8)
    best = best_name(report)
    for label in ax.get_yticklabels():
        if label.get_text() == best:
            label.set_fontweight("bold")
    ax.axvline(report["chance"]["map"], color="black", linestyle=":", linewidth=1, label="chance")
    shown = {_method_kind(n) for n in names}
    for kind, colour in KIND_COLOURS.items():   # a legend entry per kind the chart shows
        if kind in shown:
            ax.barh([0], [0], color=colour, label=kind.value)
    ax.legend(fontsize=7, loc="upper right")   # the pixel bars at the top are short
    ax.set_xlabel("mAP (bars: 95% bootstrap interval over queries)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def ap_class_figure(report: Mapping[str, Any], title: str):
    """AP per class of three methods: the best pixel, the best plain deep and the best re-ranked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = report["methods"]
    picks = []
    for kinds in ((Kind.PIXEL,), (Kind.EXACT, Kind.HNSW), (Kind.RERANKED,)):
        names = [n for n in methods if _method_kind(n) in kinds and methods[n].get("ap_per_class")]
        if names:
            picks.append(max(names, key=lambda n: methods[n]["map"]))
    classes = sorted({c for n in picks for c in methods[n]["ap_per_class"]})
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / max(1, len(picks))
    x = np.arange(len(classes))
    for i, n in enumerate(picks):
        ax.bar(x + i * width, [methods[n]["ap_per_class"].get(c, 0.0) for c in classes], width,
               color=KIND_COLOURS[_method_kind(n)], label=n)
    ax.set_xticks(x + width * (len(picks) - 1) / 2, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("AP")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def evaluation_tab(index: LookalikeIndex) -> None:
    """The Evaluation tab's components, inside the caller's gr.Tab: the winner in one sentence, the
    mAP chart, the explanation and tables (texts.evaluation_markdown, which also says why there are
    no scores: no evaluation.json, a malformed one, an unlabelled library), and AP per class."""
    lead = lead_scores(read_evaluation(index.index_dir))
    figures = _figures(lead) if lead is not None else None
    if figures is not None:
        gr.Markdown(figures.sentence, elem_id="eval-winner")
        gr.Plot(figures.chart, label="mAP per method", elem_id="eval-map")
    elif lead is not None:
        gr.Markdown(NO_FIGURES, elem_id="eval-no-figures")
    gr.Markdown(evaluation_markdown(index), elem_id="eval-tables")
    if figures is not None and figures.ap_class is not None:
        gr.Plot(figures.ap_class, label="AP per class", elem_id="eval-ap-class")


@dataclass(frozen=True)
class Figures:
    """What the tab shows above and below the tables: the winner sentence and the charts."""

    sentence: str
    chart: Any
    ap_class: Any | None


def _figures(lead: Lead) -> Figures | None:
    """The sentence and charts, or None for an older or hand-edited evaluation.json they cannot be
    drawn from (the tab then says so, and the tables below still show what they can)."""
    made = []
    try:
        sentence = winner_sentence(lead)
        made.append(map_figure(lead.scores, f"mAP per method ({lead.what})"))
        if any(v.get("ap_per_class") for v in lead.scores["methods"].values()):
            made.append(ap_class_figure(lead.scores, f"AP per class ({lead.what})"))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        log.info("no evaluation figures: %r", exc)
        import matplotlib.pyplot as plt
        for fig in made:
            plt.close(fig)
        return None
    return Figures(sentence, made[0], made[1] if len(made) > 1 else None)
