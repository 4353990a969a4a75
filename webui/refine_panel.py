"""Refine by feedback on the Deep features tab: mark results right or wrong, press Refine, repeat.

The page keeps every mark of every round (a per-visitor gr.State) and shows the current page's
marks as two checkbox groups, refreshed after each search and each refinement. The query moves
toward the results marked right and away from those marked wrong (retrieval.refine, Rocchio);
results marked wrong leave the list.

Endpoint: /refine (gradio_client: query image, method, k, right rels, wrong rels -> gallery,
status line, rows as data, as a search). What a client sends is checked here first: two lists of
library images (text, bounded), not too many, none marked both ways; the query image by the same
rules as a search (handlers.QueryFiles).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gradio as gr

from retrieval.compare import mark_hits
from retrieval.errors import LookalikeError
from retrieval.refine import MAX_MARKS, refine_search

from .handlers import (Outputs, Searcher, deep_methods, echo, json_kind, query_source, slider_k, upload_name,
                       user_errors)

MAX_REL_CHARS = 1024   # a library image's path inside the library (real ones are far shorter)
START_LINE = "Mark results right or wrong, then **Refine**: the search moves toward the right ones."


@dataclass(frozen=True)
class Feedback:
    """Every mark so far (library rels) and how many refinements ran on this query."""

    more: tuple[str, ...] = ()
    less: tuple[str, ...] = ()
    rounds: int = 0

    def line(self) -> str:
        return (f"Round {self.rounds} · {len(self.more)} right, {len(self.less)} wrong marked. "
                "Mark more and **Refine** again, or search anew to start over.")


def marked_list(value: Any, what: str) -> list[str]:
    """One list of marks from the page or the API: a JSON list of at most MAX_MARKS library images
    named by their paths in the library (text). Anything else is refused before the core sees it."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise LookalikeError(f"the images marked {what} must be a list of library images, not {json_kind(value)}")
    if len(value) > MAX_MARKS:
        raise LookalikeError(f"{len(value):,} images are marked {what}; at most {MAX_MARKS} marks can refine "
                             "a search, so clear some marks")
    for rel in value:
        if not isinstance(rel, str):
            raise LookalikeError(f"each image marked {what} is named by its path in the library (text), "
                                 f"not {json_kind(rel)}")
        if not 0 < len(rel) <= MAX_REL_CHARS:
            raise LookalikeError(f"the image marked {what} {echo(rel)} is not an image of this library")
    return list(dict.fromkeys(value))


def checked_marks(more: Any, less: Any) -> tuple[list[str], list[str]]:
    """Both lists in the shape the core takes (lists of bounded text). Whether they name library
    images, how many there are and whether one is marked both ways, retrieval.refine checks."""
    return marked_list(more, "right"), marked_list(less, "wrong")


class Refiner:
    """The /refine handler over a search tab's Searcher (plain values in and out)."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self.index = searcher.index

    def __call__(self, image: Any, method: Any, k: Any, more: Any, less: Any) -> Outputs:
        k = slider_k(k)
        method = self.searcher.check_method(method, deep_methods(self.index), "deep method")
        right, wrong = checked_marks(more, less)
        source = query_source(image, self.searcher.files)
        note = self.searcher.ready(method)
        hits, seconds = refine_search(self.index, source, right, wrong, method, k, name=upload_name(image))
        marks = mark_hits(self.index, source, hits, self.searcher.known)
        note += f" · refined by {len(right)} right, {len(wrong)} wrong"
        return self.searcher.outputs(hits, seconds, method, note, marks)


def page_rels(rows: Any) -> list[str]:
    """The library images on the page, in rank order, from the page's own rows (the data view)."""
    if not isinstance(rows, list):
        return []
    return [r["file"] for r in rows if isinstance(r, dict) and isinstance(r.get("file"), str)]


