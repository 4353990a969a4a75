"""The Compare endpoint (/compare) through gradio_client, and `python -m retrieval compare` on the CLI:
one query, one row per method, hits marked where the class is known, P@k and AP, clear errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from retrieval.compare import NO_CLASSES, compare, format_rows, readable_score, score_text
from retrieval.methods import Kind
from retrieval.library import scan_split
from retrieval.search import LookalikeIndex
from webui.compare import RIGHT, WRONG, Comparer, model_title
from webui.handlers import QueryFiles

MARKS = (RIGHT, WRONG)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def query(sample_data) -> tuple[Path, str]:
    it = scan_split(sample_data, "test")[0]
    return it.path(sample_data), it.label


def _rows(app, path: Path, k: int = 5):
    out = app.client.predict(handle_file(str(path)), k, api_name="/compare")
    return out, out[3]   # after the thumbnail, the query line and the summary table


def test_compare_endpoint_gives_every_method_a_marked_row(app, query):
    out, rows = _rows(app, query[0])
    methods = Comparer(app.index).methods
    assert [r["method"] for r in rows] == methods == sorted(app.index.methods, key=methods.index)
    kinds = [r["kind"] for r in rows]
    assert kinds == sorted(kinds, key=[k.value for k in Kind].index) and set(kinds) == {k.value for k in Kind}
    assert query[1] in out[1]                                  # "Query class: <class> (test split)"
    for r in rows:
        assert len(r["hits"]) == 5
        assert [h["correct"] for h in r["hits"]] == [h["class"] == query[1] for h in r["hits"]]
        assert r["p@k"] == sum(h["correct"] for h in r["hits"]) / 5 and 0 <= r["ap"] <= 1
    by = {r["method"]: r for r in rows}
    direct, _ = app.index.search(query[0], "effnet-cosine+dba+qe", 5)
    assert [h["file"] for h in by["effnet-cosine+dba+qe"]["hits"]] == [h.rel for h in direct]
    galleries = out[5::2]   # after thumbnail, query line, table, data: (markdown, gallery) per method (no State)
    assert len(galleries) == len(methods) and all(len(g) == 5 for g in galleries)
    assert all(g[0]["caption"][0] in MARKS for g in galleries)
    assert "Δ" in galleries[0][0]["caption"]   # pixel-l1: the mean difference per colour value
    assert galleries[-1][0]["caption"].endswith("%")   # re-ranked: a similarity in percent
    # The summary table: every method once, best first (this query's AP), the best marked.
    table = out[2]
    order = sorted(rows, key=lambda r: (-r["ap"], -r["p@k"], r["ms"]))
    positions = [table.index(f"<code>{r['method']}</code>") for r in order]
    assert positions == sorted(positions) and table.count("★ best") == 1
    assert table.index("★ best") < positions[1]


def test_a_library_image_is_known_by_content_and_left_out(app):
    lib = app.index.paths[3]
    out, rows = _rows(app, lib, k=4)
    assert app.index.labels[3] in out[1] and "library image" in out[1]
    assert all(h["file"] != app.index.rels[3] for r in rows for h in r["hits"])


def test_an_unknown_upload_is_not_marked(app, query, tmp_path):
    from PIL import Image
    copy = tmp_path / "mine.png"
    Image.open(query[0]).convert("RGB").rotate(90, expand=True).save(copy)   # new bytes: class unknown
    out, rows = _rows(app, copy, k=3)
    assert "unknown" in out[1]
    assert all(r["ap"] is None and all(h["correct"] is None for h in r["hits"]) for r in rows)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> LookalikeIndex:
    """A flat photo folder, no classes, indexed with pixels only."""
    from PIL import Image
    from retrieval.indexing import build_index
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "photos").mkdir()
    for i, rgb in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (40, 30 + i), rgb).save(root / "photos" / f"p{i}.png")
    build_index(root / "photos", root / "index", model="none")
    return LookalikeIndex.open(root / "index")


def test_an_unlabelled_library_says_why_nothing_is_marked(unlabelled, tmp_path):
    """A library image is in the library: the reason is that there are no classes, for it and an upload alike."""
    from PIL import Image
    upload = tmp_path / "mine.png"
    Image.new("RGB", (50, 50), (10, 10, 10)).save(upload)
    comparer = Comparer(unlabelled, QueryFiles(unlabelled, [str(upload)]))
    for query in (unlabelled.paths[1], upload):
        out = comparer(str(query), 2)
        assert out[1].startswith("**Not marked:** this library has no classes") and "cannot be told" in out[1], query
        assert "not a library" not in out[1] and "★ best" not in out[2]
        assert all(r["ap"] is None and all(h["correct"] is None for h in r["hits"]) for r in out[3])
    result = compare(unlabelled, unlabelled.paths[1], ["pixel-l1"], 2)
    assert (result.label, result.label_from) == (None, NO_CLASSES)
    assert format_rows(unlabelled, result).startswith("# query class: unknown (no classes in this library)")


@pytest.mark.parametrize("case,message", [("text", "not an image"), ("empty", "empty"), ("none", "no query image")])
def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(app, query, tmp_path, case, message):
    bad = tmp_path / "photo.jpg"
    bad.write_text("not a picture\n") if case == "text" else bad.write_bytes(b"")
    with pytest.raises(AppError, match=message):
        app.client.predict(None if case == "none" else handle_file(str(bad)), 5, api_name="/compare")
    with pytest.raises(AppError, match="k must be a whole number"):
        app.client.predict(handle_file(str(query[0])), 0, api_name="/compare")
    assert len(_rows(app, query[0], 2)[1][0]["hits"]) == 2


def test_scores_say_their_scale_and_the_deep_tab_names_its_model(app):
    idx = app.index
    dims = idx.manifest.pixel_size ** 2 * 3
    assert score_text(idx.parse_method("pixel-l1"), 3072 * 10.0, dims) == "30,720 (Δ 10.0/255)"
    assert score_text(idx.parse_method("pixel-l2"), 400.0, dims) == "400 (RMS 20.0/255)"
    assert score_text(idx.parse_method("effnet-cosine+qe"), 0.5, dims) == "+0.500"
    # what the page's captions say: the same scores, readable (the raw ones stay in the data view)
    assert readable_score(idx.parse_method("pixel-l1"), 3072 * 10.0, dims) == "Δ10/255"
    assert readable_score(idx.parse_method("pixel-l2"), 400.0, dims) == "Δ20/255 RMS"
    assert readable_score(idx.parse_method("effnet-cosine+qe"), 0.5, dims) == "50%"
    assert readable_score(idx.parse_method("pixel-corr"), -0.25, dims, short=True) == "-25%"
    assert model_title(idx) == "efficientnet-lite0 (offline ImageNet backbone)"
    import requests
    config = requests.get(app.url + "config", timeout=10).json()
    tabs = [c["props"]["label"] for c in config["components"] if c["type"] == "tabitem"]
    # short titles (a phone shows them); no Text tab without a text encoder (About says why)
    assert tabs[:3] == ["Pixel metrics", "Deep features", "Compare"]
    detail = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "deep-model")
    assert detail.startswith("Model: **efficientnet-lite0 (offline ImageNet backbone)**")   # the model, inside the tab
    assert "best on this library" in detail and "CLIP / deep features" not in json.dumps(config)


def test_cli_compare_prints_rows_and_plots(sample_effnet_index, query, tmp_path):
    png = tmp_path / "compare.png"
    out = subprocess.run([sys.executable, "-m", "retrieval", "compare", str(query[0]), "--index",
                          str(sample_effnet_index), "-k", "3", "--plot", str(png)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"# query class: {query[1]}")
    index = LookalikeIndex.open(sample_effnet_index)
    for m in index.methods:
        assert any(line.startswith(m + " ") and "AP " in line for line in lines), m
    assert png.stat().st_size > 20_000
    direct = compare(index, query[0], ["pixel-l1"], 3)
    assert direct.rows[0].correct == [h.label == query[1] for h in direct.rows[0].hits]
