"""The Compare tab: one query through every method, in one look.

One query (an upload, an example, or a click on any result: "more like this") goes through every
method the index offers (retrieval.compare). At the top, beside the query: the query's class (or
why it is unknown) and a summary table, one line per method with P@k, this query's AP, the time and
a bar, best first. Below, a compact grid grouped by family (pixels, deep exact, HNSW, re-ranked),
each family collapsible: per method its P@k and AP and its top-k thumbnails framed green (the
query's class) or red (another), captioned with a readable score (webui.results).

Endpoint: /compare (gradio_client: image, k -> pixel thumbnail, query line, summary table (HTML),
rows as data, then a (markdown, gallery) pair per method). Errors are the same LookalikeError
messages as the other tabs.
"""
from __future__ import annotations

import html
import logging
from typing import Any, Callable

import gradio as gr
import numpy as np

from retrieval.compare import Comparison, compare, test_labels
from retrieval.methods import Kind, Method
from retrieval.search import LookalikeIndex

from .handlers import NOT_AN_UPLOAD, DEFAULT_K, QueryFiles, query_source, slider_k, upload_name, user_errors
from .results import RIGHT, WRONG, gallery, unmarked_reason

log = logging.getLogger(__name__)

THUMB_SCALE = 4          # the pixel thumbnail shown at 4x, nearest neighbour, so its pixels stay visible
BAR_COLOUR = "#4575b4"
OPEN_FAMILIES = (Kind.PIXEL, Kind.EXACT, Kind.RERANKED)   # HNSW rows repeat the exact ones: folded
__all__ = ["RIGHT", "WRONG", "Comparer", "compare_tab", "model_title", "query_summary", "summary_table"]


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
    """The line above the summary: the query's class and what the frames mean, or why nothing is marked."""
    scores = ("Captions: % = similarity; Δ = mean difference per colour value, on 0–255; d = distance. "
              "Click any result to compare with it.")
    if result.label is not None:
        return (f"**Query class: {result.label}** ({result.label_from}). Green frames ({RIGHT}) share it, "
                f"red ones ({WRONG}) do not. {scores}")
    return f"**Not marked:** {unmarked_reason(result.label_from)}. {scores}"


def summary_table(result: Comparison) -> str:
    """Every method on one line, best first where the class is known (AP, then P@k, then speed):
    its family, P@k, AP, time and a bar of its AP; the best marked. Otherwise the family order."""
    rows = list(result.rows)
    marked = all(r.ap is not None for r in rows)
    if marked:
        rows.sort(key=lambda r: (-(r.ap or 0.0), -(r.p_at_k or 0.0), r.ms))
    k = max((len(r.hits) for r in rows), default=0)
    wide = ' class="lk-wide"'   # the columns a phone leaves out (layout.PAGE_CSS)
    head = f"<tr><th>method</th><th{wide}>family</th>" + (f"<th>P@{k}</th><th>AP</th>" if marked else "") + \
        "<th>ms</th>" + (f"<th{wide}>AP of this query</th>" if marked else "") + "</tr>"
    lines = []
    for i, r in enumerate(rows):
        best = marked and i == 0
        name = f"<code>{html.escape(r.method)}</code>"
        cells = [f"{name} ★ best" if best else name, html.escape(r.kind)]
        if marked:
            width = max(1.0, 100 * (r.ap or 0.0))
            cells += [f"{r.p_at_k:.2f}", f"{r.ap:.3f}", f"{r.ms:.1f}",
                      f'<div style="background:{BAR_COLOUR};width:{width:.0f}%;height:0.7em"></div>']
        else:
            cells.append(f"{r.ms:.1f}")
        style = ' style="font-weight:bold"' if best else ""
        classes = ["", wide, "", "", "", wide] if marked else ["", wide, ""]
        lines.append(f"<tr{style}>" + "".join(f"<td{w}>{c}</td>" for w, c in zip(classes, cells)) + "</tr>")
    return (f'<table class="lk-summary" style="width:100%;font-size:0.85em">{head}{"".join(lines)}</table>')


class Comparer:
    """The Compare tab's handler over one opened index (plain values in and out, testable alone)."""

    def __init__(self, index: LookalikeIndex, files: QueryFiles | None = None,
                 known: dict[str, str] | None = None) -> None:
        self.index = index
        self.files = files or QueryFiles.for_index(index)   # which files a query may name
        kinds = list(Kind)   # pixels, deep exact, HNSW, re-ranked; the index's own order within each
        self.methods = [str(m) for m in sorted(index.offered, key=lambda m: kinds.index(m.kind))]
        # examples come back from the browser as copies: known by content
        self.known = test_labels(index) if known is None else known

    def __call__(self, image: Any, k: Any = DEFAULT_K) -> tuple:
        k = slider_k(k)
        source = query_source(image, self.files)
        for m in self.methods:   # the model and Chroma load once, before anything is timed
            self.index.prepare(m)
        result = compare(self.index, source, self.methods, k, name=upload_name(image), known=self.known)
        return self.outputs(result)

    def outputs(self, result: Comparison) -> tuple:
        """The thumbnail, the query line, the summary table, the rows as data, a (label, gallery)
        pair per method."""
        dims = self.index.manifest.pixel_size ** 2 * 3
        thumb = np.kron(result.thumbnail, np.ones((THUMB_SCALE, THUMB_SCALE, 1), dtype=np.uint8))
        rows: list[dict[str, Any]] = []
        pairs: list[Any] = []
        for r in result.rows:
            m = self.index.parse_method(r.method)
            stats = "" if r.ap is None else f" · P@{len(r.hits)} **{r.p_at_k:.2f}** · AP {r.ap:.3f}"
            pairs += [f"**`{r.method}`**{stats} · {r.ms:.1f} ms", gallery(r.hits, m, dims, r.correct, short=True)]
            rows.append({"method": r.method, "kind": r.kind, "p@k": r.p_at_k, "ap": r.ap, "ms": r.ms,
                         "scale": r.scale,
                         "hits": [{"rank": h.rank, "class": h.label, "score": h.score, "file": h.rel,
                                   "correct": None if r.correct is None else r.correct[i]}
                                  for i, h in enumerate(r.hits)]})
        return (thumb, query_summary(result), summary_table(result), rows, *pairs)

    def pick(self, rows: Any, row: int, position: Any) -> str:
        """"More like this": the library image at `position` of method row `row` of the last
        comparison's rows (the data view). Whatever the client sends back, the file must be one
        a query may name (a library image), like any other."""
        try:
            rel = rows[row]["hits"][position]["file"]
        except (TypeError, IndexError, KeyError):
            rel = None
        if not isinstance(rel, str):
            raise gr.Error("that result is no longer on the page; run Compare again", print_exception=False)
        checked = self.files.check(str(self.index.data_dir / rel))
        if checked is None:
            raise gr.Error(NOT_AN_UPLOAD, print_exception=False)
        return checked