def choices(rows: Any) -> list[tuple[str, str]]:
    """The checkboxes of one page: "#1 bird" for each result (its class, else its file name)."""
    out = []
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and isinstance(r.get("file"), str):
            name = r.get("class") or r["file"].rsplit("/", 1)[-1]
            out.append((f"#{r.get('rank')} {name}", r["file"]))
    return out


def merged(feedback: Feedback | None, rows: Any, right: Sequence[str], wrong: Sequence[str]) -> tuple[list, list]:
    """Every mark after this round: the page's results as checked now (unchecking clears a mark),
    the marks of results no longer on the page as they were."""
    feedback = feedback or Feedback()
    page = set(page_rels(rows))
    more = [r for r in feedback.more if r not in page] + [r for r in right if r in page]
    less = [r for r in feedback.less if r not in page] + [r for r in wrong if r in page]
    return more, less


@dataclass
class RefineControls:
    """The panel's components, built inside a search tab's results column."""

    right: gr.CheckboxGroup
    wrong: gr.CheckboxGroup
    button: gr.Button
    line: gr.Markdown
    more: gr.JSON
    less: gr.JSON
    state: gr.State


def refine_controls(tab: str) -> RefineControls:
    """Two checkbox groups side by side (a phone stacks them), the Refine button and the round line."""
    with gr.Group(elem_id=f"{tab}-refine-panel"):
        with gr.Row(equal_height=False):
            right = gr.CheckboxGroup([], label="Right (more like these)", elem_id=f"{tab}-right", min_width=160)
            wrong = gr.CheckboxGroup([], label="Wrong (less like these)", elem_id=f"{tab}-wrong", min_width=160)
        with gr.Row(equal_height=True):
            line = gr.Markdown(START_LINE, elem_id=f"{tab}-refine-line", padding=True)
            button = gr.Button("Refine", variant="secondary", scale=0, min_width=110, elem_id=f"{tab}-refine")
    more = gr.JSON(visible=False, label="Marked right")
    less = gr.JSON(visible=False, label="Marked wrong")
    return RefineControls(right, wrong, button, line, more, less, gr.State(None))


def wire_refine(c: RefineControls, refiner: Refiner, search: Any, query: gr.Image, method: gr.Textbox,
                k: gr.Slider, results: Sequence[gr.components.Component]) -> Any:
    """A search starts over (no marks, this page's checkboxes); Refine merges the checked boxes
    into every mark so far, refines (/refine), then shows the new page's boxes and the round.
    Returns the refinement's event (what else a refinement changes chains on it)."""
    gallery, status, rows = results

    def fresh(rows_now: Any) -> tuple:
        boxes = choices(rows_now)
        return gr.CheckboxGroup(boxes, value=[]), gr.CheckboxGroup(boxes, value=[]), None, START_LINE

    search.success(fresh, rows, [c.right, c.wrong, c.state, c.line], api_visibility="private",
                   show_progress="hidden")

    def merge(fb: Feedback | None, rows_now: Any, right: list[str], wrong: list[str]) -> tuple[list, list]:
        return merged(fb, rows_now, right, wrong)

    def advance(fb: Feedback | None, rows_now: Any, more: list[str], less: list[str]) -> tuple:
        done = Feedback(tuple(more), tuple(less), (fb.rounds if fb else 0) + 1)
        page = page_rels(rows_now)
        boxes = choices(rows_now)
        return (gr.CheckboxGroup(boxes, value=[r for r in page if r in done.more]),
                gr.CheckboxGroup(boxes, value=[r for r in page if r in done.less]), done, done.line())

    refined = c.button.click(merge, [c.state, rows, c.right, c.wrong], [c.more, c.less],
                             api_visibility="private", show_progress="hidden") \
        .success(user_errors(refiner), [query, method, k, c.more, c.less], [gallery, status, rows],
                 api_name="refine", preprocess=False)
    refined.success(advance, [c.state, rows, c.more, c.less], [c.right, c.wrong, c.state, c.line],
                    api_visibility="private", show_progress="hidden")
    return refined
