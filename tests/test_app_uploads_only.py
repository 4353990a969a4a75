"""Uploads only: the web app decodes a query image only when Gradio received it as an upload (or it
is a library image the index holds); a server path named by a client is refused with one message,
whatever is or is not at that path, on every endpoint, over raw HTTP and gradio_client alike.

Fails before round 3: the search endpoints ran with preprocess=False and handlers.query_source took
{"path": "/any/server/file"} as it found it, so a raw call read any server image (and /compare sent
back a thumbnail of it), and the error told which server files exist.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
import requests
from gradio.utils import get_upload_folder
from gradio_client import handle_file
from PIL import Image

from retrieval.errors import ImageError
from retrieval.indexing import build_index
from retrieval.search import LookalikeIndex
from webui.compare import Comparer
from webui.handlers import NOT_AN_UPLOAD, QueryFiles, Searcher, query_source

from conftest import make_tiny_library

META = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def clip_app(tmp_path_factory, clip_checkpoint):
    """The app over a tiny CLIP index: every endpoint that takes an image (pixel, deep, composed, compare)."""
    from app_support import launch
    root = tmp_path_factory.mktemp("uploads-only")
    data = make_tiny_library(root / "data", n_train=3, n_test=1)
    build_index(data, root / "index", model=f"ViT-B-32:{clip_checkpoint}", evaluate=False)
    demo, app = launch(root / "index")
    app.data = data
    yield app
    demo.close()


@pytest.fixture
def server_files(tmp_path, clip_app):
    """Files a client might name: an image outside the library, and every other kind of target."""
    image = tmp_path / "server" / "private.jpg"
    image.parent.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    (tmp_path / "server" / "notes.txt").write_text("not an image")
    (tmp_path / "server" / "empty.jpg").write_bytes(b"")
    upload_dir = Path(get_upload_folder()) / secrets.token_hex(32)   # a link in Gradio's upload folder
    upload_dir.mkdir(parents=True)
    (upload_dir / "link.jpg").symlink_to(image)
    try:
        yield {"an existing server image": str(image), "a missing path": str(tmp_path / "missing.jpg"),
               "a directory": str(image.parent), "a non-image": str(tmp_path / "server" / "notes.txt"),
               "an empty file": str(tmp_path / "server" / "empty.jpg"),
               "a link in the upload folder leading out": str(upload_dir / "link.jpg"),
               "'..' segments": f"{get_upload_folder()}/../{image.relative_to('/')}",
               "a relative path": "private.jpg"}
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)


def _inputs(api: str, image: object) -> list:
    return {"search_pixel": [image, "l1", 3], "search_deep": [image, "clip-cosine", 3],
            "search_composed": ["red", image, 1.0, "", "clip-cosine", 3], "compare": [image, 3]}[api]


def _raw(app, api: str, image: object) -> tuple[str, str]:
    """(outcome, text) of a raw POST /gradio_api/call/<api>: refused at the door, failed, or answered."""
    resp = requests.post(f"{app.url}gradio_api/call/{api}", json={"data": _inputs(api, image)}, timeout=60)
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}", resp.json().get("error") or resp.text
    stream = requests.get(f"{app.url}gradio_api/call/{api}/{resp.json()['event_id']}", timeout=120).text
    event = stream.split("event: ")[-1].split("\n", 1)[0]
    data = json.loads(stream.split("data: ")[-1].split("\n", 1)[0])
    return event, (data or {}).get("error") if event == "error" else json.dumps(data)[:200]


APIS = ["search_pixel", "search_deep", "search_composed", "compare"]


@pytest.mark.parametrize("api", APIS)
def test_a_named_server_file_is_refused_alike_on_every_endpoint(clip_app, server_files, api):
    """Every target, as a FileData payload with and without meta, as a plain string and as a URL:
    the same refusal text, which names no path, while an upload (through gradio_client or
    /gradio_api/upload) and a pasted data: URL are answered. Before round 3 the existing image was
    a query, and the other targets got telling errors."""
    payloads = {}
    for what, path in server_files.items():
        payloads[f"{what} (FileData)"] = {"path": path, "meta": META, "orig_name": "x.jpg"}
        payloads[f"{what} (no meta)"] = {"path": path}
        payloads[f"{what} (a string)"] = path
    for url in ("http://127.0.0.1:9/photo.jpg", "https://example.com/photo.jpg", "file:///etc/hostname"):
        payloads[f"the URL {url}"] = {"path": None, "url": url, "meta": META}
    answers = {what: _raw(clip_app, api, payload) for what, payload in payloads.items()}
    for what, (outcome, text) in answers.items():
        assert text == NOT_AN_UPLOAD, (what, outcome, text)
    assert {outcome for outcome, _ in answers.values()} == {"HTTP 422"}   # at the door, before Gradio

    image = server_files["an existing server image"]
    out = clip_app.client.predict(*_inputs(api, handle_file(image)), api_name=f"/{api}")
    assert out[2]                                                          # rows as data: the search ran
    with open(image, "rb") as fh:
        [stored] = requests.post(f"{clip_app.url}gradio_api/upload", files={"files": fh}, timeout=60).json()
    assert _raw(clip_app, api, {"path": stored, "meta": META, "orig_name": "mine.jpg"})[0] == "complete"
    assert _raw(clip_app, api, {"path": stored})[0] == "complete"
    pasted = "data:image/jpeg;base64," + base64.b64encode(Path(image).read_bytes()).decode()
    assert _raw(clip_app, api, {"path": None, "url": pasted, "meta": META})[0] == "complete"


@pytest.fixture(scope="module")
def pixel_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uploads-only-pixels")
    build_index(make_tiny_library(root / "data"), root / "index", model="none", evaluate=False)
    return root / "index"


def test_query_files_accepts_uploads_and_indexed_library_images_only(pixel_index):
    """What QueryFiles accepts, in-process. Fails before round 3: there was no such check."""
    index = LookalikeIndex.open(pixel_index)
    files = QueryFiles.for_index(index)
    library = index.paths[0]
    assert files.check(str(library)) == str(library)
    assert files.check(library) == str(library)
    assert files.check(str(library), uploads_only=True) is None        # a FileData payload: uploads only
    stray = index.data_dir / ".thumbnails" / "x.jpg"                    # in the library folder, not indexed
    stray.parent.mkdir(exist_ok=True)
    shutil.copy(library, stray)
    try:
        upload = Path(get_upload_folder()) / secrets.token_hex(32) / "mine.jpg"
        upload.parent.mkdir(parents=True)
        shutil.copy(library, upload)
        assert files.check(str(upload)) == str(upload)
        assert files.check(str(upload), uploads_only=True) == str(upload)
        for refused in (str(stray), str(index.data_dir), f"{index.data_dir}/./{index.rels[0]}",
                        f"{index.data_dir}/x/../{index.rels[0]}", index.rels[0], str(upload.parent),
                        str(Path(get_upload_folder()) / "mine.jpg"), "", None, 42, ["/etc/hostname"],
                        "/etc/hostname", "x" * 5000, "/tmp/\ud800.jpg", "/tmp/a\0.jpg"):
            assert files.check(refused) is None, refused
        with pytest.raises(ImageError) as err:
            query_source({"path": str(stray)}, files)
        assert str(err.value) == NOT_AN_UPLOAD
        with pytest.raises(ImageError) as err:
            query_source({"path": str(library)})                      # no QueryFiles: no named file at all
        assert str(err.value) == NOT_AN_UPLOAD
    finally:
        stray.unlink()
        shutil.rmtree(upload.parent, ignore_errors=True)


def test_more_like_this_takes_only_files_the_page_got(pixel_index, tmp_path):
    """The gallery click names a result through the rows the page holds, which come back from the
    client: Comparer.pick accepts only a library image (it returned any path before round 3)."""
    import gradio as gr
    index = LookalikeIndex.open(pixel_index)
    comparer = Comparer(index)
    secret = tmp_path / "secret.jpg"
    shutil.copy(index.paths[0], secret)

    def rows(rel: str) -> list[dict]:
        return [{"hits": [{"file": rel}]}]

    for named in (str(secret), os.path.relpath(secret, index.data_dir), "../secret.jpg"):
        with pytest.raises(gr.Error) as err:
            comparer.pick(rows(named), 0, 0)
        assert err.value.message == NOT_AN_UPLOAD, named
    with pytest.raises(gr.Error, match="no longer on the page"):
        comparer.pick([], 0, 0)
    assert comparer.pick(rows(index.rels[1]), 0, 0) == os.path.abspath(index.paths[1])
    searcher = Searcher(index)
    with pytest.raises(ImageError, match="must be an upload"):
        searcher.pixel({"path": str(secret)}, "l1", 3)
    assert os.path.exists(secret)
