"""The Gradio app through its HTTP API (gradio_client), as a user's script or the browser sees it.

Apps are launched on 127.0.0.1 with prevent_thread_lock=True and closed in teardown. The deep
tests run on the real offline backbone (efficientnet-lite0) over the real sample library.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from webui.start import HUB_ENV, locate_index
from webui.handlers import query_source, user_errors
from webui.warmup import BEST
from webui.layout import build_demo
from webui.results import RIGHT, WRONG
from webui.texts import NO_TEST_SPLIT, example_images, explain_winner
from retrieval.errors import ImageError, IndexError_, Remedy
from retrieval.indexing import build_index
from retrieval.library import file_sha256, scan_split
from retrieval.methods import Method
from retrieval.metrics import METRICS
from retrieval.search import LookalikeIndex

from app_support import frame_mark, launch
from conftest import make_tiny_library

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def queries(sample_data) -> list[tuple[Path, str]]:
    return [(it.path(sample_data), it.label) for it in scan_split(sample_data, "test")]


def _endpoints(client: Client) -> set[str]:
    return set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])


def _ok(app, path: Path, k: int = 5):
    return app.client.predict(handle_file(str(path)), "l1", k, api_name="/search_pixel")


def selectors(config: dict) -> dict[str, dict]:
    """The page's method selectors (radio and dropdown props) by elem_id."""
    return {c["props"]["elem_id"]: c["props"] for c in config["components"]
            if c["type"] in ("radio", "dropdown") and c["props"].get("elem_id")}


def marked(selector: dict) -> list[str]:
    """The values of a selector whose label says it measured best."""
    return [value for label, value in selector["choices"] if BEST in label]


def measured_best(index_dir: Path, keep) -> str:
    """The name with the highest mAP in evaluation.json (its own protocol) among the methods `keep` takes."""
    methods = json.loads((Path(index_dir) / "evaluation.json").read_text("utf-8"))["methods"]
    return max((n for n in methods if keep(Method.parse(n))), key=lambda n: methods[n]["map"])


# -- endpoints and results ----------------------------------------------------------------------

def test_endpoints_and_tabs(app):
    assert _endpoints(app.client) == {"/search_pixel", "/search_deep", "/compare", "/model_status", "/duplicates",
                                      "/duplicates_export", "/explain", "/refine", "/map", "/map_point"}
    config = requests.get(app.url + "config", timeout=10).text
    assert "There is no Text tab" in config and "has no text encoder" in config   # About says why
    assert "effnet-corr" in config and "finds the right class best here" in config   # the table and the winner
    assert "CC0-1.0" in config and "gcompris-qt-data" in config    # About: sources and licences


def test_each_tab_starts_on_its_best_measured_method_marked(app):
    """With evaluation.json, the pixel tab starts on the best pixel metric and the deep tab on the best
    method over embeddings, each marked "best on this library" in its choice label (values unchanged)."""
    pixel = measured_best(app.index.index_dir, lambda m: m.pixel and not m.reranked)
    deep = measured_best(app.index.index_dir, lambda m: not m.pixel)
    assert deep != str(app.index.default_method)   # here re-ranking wins: the plain default would hide it
    found = selectors(requests.get(app.url + "config", timeout=10).json())
    assert found["pixel-metric"]["value"] == Method.parse(pixel).metric and marked(found["pixel-metric"]) == [
        Method.parse(pixel).metric]
    assert found["deep-method"]["value"] == deep and marked(found["deep-method"]) == [deep]
    assert [v for _, v in found["deep-method"]["choices"]] == [str(m) for m in app.index.offered if not m.pixel]
    _, status, rows = app.client.predict(handle_file(str(app.index.paths[0])), deep, 3, api_name="/search_deep")
    assert len(rows) == 3 and f"`{deep}`" in status   # the API takes the value, as before