def _query_column(index: LookalikeIndex, examples: list[str],
                  examples_label: str) -> tuple[gr.Image, gr.Image, gr.Slider, gr.Button]:
    """The query, what the pixel metrics see of it, k, the Compare button and the examples."""
    with gr.Row():
        image = gr.Image(label="Query image", type="filepath", sources=["upload", "webcam", "clipboard"],
                         image_mode=None, height=180, scale=3, elem_id="compare-image")
        size = index.manifest.pixel_size
        thumb = gr.Image(label=f"What pixels see ({size}×{size})", interactive=False, height=180, scale=2,
                         min_width=120, elem_id="compare-thumb", format="png")
    with gr.Row(equal_height=True):
        k = gr.Slider(1, 20, value=DEFAULT_K, step=1, label="k (results per method)", scale=3, elem_id="compare-k")
        button = gr.Button("Compare", variant="primary", scale=1, elem_id="compare-run")
    if examples:
        gr.Examples(examples, inputs=image, label=f"{examples_label} (click one)",
                    examples_per_page=5, cache_examples=False, elem_id="compare-examples")
    return image, thumb, k, button


def _method_grid(comparer: Comparer) -> tuple[list[gr.components.Component], list[gr.Gallery]]:
    """Per method its label line above its thumbnails, two methods side by side, grouped by family,
    each family collapsible; returns the (label, gallery) outputs in method order, and the galleries."""
    pairs: list[gr.components.Component] = []
    galleries: list[gr.Gallery] = []
    parsed = [Method.parse(m) for m in comparer.methods]
    for family in Kind:
        members = [i for i, m in enumerate(parsed) if m.kind is family]
        if not members:
            continue
        with gr.Accordion(f"{family.value[0].upper()}{family.value[1:]} ({len(members)})", open=family in OPEN_FAMILIES,
                          elem_id=f"compare-family-{family.name.lower()}"):
            for first in range(0, len(members), 2):
                with gr.Row(equal_height=False):
                    for i in members[first:first + 2]:
                        with gr.Column(min_width=300, elem_id=f"compare-row-{i}", elem_classes=["compare-row"]):
                            pairs.append(gr.Markdown(f"**`{comparer.methods[i]}`**", elem_id=f"compare-label-{i}"))
                            box = gr.Gallery(label=comparer.methods[i], show_label=False, columns=5,
                                             object_fit="contain", allow_preview=False, format="jpeg",
                                             buttons=[], container=False,
                                             elem_id=f"compare-results-{i}", elem_classes=["lk-gallery", "lk-grid"])
                            pairs.append(box)
                            galleries.append(box)
                    if len(members[first:first + 2]) == 1:
                        gr.Column(min_width=300)   # keeps a lone last method at half width
    return pairs, galleries


def compare_tab(index: LookalikeIndex, examples: list[str], examples_label: str,
                other_images: list[gr.Image], files: QueryFiles | None = None,
                known: dict[str, str] | None = None) -> gr.Image:
    """The tab's components and events; returns its query image (linked with the other tabs')."""
    comparer = Comparer(index, files, known)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            image, thumb, k, button = _query_column(index, examples, examples_label)
        with gr.Column(scale=3, min_width=320):
            summary = gr.Markdown("One query through every method: pick an example or upload a photo, then "
                                  "**Compare**. Families: pixels, deep features (exact and Chroma HNSW) and "
                                  "re-ranked (`+qe` query expansion, `+dba` database-side augmentation).",
                                  elem_id="compare-summary")
            table = gr.HTML(elem_id="compare-table")
    pairs, galleries = _method_grid(comparer)
    with gr.Accordion("Rows as data (raw scores)", open=False):
        data = gr.JSON(label="Per method: P@k, AP, hits")
    outputs = [thumb, summary, table, data, *pairs]
    run = user_errors(comparer)
    button.click(run, [image, k], outputs, api_name="compare", preprocess=False)
    # A click on a result ("more like this") makes it the query and compares again at once.
    for row, gallery_box in enumerate(galleries):
        gallery_box.select(_picker(comparer, row), data, image, api_visibility="private") \
            .then(run, [image, k], outputs, api_visibility="private", preprocess=False)
    _link_queries([image, *other_images])
    return image


def _picker(comparer: Comparer, row: int) -> Callable[..., str]:
    def pick(rows: Any, evt: gr.SelectData) -> str:
        return comparer.pick(rows, row, evt.index)
    return pick


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
