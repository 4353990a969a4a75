"""The Compare tab: one query, every method side by side, and the Evaluation tab's figures.

One query (an upload, an example, or a click on any result: "more like this") goes through every
method the index offers (retrieval.compare). Each method gets a row: its name and kind, P@k and
this query's AP where the class is known, and its top-k thumbnails captioned ✓ / ✗ with the score
on its scale. The query's resized thumbnail, the one the pixel metrics compare, is shown too.

Endpoint: /compare (gradio_client: image, k -> thumbnail, summary, rows as data, then a
(markdown, gallery) pair per method). Errors are the same LookalikeError messages as the other tabs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from retrieval.compare import NO_CLASSES, UNLABELLED_IMAGE, Comparison, compare, score_text, test_labels
from retrieval.errors import LookalikeError
from retrieval.methods import Kind, Method
from retrieval.search import LookalikeIndex

from .handlers import NOT_AN_UPLOAD, DEFAULT_K, QueryFiles, query_source, slider_k, upload_name, user_errors

log = logging.getLogger(__name__)

THUMB_SCALE = 6          # the pixel thumbnail shown at 6x, nearest neighbour, so its pixels stay visible
RIGHT, WRONG = "✓", "✗"   # right / wrong class (plain symbols: every font has them, unlike emoji)


def model_title(index: LookalikeIndex) -> str:
    """The deep tab's model, named inside the tab (its title is "Deep features"): the embedder
    itself, not "CLIP / deep features" for both."""
    emb = index.manifest.embedder
    if not emb:
        return "none (pixel-only index)"
    if emb.name == "effnet":
        return "efficientnet-lite0 (offline ImageNet backbone)"
    spec = emb.spec.split(":")
    return f"CLIP {spec[1] if len(spec) > 1 else emb.spec}"


def query_summary(result: Comparison) -> str:
    """The line above the rows: the query's class and what the marks mean, or why nothing is marked."""
    if result.label is not None:
        return (f"**Query class: {result.label}** ({result.label_from}): {RIGHT} marks a result of the same "
                f"class, {WRONG} another class.")
    if result.label_from == NO_CLASSES:
        return ("**No classes in this library:** its images are not sorted into class folders, so right and "
                "wrong results cannot be marked. Each row shows what its method finds most alike.")
    if result.label_from == UNLABELLED_IMAGE:
        return "**Query class unknown** (this library image has no class): results are not marked."
    return ("**Query class unknown** (an upload that is not in the library): results are not marked. "
            "Click a library image below to query by it.")