def test_about_tab_shows_no_server_paths(app):
    """A public Space must not reveal where its files live: paths are relative to the app."""
    from collections import Counter
    from webui.texts import about_markdown
    text = about_markdown(app.index, Counter())
    for folder in (app.index.index_dir, app.index.data_dir):
        assert str(Path(folder).resolve()) not in text and str(folder) not in text
    assert f"`{app.index.index_dir.name}`" in text or f"/{app.index.index_dir.name}`" in text
    assert not re.search(r"python [a-z]|\s--[a-z]", text)   # no commands or flags: a visitor cannot run them
    assert "whoever runs this app rebuilds the index" in text
    # How to use first, in three lines; then why there is no Text tab (efficientnet-lite0 has no text encoder)
    assert text.startswith("### How to use\n1. **Pick a query:**") and "\n3. **Compare**" in text
    assert ("There is no Text tab because text search needs a CLIP index: this one was built with "
            "efficientnet-lite0, which has no text encoder") in text
    assert text.index("There is no Text tab") < text.index("### Library")


@pytest.mark.parametrize("metric", list(METRICS))
def test_pixel_scores_in_order_and_match_the_index(app, queries, metric):
    path, label = queries[0]
    gallery, status, rows = app.client.predict(handle_file(str(path)), metric, 12, api_name="/search_pixel")
    scores = [r["score"] for r in rows]
    assert len(gallery) == len(rows) == 12
    assert scores == sorted(scores, reverse=METRICS[metric].higher_is_better)
    hits, _ = app.index.search(path, f"pixel-{metric}", 12)
    assert [r["file"] for r in rows] == [h.rel for h in hits]
    assert np.allclose(scores, [h.score for h in hits])
    # a test image's class is known: each result framed green (its class) or red, marked in its caption
    right = [h.label == label for h in hits]
    assert [r["correct"] for r in rows] == right
    for shown, ok, hit in zip(gallery, right, hits):
        assert shown["caption"].startswith(f"{RIGHT if ok else WRONG} #{hit.rank} {hit.label} · ")
        frame = np.asarray(Image.open(shown["image"]).convert("RGB"))
        assert {frame_mark(frame[2, 2]), frame_mark(frame[-3, -3])} == {"right" if ok else "wrong"}
    assert f"P@12 {sum(right) / 12:.2f}" in status and f"query class **{label}**" in status
    assert f"pixel-{metric}" in status and " ms" in status and METRICS[metric].order in status


def test_an_upload_not_in_the_library_is_not_framed(app, queries, tmp_path):
    """New bytes: the class is unknown, so the results are the library files themselves, unmarked,
    and the status line says why."""
    copy = tmp_path / "mine.png"
    Image.open(queries[0][0]).convert("RGB").rotate(90, expand=True).save(copy)
    gallery, status, rows = app.client.predict(handle_file(str(copy)), "l1", 3, api_name="/search_pixel")
    hits, _ = app.index.search(copy, "pixel-l1", 3)
    assert all(r["correct"] is None for r in rows) and "P@" not in status
    assert "not marked: the query is not a library or test image" in status
    assert gallery[0]["caption"].startswith(f"#1 {hits[0].label} · ")
    assert Image.open(gallery[0]["image"]).size == Image.open(hits[0].path).size   # the library file itself


def test_deep_search_finds_the_same_class(app, queries, capsys):
    """Every test image as a query through /search_deep: a same-class image in the top 5?"""
    found = []
    for path, label in queries:
        _, _, rows = app.client.predict(handle_file(str(path)), "effnet-cosine", 5, api_name="/search_deep")
        found.append(any(r["class"] == label for r in rows))
    fraction = sum(found) / len(found)
    with capsys.disabled():
        print(f"\n[app] effnet-cosine: same-class image in the top 5 for {sum(found)}/{len(found)} "
              f"test queries ({fraction:.2f})")
    assert fraction > 0.5


def test_every_deep_method_and_hnsw_agrees_with_exact(app, queries):
    path, _ = queries[1]
    results = {}
    for method in [m for m in app.index.methods if not m.startswith("pixel-")]:
        gallery, status, rows = app.client.predict(handle_file(str(path)), method, 10, api_name="/search_deep")
        assert len(gallery) == 10 and method in status
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=app.index.parse_method(method).higher_is_better)
        results[method] = [r["file"] for r in rows]
    assert results["effnet-hnsw-cosine"] == results["effnet-cosine"]
    assert results["effnet-hnsw-l2"] == results["effnet-l2"]


