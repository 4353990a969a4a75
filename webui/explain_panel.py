"""Why this result: a click on a result of the Pixel or Deep tab shows why it matched.

The explanation (retrieval.explain) is drawn as one figure: the query and the result side by side
with the map of what the score adds up from, a colour key and the formula with this pair's numbers;
the formula and a plain summary are text beside it too, so a student can copy the numbers.

Endpoint: /explain (gradio_client: query image, result rel, method -> figure, text). The query
image follows the search's rules (an upload or a library image, handlers.QueryFiles); the result
must be an image of the library, named by its path in the library; the method one the index offers.
A click names a position in the page's own results (its rows), never a path the client sends.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
from PIL import Image

from retrieval.errors import LookalikeError
from retrieval.explain import Explanation, explain, explanation_figure, library_image
from retrieval.images import QUERY_SIDE, load_image
from retrieval.library import inside_root

from .handlers import Searcher, echo, query_source, text_field, upload_name, user_errors
from .refine_panel import MAX_REL_CHARS, RefineControls, Refiner, refine_controls, wire_refine

log = logging.getLogger(__name__)

HINT = "**Why this result?** Click any result above to see what its score adds up from."
STALE = "That result is no longer on the page: search again, then click a result."


def explanation_text(expl: Explanation, rel: str) -> str:
    """The summary in words, then the formula with this pair's numbers in monospace."""
    return (f"**Why `{rel.rsplit('/', 1)[-1]}` matched** under `{expl.method}`: {expl.summary}\n\n"
            f"```text\n{expl.formula}\n```")


class Explainer:
    """The /explain handler over a search tab's Searcher (plain values in and out)."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self.index = searcher.index

    def __call__(self, image: Any, rel: Any, method: Any) -> tuple[Image.Image, str]:
        method = self.searcher.check_method(method, self.index.methods)
        rel = self.result(rel)
        source = query_source(image, self.searcher.files)
        self.searcher.ready(method)
        name = upload_name(image)
        expl = explain(self.index, source, rel, method, name=name)
        query = load_image(source, name=name, reduce_to=QUERY_SIDE)
        result = library_image(self.index, rel)
        return explanation_figure(expl, query, result), explanation_text(expl, rel)

    def result(self, rel: Any) -> str:
        """The result as a library image's path in the library (text, bounded, one the index holds
        and serves: not a link out of the library folder)."""
        rel = text_field(rel, "result", MAX_REL_CHARS)
        if not rel or not self.index.holds(rel) or not inside_root(self.index.data_dir / rel, self.index.data_dir):
            raise LookalikeError(f"the result {echo(rel)} is not an image of this library; "
                                 "name a result by its file in the results' data")
        return rel


def clicked_rel(index_root: Path | str, rows: Any, position: Any) -> str:
    """The library image at `position` of the gallery, from the page's own rows: the gallery shows
    the rows whose file lies inside the library (handlers.Searcher.outputs), in order."""
    shown = [r for r in rows if isinstance(r, dict) and isinstance(r.get("file"), str)
             and inside_root(os.path.join(index_root, r["file"]), index_root)] if isinstance(rows, list) else []
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < len(shown):
        raise gr.Error(STALE, print_exception=False)
    return shown[position]["file"]


@dataclass
class ExplainControls:
    box: gr.Column
    figure: gr.Image
    text: gr.Markdown


def explain_controls(tab: str) -> ExplainControls:
    """The figure (shown once a result is clicked) right under the results, then its text: a hint
    until a result is clicked, then the summary and the formula to copy."""
    with gr.Column(visible=False, elem_id=f"{tab}-explain-box") as box:
        figure = gr.Image(label="Why this result", show_label=False, type="pil", format="png", interactive=False,
                          buttons=["download", "fullscreen"], elem_id=f"{tab}-explain", elem_classes=["lk-explain"])
    text = gr.Markdown(HINT, label="Explanation", elem_id=f"{tab}-explain-text")
    return ExplainControls(box, figure, text)


def cleared() -> tuple[gr.Column, None, str]:
    """After a new search or a refinement the last explanation is gone (its result may be too)."""
    return gr.Column(visible=False), None, HINT


def wire_explain(c: ExplainControls, explainer: Explainer, search: Any, gallery: Any, rows: Any,
                 query: gr.Image, method: gr.Textbox, rel: gr.Textbox, *, public: bool) -> None:
    """A search clears the last explanation; a click on a result names its rel (from the rows) and
    opens the figure's box, then /explain draws it (`public`: this tab's chain is the API endpoint,
    the other tab's is private)."""
    search.success(cleared, None, [c.box, c.figure, c.text], api_visibility="private", show_progress="hidden")

    def pick(rows_now: Any, evt: gr.SelectData) -> tuple[str, gr.Column]:
        return clicked_rel(explainer.index.data_dir, rows_now, evt.index), gr.Column(visible=True)

    event: dict[str, Any] = {"api_name": "explain"} if public else {"api_visibility": "private"}
    gallery.select(pick, rows, [rel, c.box], api_visibility="private", show_progress="hidden") \
        .success(user_errors(explainer), [query, rel, method], [c.figure, c.text], preprocess=False, **event)


def hidden_query(tab: str, sources: Sequence[Any]) -> tuple[gr.Image, gr.Textbox, gr.Textbox]:
    """What the last search asked (its query image and method, copied when it succeeds) and the
    clicked result's rel: the inputs of /explain and /refine, out of sight."""
    query = gr.Image(label="Query image", type="filepath", sources=list(sources), visible=False,
                     elem_id=f"{tab}-searched")
    method = gr.Textbox(label="Method", visible=False, elem_id=f"{tab}-searched-method")
    rel = gr.Textbox(label="Result", visible=False, elem_id=f"{tab}-clicked")
    return query, method, rel


class WhyPanels:
    """One search tab's "why this result" panel, and its refine panel where `refine`: built under
    the results (build), wired to the tab's search once it exists (wire). `method_of` turns the
    tab's selector value into a method name ("l1" -> "pixel-l1" on the Pixel tab); `public`: this
    tab's events are the /explain (and /refine) endpoints."""

    def __init__(self, searcher: Searcher, method_of: Callable[[Any], Any], *, refine: bool, public: bool) -> None:
        self.searcher, self.method_of, self.refine, self.public = searcher, method_of, refine, public
        self.explain: ExplainControls | None = None
        self.marks: RefineControls | None = None
        self.hidden: tuple[gr.Image, gr.Textbox, gr.Textbox] | None = None

    def build(self, tab: str) -> None:
        self.hidden = hidden_query(tab, ["upload"])
        self.explain = explain_controls(tab)
        self.marks = refine_controls(tab) if self.refine else None

    def wire(self, search: Any, image: gr.Image, choice: gr.components.Component, k: gr.Slider,
             outputs: Sequence[gr.components.Component]) -> None:
        assert self.hidden and self.explain, "build() first"
        query, method, rel = self.hidden
        # what this search asked: the query (as sent: nothing is read or copied) and its method
        search.success(lambda q, m: (q, self.method_of(m)), [image, choice], [query, method],
                       api_visibility="private", show_progress="hidden", preprocess=False, postprocess=False)
        gallery, _, rows = outputs
        wire_explain(self.explain, Explainer(self.searcher), search, gallery, rows, query, method, rel,
                     public=self.public)
        if self.marks:
            refined = wire_refine(self.marks, Refiner(self.searcher), search, query, method, k, outputs)
            refined.success(cleared, None, [self.explain.box, self.explain.figure, self.explain.text],
                            api_visibility="private", show_progress="hidden")