class Comparer:
    """The Compare tab's handler over one opened index (plain values in and out, testable alone)."""

    def __init__(self, index: LookalikeIndex, files: QueryFiles | None = None) -> None:
        self.index = index
        self.files = files or QueryFiles.for_index(index)   # which files a query may name
        kinds = list(Kind)   # pixels, deep exact, HNSW, re-ranked; the index's own order within each
        self.methods = [str(m) for m in sorted(index.offered, key=lambda m: kinds.index(m.kind))]
        self.known = test_labels(index)   # examples come back from the browser as copies: known by content

    def __call__(self, image: Any, k: Any = DEFAULT_K) -> tuple:
        k = slider_k(k)
        source = query_source(image, self.files)
        for m in self.methods:   # the model and Chroma load once, before anything is timed
            self.index.prepare(m)
        result = compare(self.index, source, self.methods, k, name=upload_name(image), known=self.known)
        return self.outputs(result)

    def outputs(self, result: Comparison) -> tuple:
        dims = self.index.manifest.pixel_size ** 2 * 3
        thumb = np.kron(result.thumbnail, np.ones((THUMB_SCALE, THUMB_SCALE, 1), dtype=np.uint8))
        summary = query_summary(result)
        rows, pairs = [], []
        for r in result.rows:
            m = self.index.parse_method(r.method)
            gallery = []
            for i, h in enumerate(r.hits):
                mark = "" if r.correct is None else (RIGHT if r.correct[i] else WRONG) + " "
                gallery.append((str(h.path), f"{mark}#{h.rank} {h.label or Path(h.rel).name} · "
                                             f"{score_text(m, h.score, dims)}"))
            stats = "" if r.ap is None else f" · **P@{len(r.hits)} {r.p_at_k:.2f}** · AP {r.ap:.3f}"
            pairs += [f"**`{r.method}`** ({r.kind}){stats} · {r.ms:.1f} ms · scores: {r.scale}", gallery]
            rows.append({"method": r.method, "kind": r.kind, "p@k": r.p_at_k, "ap": r.ap, "ms": r.ms,
                         "hits": [{"rank": h.rank, "class": h.label, "score": h.score, "file": h.rel,
                                   "correct": None if r.correct is None else r.correct[i]}
                                  for i, h in enumerate(r.hits)]})
        return (thumb, summary, rows, *pairs)


    def pick(self, evt: gr.SelectData) -> str:
        """"More like this": the clicked result (the gallery's served copy of a library image, known
        again by its content) becomes the query. The click's data comes from the client, so its
        path must be one a query may name, like any other."""
        value = evt.value if isinstance(evt.value, dict) else {}
        image = value.get("image")
        if not isinstance(image, dict) or not image.get("path"):
            raise gr.Error("that result is no longer on the page; run Compare again", print_exception=False)
        path = self.files.check(image["path"])
        if path is None:
            raise gr.Error(NOT_AN_UPLOAD, print_exception=False)
        return path


def compare_tab(index: LookalikeIndex, examples: list[str], examples_label: str,
                other_images: list[gr.Image], files: QueryFiles | None = None) -> gr.Image:
    """The tab's components and events; returns its query image (linked with the other tabs')."""
    comparer = Comparer(index, files)
    gr.Markdown("One query through every method: pixels, deep features (exact and Chroma HNSW) and re-ranked "
                "(`+qe` α-query expansion, `+dba` database-side augmentation). Click any result to search with it.")
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(label="Query image", type="filepath", sources=["upload", "webcam", "clipboard"],
                             image_mode=None, height=240, elem_id="compare-image")
            if examples:
                gr.Examples(examples, inputs=image, label=f"{examples_label} (click one)",
                            examples_per_page=15, cache_examples=False, elem_id="compare-examples")
        with gr.Column(scale=1):
            thumb = gr.Image(label=f"What the pixel metrics see: the query squashed to "
                                   f"{index.manifest.pixel_size}×{index.manifest.pixel_size}",
                             interactive=False, height=200, elem_id="compare-thumb", format="png")
            k = gr.Slider(1, 20, value=DEFAULT_K, step=1, label="k (results per method)", elem_id="compare-k")
            button = gr.Button("Compare", variant="primary", elem_id="compare-run")
    summary = gr.Markdown(elem_id="compare-summary")
    with gr.Accordion("Rows as data", open=False):
        data = gr.JSON(label="Per method: P@k, AP, hits")
    pairs: list[gr.components.Component] = []
    galleries = []
    for i, method in enumerate(comparer.methods):
        with gr.Group(elem_id=f"compare-row-{i}", elem_classes=["compare-row"]):
            pairs.append(gr.Markdown(f"**`{method}`**", elem_id=f"compare-label-{i}"))
            gallery = gr.Gallery(label=method, show_label=False, columns=6, height=250, object_fit="contain",
                                 allow_preview=False, elem_id=f"compare-results-{i}")
            pairs.append(gallery)
            galleries.append((method, gallery))
    outputs = [thumb, summary, data, *pairs]
    run = user_errors(comparer)
    button.click(run, [image, k], outputs, api_name="compare", preprocess=False)
    # A click on a result ("more like this") makes it the query and compares again at once.
    for _, gallery in galleries:
        gallery.select(comparer.pick, None, image, api_visibility="private") \
            .then(run, [image, k], outputs, api_visibility="private", preprocess=False)
    _link_queries([image, *other_images])
    return image