def test_a_library_image_is_not_its_own_result(app, sample_data):
    item = scan_split(sample_data, "train")[0]
    _, _, rows = _ok(app, item.path(sample_data), k=5)
    assert item.rel not in [r["file"] for r in rows]


def test_concurrent_clients_get_answers(app, queries):
    def one(i: int):
        path, _ = queries[i % len(queries)]
        client = Client(app.url, verbose=False)
        pix = client.predict(handle_file(str(path)), "corr", 5, api_name="/search_pixel")[2]
        deep = client.predict(handle_file(str(path)), "effnet-cosine", 5, api_name="/search_deep")[2]
        return len(pix), len(deep)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [(5, 5)] * 8


# -- bad input: an error message, and the app keeps serving --------------------------------------

def _huge_png(path: Path, side: int = 30000) -> Path:
    """A valid PNG header declaring side x side pixels, with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case,message", [
    ("text", "not an image"), ("empty", "empty"), ("huge", "too large|decompression bomb"),
    ("truncated", "corrupt or truncated"), ("none", "no query image"),
])
def test_bad_uploads_are_errors_not_crashes(app, queries, tmp_path, case, message):
    bad = tmp_path / "photo.jpg"
    if case == "text":
        bad.write_text("this is a text file renamed to .jpg\n")
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "huge":
        bad = _huge_png(tmp_path / "huge.png")
    elif case == "truncated":
        bad.write_bytes(queries[0][0].read_bytes()[:400])
    arg = None if case == "none" else handle_file(str(bad))
    for api, method in (("/search_pixel", "l1"), ("/search_deep", "effnet-cosine")):
        with pytest.raises(AppError, match=message):
            app.client.predict(arg, method, 5, api_name=api)
    assert len(_ok(app, queries[0][0])[0]) == 5      # still serving


@pytest.mark.parametrize("k", [0, 101, 2.5])
def test_bad_k_and_method(app, queries, k):
    with pytest.raises(AppError, match="k must be a whole number from 1 to 100"):
        app.client.predict(handle_file(str(queries[0][0])), "l1", k, api_name="/search_pixel")
    with pytest.raises(AppError):
        app.client.predict(handle_file(str(queries[0][0])), "pixel-l1", 5, api_name="/search_deep")
    assert len(_ok(app, queries[0][0])[0]) == 5


def test_upload_size_is_capped_by_the_server(app, queries):
    def upload(extra: int) -> int:
        body = queries[0][0].read_bytes() + b"\0" * extra
        return requests.post(f"{app.url}gradio_api/upload", files={"files": ("q.jpg", body, "image/jpeg")},
                             timeout=60).status_code

    assert upload(33 * 2**20) == 413
    assert upload(0) == 200
    assert len(_ok(app, queries[0][0])[0]) == 5


def test_only_the_library_is_served(app, sample_data):
    def get(path: str) -> int:
        return requests.get(f"{app.url}gradio_api/file={path}", timeout=10).status_code

    assert get("/etc/passwd") == 403
    assert get(str(ROOT / "app.py")) == 403
    assert get(f"{sample_data}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd") == 403   # traversal
    up = "/..".join([""] * 12)
    sibling = sample_data.parent / f"{sample_data.name}-private"      # shares the library's name prefix
    sibling.mkdir(exist_ok=True)
    (sibling / "secret.txt").write_text("not for the web")
    link = app.index.index_dir / "passwd-link"                        # a symlink inside an allowed folder
    if not link.is_symlink():
        link.symlink_to("/etc/passwd")
    for variant in (f"{sample_data}{up}/etc/passwd", f"{sample_data}/%252e%252e/%252e%252e/etc/passwd",
                    "%2Fetc%2Fpasswd", "//etc/passwd", f"{sample_data}\\..\\..\\etc\\passwd",
                    "/proc/self/environ", str(sibling / "secret.txt"), str(link)):
        assert get(variant) in (403, 404), variant
    assert get(str(app.index.paths[0])) == 200
    index = app.index.index_dir   # outside the library: its manifest, arrays and lock are not for download
    for name in ("manifest.json", "build.lock", "evaluation.json", app.index.manifest.pixels_file):
        assert get(str(index / name)) == 403, name


# -- other kinds of index ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_index(tmp_path_factory) -> Path:
    """A tiny library indexed with an open_clip checkpoint written here (random weights: no CLIP
    weights can be fetched offline), loaded through the same --model MODEL:CHECKPOINT path users use."""
    import open_clip
    import torch
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-S-32", pretrained=None).state_dict(), root / "vit-s-32.pt")
    index = root / "index"
    build_index(make_tiny_library(root / "data"), index, model=f"ViT-S-32:{root / 'vit-s-32.pt'}")
    return index


def test_text_tab_starts_on_the_best_measured_method_over_embeddings(clip_index):
    found = selectors(build_demo(LookalikeIndex.open(clip_index)).get_config_file())
    best = measured_best(clip_index, lambda m: not m.pixel)
    for selector in ("text-method", "composed-method", "deep-method"):
        assert found[selector]["value"] == best and marked(found[selector]) == [best], selector


def test_text_search_endpoint_with_a_clip_index(clip_index):
    demo, app = launch(clip_index)
    try:
        assert _endpoints(app.client) == {"/search_pixel", "/search_deep", "/search_text", "/search_composed",
                                          "/model_status", "/compare", "/duplicates", "/duplicates_export",
                                          "/explain", "/refine", "/map", "/map_point"}
        gallery, status, exact = app.client.predict("a red square", "clip-cosine", 4, api_name="/search_text")
        scores = [r["score"] for r in exact]
        assert len(gallery) == 4 and scores == sorted(scores, reverse=True) and "clip-cosine" in status
        _, _, approx = app.client.predict("a red square", "clip-hnsw-cosine", 4, api_name="/search_text")
        assert [r["file"] for r in approx] == [r["file"] for r in exact]
        for prompt, message in (("   ", "the text prompt is empty"), ("x" * 301, "the limit is 300")):
            with pytest.raises(AppError, match=message):
                app.client.predict(prompt, "clip-cosine", 4, api_name="/search_text")
        assert len(app.client.predict("a green square", "clip-l2", 3, api_name="/search_text")[0]) == 3
    finally:
        demo.close()


def test_pixel_only_index_explains_the_missing_tabs(sample_pixel_index):
    demo = build_demo(LookalikeIndex.open(sample_pixel_index))
    names = {fn.api_name for fn in demo.fns.values() if fn.api_name and not fn.api_name.startswith("load_example")
             and getattr(fn, "api_visibility", "public") == "public"}
    assert {"search_pixel", "compare"} <= names and not names & {"search_deep", "search_text"}
    text = json.dumps(demo.get_config_file(), default=str)   # a gr.State holds a callback
    assert "pixels only, so there is no deep search" in text
    tabs = [c["props"]["label"] for c in demo.get_config_file()["components"] if c["type"] == "tabitem"]
    assert tabs[:3] == ["Pixel metrics", "Deep features", "Compare"]   # no Text tab: About says why
    assert "There is no Text tab because text search needs a CLIP index: this one was built with pixels only" in text
    # what to do, for a visitor: who can rebuild it and with what, never a command, a flag or a path
    assert "Whoever runs this app can rebuild the index with a model (efficientnet-lite0" in text
    assert "whoever runs this app can rebuild it with CLIP" in text
    for shown in (m["props"].get("value") for m in demo.get_config_file()["components"] if m["type"] == "markdown"):
        assert not re.search(r"(^|[\s`(])--[a-z]|python [a-z]|build_index\.py", str(shown or "")), shown


# -- handlers and static content ------------------------------------------------------------------

def test_an_errors_remedy_is_said_for_a_visitor():
    """A visitor cannot rebuild anything: the page says who can, in the remedy's plain words."""
    import gradio as gr

    def damaged(*_):
        raise IndexError_("the index is damaged; rebuild the index", remedy=Remedy.REBUILD_INDEX)

    def refused(*_):
        raise ImageError("the upload is empty")

    with pytest.raises(gr.Error) as err:
        user_errors(damaged)()
    assert err.value.message == "the index is damaged; rebuild the index. Whoever runs this app can rebuild the index."
    with pytest.raises(gr.Error) as err:
        user_errors(refused)()
    assert err.value.message == "the upload is empty"


