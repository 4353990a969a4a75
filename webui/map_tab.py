"""The Map tab: the whole library on two 2-D maps (pixels | deep features), a query placed on them.

The maps are fitted when the index is built (retrieval.projection); the picture is drawn once per
app, on the first visit, and kept (retrieval.map_figure), so the tab opens at once after that. A
query (an upload, an example, or any image the other tabs were given) is placed on both maps with
its top k ringed, without refitting anything. A click on a point shows that library image and its
class beside the map.

Endpoints: /map (gradio_client: query image or None, k -> figure, text) and /map_point (x, y in the
figure's pixels -> the library image there, its caption). An index without maps says so in plain
words, and who can fix it.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from retrieval.errors import LookalikeError, Remedy
from retrieval.map_figure import MapGeometry, map_figure, point_at
from retrieval.projection import NEIGHBOURS, LibraryMap, load_maps, locate
from retrieval.search import LookalikeIndex

from .handlers import DEFAULT_K, QueryFiles, echo, query_source, remedy_words, slider_k, upload_name, user_errors

log = logging.getLogger(__name__)

MAX_MAP_K = 20        # rings on the map: more would hide the points under them
MISS = "No library image there: click on a dot of the map."
POINT_HINT = "Click a dot of the map to see that library image here, with its class."
MapOutputs = tuple[Image.Image, str, MapGeometry]


def agreement_line(maps: list[LibraryMap]) -> str:
    """The number a student reads on the map, in words: per space, the share of each image's 5
    nearest neighbours that share its class (and the same share on the flat map)."""
    parts = []
    for m in maps:
        if m.agreement is None:
            continue
        flat = f" ({m.map_agreement:.0%} on the map)" if m.map_agreement is not None else ""
        parts.append(f"{m.title}: **{m.agreement:.0%}**{flat}")
    if not parts:
        return "This library has no classes, so the dots share one colour and there is no neighbour agreement."
    return (f"**Neighbour agreement**, the share of each image's {NEIGHBOURS} nearest neighbours that share its "
            f"class: {' · '.join(parts)}. The higher, the better that space keeps classes together.")


def no_map_words(exc: LookalikeError) -> str:
    """Why there is no map, for a visitor: who can fix it, no paths or commands."""
    if exc.remedy is Remedy.REBUILD_INDEX:
        return ("This index has no map of the library: it was built before maps were added, or its map "
                f"files are damaged. {remedy_words(Remedy.REBUILD_INDEX)}")
    text = str(exc).removeprefix("this index has no map of the library: ")
    return f"This index has no map of the library: {text}."


class MapView:
    """The Map tab's handlers over one opened index (plain values in and out, testable alone)."""

    def __init__(self, index: LookalikeIndex, files: QueryFiles | None = None) -> None:
        self.index = index
        self.files = files or QueryFiles.for_index(index)
        self.labels = [str(x) for x in index.labels.tolist()]
        self._lock = threading.Lock()
        self._base: MapOutputs | None = None
        try:
            self.maps = load_maps(index)
            self.problem: str | None = None
        except LookalikeError as exc:   # an old index is worth a line in the log; a small library is not
            (log.info if exc.remedy else log.debug)("no map tab: %s", exc)
            self.maps, self.problem = [], no_map_words(exc)

    def base(self) -> MapOutputs:
        """The library's maps without a query: drawn on the first call, then kept."""
        with self._lock:
            if self._base is None:
                if self.problem:
                    raise LookalikeError(self.problem)
                figure, geometry = map_figure(self.maps, self.labels)
                self._base = figure, agreement_line(self.maps), geometry
            return self._base

    def show(self, image: Any = None, k: Any = DEFAULT_K) -> MapOutputs:
        """The maps, with the query placed and its top k ringed when there is a query."""
        k = slider_k(k)
        if k > MAX_MAP_K:
            raise LookalikeError(f"k must be a whole number from 1 to {MAX_MAP_K} on the map, got {echo(k)}")
        if image is None or image == "":
            return self.base()
        base = self.base()   # the problem, if any, before the query is read
        source = query_source(image, self.files)
        placed = locate(self.index, source, k, name=upload_name(image))
        figure, geometry = map_figure(self.maps, self.labels, placed)
        tops = []
        for m, p in zip(self.maps, placed):
            classes = [self.labels[r] or self.index.rels[r].rsplit("/", 1)[-1] for r in p.top_rows]
            tops.append(f"{m.title}: {', '.join(classes)}")
        text = (f"The star is your query; the rings are its top {k} in each space. "
                f"Top {k}: {' · '.join(tops)}.\n\n{base[1]}")
        return figure, text, geometry

    def point(self, x: Any, y: Any, geometry: MapGeometry | None = None) -> tuple[str | None, str]:
        """The library image nearest a click at (x, y) on the figure last shown (`geometry`; the
        base figure's when None), with its class; a plain message when no point is near."""
        for value, what in ((x, "x"), (y, "y")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LookalikeError(f"the point's {what} must be a number of pixels on the map, got {echo(value)}")
        geometry = geometry or self.base()[2]
        row = point_at(geometry, float(x), float(y))
        if row is None:
            return None, MISS
        rel = self.index.rels[row]
        label = self.labels[row]
        return str(self.index.paths[row]), (f"**{label}** · `{rel}`" if label else f"`{rel}`")


@dataclass
class MapParts:
    figure: gr.Image
    text: gr.Markdown
    image: gr.Image


def _controls(examples: list[str], examples_label: str) -> tuple[gr.Image, gr.Slider, gr.Button, gr.Image,
                                                                  gr.Markdown, gr.Column]:
    """The side column: the clicked point first (the answer to a click), then the query to place."""
    with gr.Column(visible=False) as box:   # shown by the first click on a dot
        point = gr.Image(label="Clicked image", type="filepath", interactive=False, height=170,
                         elem_id="map-point")
    caption = gr.Markdown(POINT_HINT, label="Class and file", elem_id="map-point-text")
    image = gr.Image(label="Query image", type="filepath", sources=["upload", "webcam", "clipboard"],
                     image_mode=None, height=150, elem_id="map-image")
    with gr.Row(equal_height=True):
        k = gr.Slider(1, MAX_MAP_K, value=DEFAULT_K, step=1, label="k (top results ringed)", elem_id="map-k")
        button = gr.Button("Place on map", variant="primary", scale=0, min_width=130, elem_id="map-place")
    if examples:
        gr.Examples(examples, inputs=image, label=f"{examples_label} (click one, then Place on map)",
                    examples_per_page=6, cache_examples=False, elem_id="map-examples")
    return image, k, button, point, caption, box


def map_tab(index: LookalikeIndex, tab: gr.Tab, examples: list[str], examples_label: str,
            files: QueryFiles | None = None) -> gr.Image | None:
    """The tab's components and events; returns its query image (None when the index has no map)."""
    view = MapView(index, files)
    if view.problem:
        gr.Markdown(view.problem, elem_id="map-missing")
        return None
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            text = gr.Markdown("Drawing the map of the library…", label="Neighbour agreement", elem_id="map-text")
            figure = gr.Image(label="Map of the library", show_label=False, type="pil", format="png",
                              interactive=False, buttons=["download", "fullscreen"], elem_id="map-figure")
        with gr.Column(scale=1, min_width=240):
            image, k, button, point, caption, box = _controls(examples, examples_label)
    geometry = gr.State(None)   # of the figure this visitor sees (a placed query changes its legend)
    x, y = gr.Number(visible=False, label="x"), gr.Number(visible=False, label="y")
    shown = [figure, text, geometry]
    tab.select(user_errors(view.base), None, shown, api_visibility="private")
    button.click(user_errors(view.show), [image, k], shown, api_name="map", preprocess=False)

    def clicked(evt: gr.SelectData) -> tuple[Any, Any, gr.Column]:
        where = evt.index if isinstance(evt.index, (list, tuple)) and len(evt.index) == 2 else (None, None)
        return where[0], where[1], gr.Column(visible=True)

    figure.select(clicked, None, [x, y, box], api_visibility="private", show_progress="hidden") \
        .success(user_errors(view.point), [x, y, geometry], [point, caption], api_name="map_point",
                 preprocess=False)
    return image


def link_query(image: gr.Image | None, others: list[gr.Image]) -> None:
    """The map's query and the other tabs' as one: an upload in either appears in the other (the
    payload handed over as it came, as webui.compare links the search tabs)."""
    if image is None or not others:
        return
    image.input(lambda v: v if len(others) == 1 else tuple([v] * len(others)), image, others,
                api_visibility="private", show_progress="hidden", preprocess=False, postprocess=False)
    for other in others:
        other.input(lambda v: v, other, image, api_visibility="private", show_progress="hidden",
                    preprocess=False, postprocess=False)
