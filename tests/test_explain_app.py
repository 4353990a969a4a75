"""Why this result, through the app's HTTP API (/explain, gradio_client), on the real sample library
with the offline backbone: the figure comes back as an image, the text carries this pair's score as
the search computed it, and a result that is not a library image is refused in plain words.
"""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from retrieval.library import scan_split
from webui.explain_panel import STALE, clicked_rel
from webui.handlers import NOT_AN_UPLOAD

from app_support import FILE_META, raw_call


@pytest.fixture(scope="module")
def query(sample_data):
    item = scan_split(sample_data, "test")[0]
    return handle_file(str(item.path(sample_data)))


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*(?:e-?\d+)?", text)]


@pytest.mark.parametrize("method,api", [("effnet-cosine", "/search_deep"), ("l1", "/search_pixel")])
def test_explain_returns_the_figure_and_the_score(app, query, method, api):
    """The top result's figure (an image wider than tall: query and result side by side) and the
    formula in monospace with the search's own score among its numbers."""
    _, _, rows = app.client.predict(query, method, 3, api_name=api)
    name = method if api == "/search_deep" else f"pixel-{method}"
    figure, text = app.client.predict(query, rows[0]["file"], name, api_name="/explain")
    with Image.open(figure) as img:
        assert img.width > img.height >= 200
    assert "```text" in text and f"`{name}`" in text
    score = rows[0]["score"]
    assert any(abs(x - score) <= 1e-4 * max(1.0, abs(score)) for x in _numbers(text.split("```text")[1])), text


def test_explain_of_a_re_ranked_method_says_what_its_maps_show(app, query):
    reranked = next(str(m) for m in app.index.offered if m.reranked and not m.pixel)
    _, _, rows = app.client.predict(query, reranked, 2, api_name="/search_deep")
    _, text = app.client.predict(query, rows[1]["file"], reranked, api_name="/explain")
    assert "re-ranks" in text and "base metric" in text


def _refused(app, query, rel, method="effnet-cosine") -> str:
    with pytest.raises(AppError) as err:
        app.client.predict(query, rel, method, api_name="/explain")
    text = str(err.value)
    for folder in (app.index.index_dir, app.index.data_dir):
        assert str(Path(folder).resolve()) not in text
    return text


def test_explain_refuses_what_is_not_a_library_image(app, query):
    cases = ["train/no-such-class/none.jpg", "/etc/hostname", "../../etc/passwd", str(app.index.paths[0]), ""]
    for rel in cases:
        assert "is not an image of this library" in _refused(app, query, rel), rel
    long = _refused(app, query, "x" * 10_000)
    assert "10,000 characters long" in long and "x" * 100 not in long
    assert "unknown method 'pixel-l9'" in _refused(app, query, app.index.rels[0], "pixel-l9")
    assert "the result must be text, not a JSON list" in _refused(app, query, ["train"])


def test_explain_reads_no_server_file_as_the_query(app, tmp_path):
    """A query named by a server path (a library image's, or any other file's) is refused at the
    door, as on the search tabs; an upload of the same bytes is explained."""
    other = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "red").save(other)
    rel = app.index.rels[0]
    for path in (str(app.index.paths[0]), str(other)):
        assert raw_call(app.url, "explain", [{"path": path, "meta": FILE_META}, rel, "pixel-l1"]) == \
            ("HTTP 422", NOT_AN_UPLOAD)
    assert raw_call(app.url, "explain", [str(other), rel, "pixel-l1"]) == ("HTTP 422", NOT_AN_UPLOAD)
    figure, _ = app.client.predict(handle_file(str(other)), rel, "pixel-l1", api_name="/explain")
    assert Path(figure).stat().st_size > 0


def test_a_click_names_a_result_of_the_pages_own_rows(tmp_path):
    """The gallery's click gives a position; the rel comes from the rows the page holds, and a
    position outside them (a page searched again meanwhile) is refused with a plain message."""
    (tmp_path / "train").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "train" / name).write_bytes(b"x")
    rows = [{"rank": 1, "file": "train/a.png"}, {"rank": 2, "file": "train/b.png"}]
    assert clicked_rel(tmp_path, rows, 1) == "train/b.png"
    for position in (2, -1, True, "1", None):
        with pytest.raises(gr.Error) as err:
            clicked_rel(tmp_path, rows, position)
        assert STALE in str(err.value)