def test_query_source_payloads(tmp_path):
    # a path named by the client is never read (round 3): only files handlers.QueryFiles accepts
    # (tests/test_app_uploads_only.py); without one, no path at all
    with pytest.raises(ImageError, match="must be an upload"):
        query_source({"path": "/tmp/x.jpg", "url": None})
    assert query_source({"path": None, "url": "data:image/png;base64,aGVsbG8="}) == b"hello"
    for empty in (None, {}, {"path": None, "url": None}, ""):
        with pytest.raises(ImageError, match="no query image"):
            query_source(empty)
    with pytest.raises(ImageError, match="not valid base64"):
        query_source({"path": None, "url": "data:image/png;base64,@@@"})


def test_winner_explanation():
    chance = {"p@1": 0.1, "p@5": 0.1, "p@10": 0.1, "map": 0.1}
    row = lambda m: {"p@1": m, "p@5": m, "p@10": m, "map": m}  # noqa: E731
    deep = {"chance": chance, "pixel_size": 32, "model": "effnet:efficientnet-lite0",
            "methods": {"pixel-l1": row(0.2), "effnet-cosine": row(0.5), "effnet-hnsw-cosine": row(0.5)}}
    text = explain_winner(deep)
    assert text.startswith("**effnet-cosine** wins with mAP 0.500 (5.0× chance")
    assert "2.5× better" in text and "32×32" in text and "effnet-hnsw-cosine" in text
    pixel = {"chance": chance, "pixel_size": 32, "methods": {"pixel-l1": row(0.2), "pixel-corr": row(0.3)}}
    assert "**pixel-corr** wins" in explain_winner(pixel) and "brightness and contrast" in explain_winner(pixel)