def _link_queries(images: list[gr.Image]) -> None:
    """One upload for all tabs: a query the user uploads (or pastes) in one tab appears in the others.
    `input` fires on the user's own change only, so copying the value never loops. The payload is
    handed back as it came (no preprocess, no postprocess): the server neither decodes the image
    nor reads or copies a file for it; the searches check it when it is used."""
    for src in images:
        others = [x for x in images if x is not src]
        if others:
            src.input(_copier(len(others)), src, others, api_visibility="private", show_progress="hidden",
                      preprocess=False, postprocess=False)


def _copier(n: int):
    def copy(value: Any):
        return value if n == 1 else tuple([value] * n)
    return copy


# -- the Evaluation tab's figures -----------------------------------------------------------------
KIND_COLOURS = {Kind.PIXEL: "#8c8c8c", Kind.EXACT: "#4575b4", Kind.HNSW: "#91bfdb", Kind.RERANKED: "#d73027"}


def _method_kind(name: str) -> Kind:
    """The kind of a method named in evaluation.json; a name outside the grammar (a hand edit) is a
    ValueError, which evaluation_figures turns into a note instead of a failed page."""
    try:
        return Method.parse(name).kind
    except LookalikeError as exc:
        raise ValueError(str(exc)) from None


def ordered_methods(report: dict[str, Any]) -> list[str]:
    """Pixels, then deep exact, HNSW, re-ranked; the evaluation's own order within each kind."""
    names = list(report.get("methods") or {})
    kinds = list(Kind)
    return sorted(names, key=lambda n: (kinds.index(_method_kind(n)), names.index(n)))


def map_figure(report: dict[str, Any], title: str):
    """mAP per method with its 95% bootstrap interval, one bar per method, coloured by kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ordered_methods(report)
    vals = [report["methods"][n]["map"] for n in names]
    ci = [report["methods"][n].get("map_ci") or [v, v] for n, v in zip(names, vals)]
    err = np.array([[v - lo for (lo, _), v in zip(ci, vals)], [hi - v for (_, hi), v in zip(ci, vals)]])
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    y = np.arange(len(names))[::-1]
    ax.barh(y, vals, xerr=err, color=[KIND_COLOURS[_method_kind(n)] for n in names], capsize=2)
    ax.set_yticks(y, names, fontsize=8)
    ax.axvline(report["chance"]["map"], color="black", linestyle=":", linewidth=1, label="chance")
    for kind, colour in KIND_COLOURS.items():
        ax.barh([0], [0], color=colour, label=kind.value)
    ax.legend(fontsize=7, loc="upper right")   # the pixel bars at the top are short
    ax.set_xlabel("mAP (bars: 95% bootstrap interval over queries)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def ap_class_figure(report: dict[str, Any], title: str):
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
    fig, ax = plt.subplots(figsize=(8, 3.4))
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


def evaluation_figures(index: LookalikeIndex) -> None:
    """The figures under the Evaluation tab's tables: k-fold where it was computed (it holds every
    image as a query), else the test split."""
    from .texts import read_evaluation
    report = read_evaluation(index.index_dir)
    if not report or not report.get("methods"):
        return
    kfold = report.get("kfold") or {}
    use = kfold if kfold.get("methods") else report
    what = (f"{use['folds']}-fold, {use['queries']} queries" if use is kfold
            else f"test split, {use['queries']} queries")
    try:
        gr.Plot(map_figure(use, f"mAP per method ({what})"), label="mAP per method", elem_id="eval-map")
        if any(v.get("ap_per_class") for v in use["methods"].values()):
            gr.Plot(ap_class_figure(use, f"AP per class ({what})"), label="AP per class", elem_id="eval-ap-class")
    except (KeyError, TypeError, ValueError) as exc:   # an evaluation.json from an older build
        log.info("no evaluation figures: %s", exc)
        gr.Markdown("_No figures: this index's `evaluation.json` predates them. Whoever runs this app can "
                    "add them by evaluating the index again._")
