"""The Map tab through the app's HTTP API (/map, /map_point, gradio_client) on the real sample
library: the stored maps drawn with their neighbour agreement, a query placed with its top k, a
click on a dot answered with that library image, a click beside every dot with a plain message;
and an index without maps says so in words a visitor understands.
"""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from retrieval.errors import IndexError_, Remedy
from retrieval.indexing import build_index
from retrieval.library import scan_split
from retrieval.projection import load_maps
from retrieval.search import LookalikeIndex
from webui.handlers import NOT_AN_UPLOAD
from webui.layout import build_demo
from webui.map_tab import MISS, MapView, no_map_words

from app_support import FILE_META, raw_call
from conftest import make_tiny_library


@pytest.fixture(scope="module")
def view(app) -> MapView:
    """The same maps the app draws (the figure is deterministic), for finding a dot to click."""
    return MapView(app.index)


def test_the_map_shows_both_spaces_and_their_agreement(app):
    figure, text = app.client.predict(None, 5, api_name="/map")
    maps = load_maps(app.index)
    assert [m.source for m in maps] == ["pixel", "effnet"]
    with Image.open(figure) as img:
        assert img.width > img.height   # two panels side by side
    for m in maps:
        assert f"{m.title}: **{m.agreement:.0%}**" in text
    assert "Neighbour agreement" in text


def test_a_placed_query_and_its_top_k(app, sample_data):
    item = scan_split(sample_data, "test")[0]
    base, _ = app.client.predict(None, 5, api_name="/map")
    placed, text = app.client.predict(handle_file(str(item.path(sample_data))), 3, api_name="/map")
    assert np.asarray(Image.open(placed)).shape != np.asarray(Image.open(base)).shape or \
        not np.array_equal(np.asarray(Image.open(placed)), np.asarray(Image.open(base)))
    assert "The star is your query" in text and "Top 3" in text
    tops = re.search(r"Deep features \(effnet\): ([^·]+?)\.\n", text)
    assert tops and len(tops.group(1).split(", ")) == 3


def test_a_click_on_a_dot_shows_that_image_and_beside_them_a_message(app, view):
    _, _, geometry = view.base()
    deep = geometry.panels[1]
    row = 7
    x, y = (float(v) for v in deep.points[row])
    shown, caption = app.client.predict(x, y, api_name="/map_point")
    assert Path(shown).read_bytes() == app.index.paths[row].read_bytes()
    assert f"**{app.index.labels[row]}**" in caption and app.index.rels[row] in caption
    left, top, right, bottom = deep.box
    far = np.array([[left + 1, top + 1], [right - 1, bottom - 1], [left + 1, bottom - 1]])
    gaps = [np.min(np.hypot(*(deep.points - p).T)) for p in far]
    corner = far[int(np.argmax(gaps))]
    assert max(gaps) > geometry.reach   # a corner with no dot near it
    assert app.client.predict(float(corner[0]), float(corner[1]), api_name="/map_point") == (None, MISS)
    assert app.client.predict(-5.0, 10_000.0, api_name="/map_point") == (None, MISS)   # off the figure


def test_the_map_refuses_bad_input(app):
    for x, what in (("abc", "got 'abc'"), (None, "got None"), ([1, 2], "got a JSON list")):
        with pytest.raises(AppError) as err:
            app.client.predict(x, 3.0, api_name="/map_point")
        assert "must be a number of pixels on the map" in str(err.value) and what in str(err.value)
    with pytest.raises(AppError, match="from 1 to 20 on the map"):
        app.client.predict(None, 50, api_name="/map")
    served = {"path": str(app.index.paths[0]), "meta": FILE_META}
    assert raw_call(app.url, "map", [served, 5]) == ("HTTP 422", NOT_AN_UPLOAD)


def test_an_index_without_maps_says_so_in_plain_words(tmp_path):
    """A library too small for a map: the tab says why and has no map endpoints; an index built
    before maps names who can fix it, without a path or a command."""
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    build_index(data, tmp_path / "index", model="none", evaluate=False)
    index = LookalikeIndex.open(tmp_path / "index")
    view = MapView(index)
    assert view.problem == "This index has no map of the library: the library has 6 images; a map needs at least 10."
    demo = build_demo(index)
    texts = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.elem_id == "map-missing"]
    assert texts == [view.problem]
    assert not {"map", "map_point"} & {fn.api_name for fn in demo.fns.values()}
    words = no_map_words(IndexError_(f"the map file {tmp_path}/map-pixel.npy is missing; rebuild the index",
                                     remedy=Remedy.REBUILD_INDEX))
    assert words.endswith("Whoever runs this app can rebuild the index.") and str(tmp_path) not in words
    assert not re.search(r"--[a-z]|python ", words)