# -- start-up ---------------------------------------------------------------------------------------

def test_app_py_serves_and_loads_no_model_at_start_up(sample_effnet_index, sample_data, tmp_path):
    """The real entry point: python app.py --index ... --port ...; torch and Chroma stay unloaded
    until the first deep query, so start-up stays fast."""
    probe = ("import sys; from retrieval.search import LookalikeIndex; from webui.layout import build_demo; "
             "build_demo(LookalikeIndex.open(sys.argv[1])); "
             "print([m for m in ('torch', 'chromadb', 'open_clip') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe, str(sample_effnet_index)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "app.py", "--index", str(sample_effnet_index), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                assert proc.poll() is None, "app.py exited"
            time.sleep(0.1)
        query = scan_split(sample_data, "test")[0].path(sample_data)
        _, status, rows = Client(url, verbose=False).predict(handle_file(str(query)), "corr", 3, api_name="/search_pixel")
        assert len(rows) == 3 and "pixel-corr" in status
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_no_index_and_no_hub_exits_with_the_build_command(tmp_path, monkeypatch, capsys):
    from app import main
    monkeypatch.delenv(HUB_ENV, raising=False)
    assert main(["--index", str(tmp_path / "index"), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert (f"python build_index.py sample --out {tmp_path / 'data'} && "
            f"python build_index.py index --data {tmp_path / 'data'} --index {tmp_path / 'index'}") in err


def test_index_and_library_restored_from_the_hub(tmp_path, monkeypatch):
    """Start-up with no local index: the index and the library come from a dataset repo. The Hub
    boundary (snapshot_download) is replaced by a copy from a folder laid out as the repo is."""
    from collect import hub
    data = make_tiny_library(tmp_path / "built" / "data")
    build_index(data, tmp_path / "built" / "index", model="none")
    repo = tmp_path / "repo"
    hub.write_hub_folder(hub.data_to_datasetdict(data), repo, repo_id="someone/lookalike", data_dir=data)
    shutil.copytree(tmp_path / "built" / "index", repo / "index")
    calls = []

    def fake_snapshot_download(repo_id, *, repo_type, local_dir, allow_patterns=None, **_):
        import fnmatch
        calls.append((repo_id, repo_type))
        for f in repo.rglob("*"):
            rel = f.relative_to(repo).as_posix()
            if f.is_file() and (allow_patterns is None or any(fnmatch.fnmatch(rel, p) for p in allow_patterns)):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, Path(local_dir) / rel)
        return local_dir

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv(HUB_ENV, "someone/lookalike")
    index_dir, data_dir = locate_index(tmp_path / "app" / "index", None, None, tmp_path / "app" / "hub")
    assert index_dir == tmp_path / "app" / "hub" / "someone--lookalike" / "index"
    assert calls == [("someone/lookalike", "dataset")] * 2
    index = LookalikeIndex.open(index_dir, data_dir=data_dir)
    assert all(file_sha256(p) == it["sha256"] for p, it in zip(index.paths, index.manifest.items))
    query = next(iter(scan_split(data_dir, "test")))
    hits, _ = index.search(query.path(data_dir), "pixel-l1", 3)
    assert hits[0].label == query.label and hits[0].path.is_file()
    monkeypatch.delenv(HUB_ENV)
    with pytest.raises(IndexError_, match="no Hub dataset repo configured"):
        locate_index(tmp_path / "nowhere", None, None, tmp_path / "app" / "hub")


# -- own photos: a folder without classes or a test split -------------------------------------------

@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """A flat photo folder (no classes, no test split) holding one photo twice under two names."""
    root = tmp_path_factory.mktemp("photos")
    data = root / "photos"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(data / f"p{i}.png")
    shutil.copy(data / "p2.png", data / "p2 copy.png")
    build_index(data, root / "index", model="none")
    return root / "index"


def test_a_photo_folder_starts_quietly_and_shows_each_photo_once(photo_folder, caplog):
    index = LookalikeIndex.open(photo_folder)
    with caplog.at_level(logging.INFO):
        config = json.dumps(build_demo(index).get_config_file(), default=str)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert said == [NO_TEST_SPLIT] and not any("expected class folders" in m for m in said)
    strip = example_images(index)
    assert strip.label == "Library images" and len(index.paths) == 7
    assert len(strip.paths) == 6 and len({file_sha256(Path(p)) for p in strip.paths}) == 6
    assert ("p2 copy.png" in config) != ("p2.png" in config)   # the strip holds one of the two copies


def test_a_test_split_with_a_copied_photo_offers_it_once(tmp_path):
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=2)
    shutil.copy(data / "test" / "red" / "test_0.jpg", data / "test" / "blue" / "again.jpg")
    build_index(data, tmp_path / "index", model="none", evaluate=False)
    strip = example_images(LookalikeIndex.open(tmp_path / "index"))
    assert strip.label == "Test-split images" and sum(strip.test_counts.values()) == 7
    assert len(strip.paths) == 6 and len({file_sha256(Path(p)) for p in strip.paths}) == 6
    copies = {str(data / "test" / "red" / "test_0.jpg"), str(data / "test" / "blue" / "again.jpg")}
    assert len(copies & set(strip.paths)) == 1   # the first in the strip's order stays


def test_a_large_test_split_gives_a_short_strip_with_every_class(tmp_path, monkeypatch):
    """gr.Examples' set-up grows with the square of its size (10,000 Fashion-MNIST test images
    took minutes of start-up), so a test split larger than MAX_EXAMPLES is spread over the classes."""
    import webui.texts as texts
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=4)
    build_index(data, tmp_path / "index", model="none", evaluate=False)
    index = LookalikeIndex.open(tmp_path / "index")
    everything = example_images(index).paths
    monkeypatch.setattr(texts, "MAX_EXAMPLES", 3)
    strip = example_images(index).paths
    assert len(everything) > 3 and len(strip) == 3 and set(strip) <= set(everything)
    assert len({Path(p).parent.name for p in strip}) == 3   # one of each class first


def test_a_framed_result_is_written_once_and_never_rewritten(tmp_path):
    """Two visitors shown the same framed result get the same file, written once: Gradio rewrote a
    PIL image's cache file in place per request, and a concurrent download then read it truncated."""
    from webui.results import framed
    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (120, 120, 120)).save(photo)
    first = framed(photo, True)
    before = os.stat(first)
    again, wrong = framed(photo, True), framed(photo, False)
    after = os.stat(again)
    assert again == first and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert wrong != first and Path(first).suffix == ".jpg" and framed(photo, None) == str(photo)
    with Image.open(first) as img:
        assert frame_mark(img.convert("RGB").getpixel((2, 2))) == "right"
    with Image.open(wrong) as img:
        assert frame_mark(img.convert("RGB").getpixel((2, 2))) == "wrong"
