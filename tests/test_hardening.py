"""Hardening, round 2 (issue 14): hostile inputs of every size and shape, each generated here or
in tests/bad_images.py (ROUND2), each with the outcome it must get.

- memory bounded by the work: extreme aspect ratios, 64 Mpx 16-bit PNGs, data: URLs, the decode
  budget and its pool (items 1);
- nothing outside the library is served: symbolic links on a live app, and the cleaner (item 2);
- the downloader's total timeout and Content-Encoding faults (item 7);
- Hub pull refuses malformed datasets before writing anything (item 8);
- the app starts on a library with malformed side files (item 9).
Damaged indexes (item 6) are in tests/test_damaged_index.py, concurrent builds (item 5) in
tests/test_concurrent_builds.py, and the memory-cap benchmark in bench/load/hostile_memory.py.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import bad_images
from bad_images import ROUND2
from conftest import make_tiny_library
from retrieval import images
from retrieval.errors import ImageError, LibraryError
from retrieval.images import MAX_RESIZED_PIXELS, cap_aspect, flatten_to_rgb, load_image

ROUND2_BY_NAME = {c.name: c for c in ROUND2}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    return bad_images.write_corpus(tmp_path_factory.mktemp("round2"), ROUND2)


# -- 1. memory bounded by the work -------------------------------------------------------------

@pytest.mark.parametrize("case", ROUND2, ids=[c.name for c in ROUND2])
def test_round2_files_decode_to_what_they_show(hostile, case):
    case.check(load_image(hostile[case.name]))


@pytest.mark.parametrize("size", [(65000, 3), (3, 65000), (1_000_000, 1), (1, 1_000_000), (400, 300), (1, 1)])
def test_cap_aspect_bounds_the_ratio_and_keeps_the_centre(size):
    img = Image.new("L", size, 0)
    w, h = size
    img.paste(255, (w // 2, h // 2, w // 2 + 1, h // 2 + 1))    # a marker at the centre
    out = cap_aspect(img)
    assert max(out.size) <= images.MAX_ASPECT * min(out.size)
    assert min(out.size) == min(size)
    if max(size) <= images.MAX_ASPECT * min(size):
        assert out is img                                       # ordinary images are untouched
    assert 255 in np.asarray(out)                               # the centre survives the crop


def _effnet():
    from retrieval.embedders import load_embedder
    return load_embedder("effnet")


@pytest.fixture(scope="module")
def effnet():
    return _effnet()


@pytest.mark.parametrize("name", ["wide-65000x3.jpg", "tall-3x65000.jpg", "line-1000000x1.png"])
def test_extreme_aspect_ratios_are_resized_within_the_cap_on_query_and_library_paths(effnet, hostile, name, monkeypatch):
    """Every PIL step's result is recorded: none may exceed MAX_RESIZED_PIXELS (the resize used
    to ask for 5.5 Gpx and 65.5 Gpx), and both paths give a vector."""
    from retrieval.embedders import preprocessing
    seen: list[tuple[int, int]] = []
    steps = tuple((lambda f: (lambda im: (r := f(im), seen.append(r.size))[0]))(s) for s in effnet.split.pil_steps)
    monkeypatch.setattr(effnet, "split", preprocessing.SplitTransform(steps, effnet.split.mean, effnet.split.std,
                                                                      effnet.split.draft_size))
    query = effnet.encode_images([load_image(hostile[name])])                          # the query path
    (ok, library), = list(effnet.encode_files([hostile[name]], progress=False))       # the library path
    assert query.shape == (1, effnet.dim) and ok == [0] and np.isfinite(query).all()
    assert np.allclose(query, library, atol=1e-5)
    assert seen and max(w * h for w, h in seen) <= MAX_RESIZED_PIXELS, seen


def test_a_step_that_would_exceed_the_resize_cap_is_refused():
    from retrieval.embedders.preprocessing import bounded_steps
    with pytest.raises(ImageError, match="would be resized to 4000x4000 by"):
        bounded_steps(Image.new("RGB", (10, 10)), (lambda im: im.resize((4000, 4000)),))


def test_sixteen_bit_decode_needs_no_float_copies_of_the_image(hostile):
    """The 64 Mpx 16-bit PNG: numpy's working memory in the conversion (tracemalloc sees numpy's
    allocations) stays a band plus the 64 MB output, where it was four 512 MB float64 copies."""
    img = Image.open(hostile["deep-16bit-8000x8000.png"])
    img.load()
    tracemalloc.start()
    try:
        out = flatten_to_rgb(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.mode == "RGB" and out.size == (8000, 8000)
    assert peak < 200 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB"
    row = np.asarray(out.crop((0, 0, 8000, 1)))[0, :, 0].astype(int)
    ramp = np.linspace(0, 65535, 8000).astype(np.uint16).astype(np.float64)
    assert np.abs(row - np.floor(ramp * 255 / 65535)).max() <= 1   # the old formula, to one level


def test_images_over_the_per_image_decode_budget_are_refused_from_the_header(hostile, monkeypatch):
    monkeypatch.setattr(images, "DECODE_BUDGET_BYTES", 64 * 2 ** 20)
    with pytest.raises(ImageError, match=r"8000x8000 in mode I;16 would take 122 MB to decode, over the 64 MB "
                                         r"per-image budget"):
        load_image(hostile["deep-16bit-8000x8000.png"], name="deep.png")
    with pytest.raises(ImageError, match="per-image budget"):
        images.check_image(hostile["deep-16bit-8000x8000.png"])


def test_the_decode_pool_makes_big_decodes_wait_their_turn_and_gives_up_with_a_message(monkeypatch):
    pool = images._DecodePool(100)
    held = pool.reserve(80, "first")
    with pytest.raises(ImageError, match=r"second: the server is busy decoding other large images"):
        pool.reserve(40, "second", wait_s=0.1)
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.reserve(40, "third", wait_s=30)))
    waiter.start()
    pool.release(held)
    waiter.join(timeout=30)
    assert got == [40] and pool.used == 40
    assert images._DecodePool(100).reserve(10 ** 9, "alone") == 100  # one image never waits forever


def test_every_decode_releases_its_reservation_even_when_it_fails(hostile, tmp_path):
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(bad_images.truncated_jpeg())
    load_image(hostile["deep-16bit-8000x8000.png"])
    with pytest.raises(ImageError):
        load_image(bad)
    images.check_image(hostile["wide-65000x3.jpg"])
    assert images.DECODE_POOL.used == 0


def test_data_url_payloads_are_capped_before_decoding(monkeypatch):
    from webui import handlers
    decoded = []
    monkeypatch.setattr(handlers.base64, "b64decode", lambda *a, **k: decoded.append(1) or b"")
    over = "A" * ((handlers.MAX_UPLOAD_BYTES // 3 + 2) * 4)
    with pytest.raises(ImageError, match=r"the pasted image is about 32 MB; the limit is 32 MB, as for uploads"):
        handlers.query_source({"url": "data:image/png;base64," + over})
    assert decoded == []
    monkeypatch.undo()
    png = bad_images.line_png()
    ok = handlers.query_source({"url": "data:image/png;base64," + base64.b64encode(png).decode()})
    assert ok == png


def test_the_downloader_check_decodes_without_an_rgb_copy(hostile):
    assert images.check_image(hostile["deep-16bit-8000x8000.png"]) == (8000, 8000, "I;16")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        images.check_image(bad_images.truncated_jpeg(), name="t.jpg")
    with pytest.raises(ImageError, match="decompression bomb"):
        images.check_image(bad_images.decompression_bomb(), name="b.png")


# -- 2. nothing outside the library is served ------------------------------------------------------

SECRET = (250, 5, 250)


@pytest.fixture
def linked_library(tmp_path):
    """A library with every kind of link out of it, and a secret image outside it. After the
    build, a library file is swapped for a link to the secret (the index still lists it)."""
    data = make_tiny_library(tmp_path / "data", n_train=3, n_test=1)
    outside = tmp_path / "private"
    (outside / "album").mkdir(parents=True)
    Image.new("RGB", (64, 64), SECRET).save(outside / "secret.png")
    Image.new("RGB", (64, 64), SECRET).save(outside / "album" / "also-secret.png")
    (data / "train" / "red" / "link-out.png").symlink_to(outside / "secret.png")
    (data / "train" / "album-link").symlink_to(outside / "album", target_is_directory=True)
    (data / "train" / "red" / "link-in.jpg").symlink_to(data / "train" / "red" / "train_0.jpg")
    from retrieval.indexing import build_index
    build_index(data, tmp_path / "index", model="none", evaluate=False)
    swapped = data / "train" / "blue" / "train_0.jpg"
    swapped.unlink()
    swapped.symlink_to(outside / "secret.png")
    return data, tmp_path / "index", outside


def test_symlinks_out_of_the_library_are_never_indexed_or_served_on_a_live_app(linked_library):
    from gradio_client import handle_file

    import app_support
    data, index_dir, outside = linked_library
    secret_bytes = (outside / "secret.png").read_bytes()
    demo, app = app_support.launch(index_dir)
    try:
        rels = set(app.index.rels)
        assert "train/red/link-out.png" not in rels and not any("album" in r for r in rels)
        assert "train/red/link-in.jpg" in rels                     # a link inside the library is fine
        gallery, status, rows = app.client.predict(handle_file(str(outside / "secret.png")), "l1", 100,
                                                   api_name="/search_pixel")
        assert len(rows) == len(app.index.rels) and "train/blue/train_0.jpg" in [r["file"] for r in rows]
        assert "1 not shown: the file leads outside the library" in status
        served = [item["image"] for item in gallery]   # the client's downloaded copies of what was served
        assert len(served) == len(app.index.rels) - 1
        assert all(Path(p).read_bytes() != secret_bytes for p in served)
        for path in (data / "train" / "red" / "link-out.png", data / "train" / "blue" / "train_0.jpg",
                     data / "train" / "album-link" / "also-secret.png", outside / "secret.png"):
            got = requests.get(f"{app.url}gradio_api/file={path}", timeout=10)
            assert got.status_code in (403, 404) and got.content != secret_bytes, path
        ok = requests.get(f"{app.url}gradio_api/file={data / 'train' / 'red' / 'train_1.jpg'}", timeout=10)
        assert ok.status_code == 200 and ok.content == (data / "train" / "red" / "train_1.jpg").read_bytes()
    finally:
        demo.close()


def test_examples_never_include_a_link_out_of_the_library(linked_library):
    from webui.layout import build_demo
    from retrieval.search import LookalikeIndex
    data, index_dir, outside = linked_library
    (data / "test" / "red" / "peek.png").symlink_to(outside / "secret.png")
    config = json.dumps(build_demo(LookalikeIndex.open(index_dir)).get_config_file(), default=str)
    assert "peek.png" not in config and "secret" not in config


def test_the_cleaner_does_not_follow_links_out_of_raw(tmp_path, caplog):
    from collect.clean import clean_images
    raw = tmp_path / "raw"
    (raw / "web" / "apple").mkdir(parents=True)
    Image.new("RGB", (80, 80), (200, 10, 10)).save(raw / "web" / "apple" / "a.jpg")
    outside = tmp_path / "private"
    (outside / "pears").mkdir(parents=True)
    Image.new("RGB", (80, 80), SECRET).save(outside / "secret.png")
    Image.new("RGB", (80, 80), SECRET).save(outside / "pears" / "p.png")
    (raw / "web" / "apple" / "link.png").symlink_to(outside / "secret.png")
    (raw / "web" / "pears").symlink_to(outside / "pears", target_is_directory=True)
    (raw / "linked-category").symlink_to(outside, target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        report = clean_images(raw, tmp_path / "clean", tmp_path / "quarantine", progress=False)
    assert report.classes == {"apple": 1}
    written = [p for p in (tmp_path / "clean").rglob("*") if p.is_file() and not p.name.startswith(".")]
    quarantined = [p for p in (tmp_path / "quarantine").rglob("*") if p.is_file()] if (tmp_path / "quarantine").exists() else []
    assert [p.name for p in written] == ["a.jpg"] and quarantined == []
    assert "a symbolic link to a file outside" in caplog.text and "a symbolic link to a folder" in caplog.text


# -- 7. the downloader's total timeout -----------------------------------------------------------

@pytest.fixture(scope="module")
def fault():
    from fault_server import FaultServer
    with FaultServer(drip_s=0.3, drip_for_s=60) as srv:
        yield srv


@pytest.mark.parametrize("route", ["/drip-body.jpg", "/drip-headers.jpg"])
def test_a_dripping_server_is_stopped_at_the_total_timeout(fault, tmp_path, route):
    from collect.download import DownloadConfig, Downloader
    cfg = DownloadConfig(delay=0, total_timeout=2, read_timeout=1.5, retries=2, backoff=0)
    outcome = Downloader(tmp_path / "raw", cfg).download("c", "t", fault.url(route))
    assert outcome.status == "timeout", outcome
    assert outcome.detail == "over the total timeout of 2s (headers and body together)"
    assert outcome.attempts == 1                    # a timeout is not retried in the same run
    assert not list((tmp_path / "raw").rglob("*.jpg"))


@pytest.mark.parametrize("route, status", [("/bad-encoding.jpg", "bad_encoding"), ("/long-encoding.jpg", "bad_encoding"),
                                           ("/long-header.jpg", "bad_headers")])
def test_bad_or_over_long_encodings_are_classified_without_a_traceback(fault, tmp_path, route, status, caplog):
    from collect.download import DownloadConfig, Downloader, is_permanent
    with caplog.at_level(logging.WARNING):
        report = Downloader(tmp_path / "raw", DownloadConfig(delay=0, retries=1, backoff=0)).run(
            [("c", "t", fault.url(route))], progress=False)
    assert dict(report.counts) == {status: 1} and is_permanent(status)
    assert "failed unexpectedly" not in caplog.text and "Traceback" not in caplog.text
    record = json.loads((tmp_path / "raw" / "manifest.json").read_text())["items"][0]
    assert record["status"] == status and record["detail"]


def test_normal_downloads_still_work_next_to_the_faults(fault, tmp_path):
    from collect.download import DownloadConfig, Downloader
    report = Downloader(tmp_path / "raw", DownloadConfig(delay=0, total_timeout=5)).run(
        [("c", "t", fault.url(f"/img/{i}.jpg")) for i in range(3)] + [("c", "t", fault.url("/png/x.png"))],
        progress=False)
    assert dict(report.counts) == {"ok": 4}


# -- 8. Hub pull rejects malformed datasets --------------------------------------------------------

def _jpeg(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (60, 60), colour).save(buf, "JPEG")
    return buf.getvalue()


def _dataset(labels, files, *, classes=("cat", "dog"), drop=(), image_bytes=True):
    import datasets
    cols = {"image": [{"bytes": _jpeg((30 * i % 255, 10, 10)) if image_bytes else None, "path": None}
                      for i in range(len(labels))], "label": list(labels), "file": list(files)}
    feats = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes)),
             "file": datasets.Value("string")}
    for c in drop:
        cols.pop(c)
        feats.pop(c)
    # Built with plain int labels, then labelled ClassLabel: datasets itself refuses an out-of-range
    # label on encode, but a parquet file from elsewhere can hold one.
    plain = {**feats, **({"label": datasets.Value("int64")} if "label" in feats else {}),
             **({"image": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}} if "image" in feats else {})}
    ds = datasets.Dataset.from_dict(cols, features=datasets.Features(plain))
    ds = datasets.Dataset(ds.data, info=datasets.DatasetInfo(features=datasets.Features(feats)))
    return datasets.DatasetDict({"train": ds})


MALFORMED = {
    "label -1": (lambda: _dataset([0, -1], ["a.jpg", "b.jpg"]), r"row 1 of train has label -1, outside the dataset's 2 classes"),
    "label out of range": (lambda: _dataset([0, 7], ["a.jpg", "b.jpg"]), r"row 1 of train has label 7, outside"),
    "no label column": (lambda: _dataset([0, 1], ["a.jpg", "b.jpg"], drop=("label",)), r"the train split has no 'label' column"),
    "no image column": (lambda: _dataset([0, 1], ["a.jpg", "b.jpg"], drop=("image",)), r"the train split has no 'image' column"),
    "no image bytes": (lambda: _dataset([0, 1], ["a.jpg", "b.jpg"], image_bytes=False), r"row 0 of train has no image bytes"),
    "300-byte name": (lambda: _dataset([0, 1], ["a.jpg", "é" * 148 + ".jpg"]), r"it is 300 bytes long, over the 255-byte limit"),
    "duplicate rows": (lambda: _dataset([0, 0], ["same.jpg", "same.jpg"]), r"rows 0 and 1 of train both write train/cat/same.jpg"),
    "ESC in a name": (lambda: _dataset([0, 1], ["a.jpg", "evil\x1b[31m.jpg"]), r"holds control characters"),
    "BEL in a name": (lambda: _dataset([0, 1], ["a.jpg", "ding\x07.jpg"]), r"holds control characters"),
    "CR in a name": (lambda: _dataset([0, 1], ["a.jpg", "over\rwrite.jpg"]), r"holds control characters"),
    "ESC in a class": (lambda: _dataset([0, 1], ["a.jpg", "b.jpg"], classes=("cat", "d\x1bog")), r"class name .* holds control"),
}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """pull() against a repo folder written by write_hub_folder (the Hub replaced at its boundary)."""
    from collect import hub
    repo = tmp_path / "repo"

    def fake_snapshot_download(repo_id, **kw):
        shutil.copytree(repo, kw["local_dir"], dirs_exist_ok=True)
        return kw["local_dir"]
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    return repo


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_hub_pull_refuses_malformed_datasets_before_writing_anything(fake_hub, tmp_path, case):
    from collect import hub
    make, message = MALFORMED[case]
    (fake_hub / "data").mkdir(parents=True)   # the shards as a repo holds them (no card: it needs the columns)
    for split, ds in make().items():
        ds.to_parquet(str(fake_hub / "data" / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "pulled"
    with pytest.raises(LibraryError, match=message):
        hub.pull("someone/bad", out)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_a_good_dataset_still_pulls(fake_hub, tmp_path):
    from collect import hub
    hub.write_hub_folder(_dataset([0, 1, 1], ["a.jpg", "b.jpg", "c.jpg"]), fake_hub, repo_id="someone/ok")
    summary = hub.pull("someone/ok", tmp_path / "pulled")
    assert summary["written"] == 3
    assert sorted(p.relative_to(tmp_path / "pulled").as_posix() for p in (tmp_path / "pulled").rglob("*.jpg")) == \
        ["train/cat/a.jpg", "train/dog/b.jpg", "train/dog/c.jpg"]


# -- 9. the app starts on a library with bad side files -------------------------------------------

BAD_SIDE_FILES = {
    "evaluation: a list": ("evaluation.json", "[1, 2, 3]", "it holds a JSON list, not an object"),
    "evaluation: not JSON": ("evaluation.json", "{oops", "not readable JSON"),
    "evaluation: no chance": ("evaluation.json", json.dumps({"methods": {"pixel-l1": {"map": 0.5, "p@5": 0.4}}}),
                              "it has no numeric chance.map"),
    "evaluation: methods a list": ("evaluation.json", json.dumps({"chance": {"map": 0.3}, "methods": ["pixel-l1"]}),
                                   "methods is a JSON list, not an object"),
    "evaluation: scores as text": ("evaluation.json", json.dumps({"chance": {"map": 0.3}, "methods": {"pixel-l1": {"map": "high"}}}),
                                   "method 'pixel-l1' lacks numeric map and p@5 scores"),
    "attribution: a number": ("ATTRIBUTION.json", "42", "Note: ATTRIBUTION.json"),
    "attribution: records of the wrong type": ("ATTRIBUTION.json", json.dumps({"records": [1, "x", None]}),
                                               "Note: ATTRIBUTION.json"),
    "attribution: not JSON": ("ATTRIBUTION.json", "\x00\xff garbage", "Note: ATTRIBUTION.json"),
}


@pytest.mark.parametrize("case", list(BAD_SIDE_FILES), ids=list(BAD_SIDE_FILES))
def test_the_app_starts_with_malformed_side_files_and_says_so_on_the_tab(sample_pixel_index, tmp_path, case):
    from retrieval.search import LookalikeIndex
    from webui.handlers import Searcher
    from webui.layout import build_demo
    name, content, note = BAD_SIDE_FILES[case]
    index_dir = tmp_path / "index"
    shutil.copytree(sample_pixel_index, index_dir)
    index = LookalikeIndex.open(index_dir)
    data = tmp_path / "data"
    shutil.copytree(index.data_dir, data, symlinks=True)
    target = (index_dir if name == "evaluation.json" else data) / name
    target.write_bytes(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
    index = LookalikeIndex.open(index_dir, data_dir=data)
    config = json.dumps(build_demo(index).get_config_file(), default=str)      # the whole page builds
    assert f"Note: {'`evaluation.json` in the index folder is malformed (' if name == 'evaluation.json' else ''}" in config
    assert note in config
    query = sorted((data / "test").rglob("*.jpg"))[0]
    _, status, rows = Searcher(index).pixel(str(query), "l1", 3)   # and search works
    assert len(rows) == 3


def test_data_urls_are_refused_on_a_live_app_at_the_door_or_by_the_handler(sample_pixel_index):
    """Over the JSON body cap: 413 before the queue (webui.limits). Over the 32 MB upload cap but
    under the body cap: the handler's message, before base64-decoding. A small one is answered."""
    import app_support
    from webui.limits import MAX_BODY_BYTES

    def call(url: str) -> requests.Response:
        return requests.post(f"{app.url}gradio_api/call/search_pixel", timeout=120, json={"data": [
            {"path": None, "url": url, "meta": {"_type": "gradio.FileData"}}, "l1", 3]})

    def result(resp: requests.Response) -> str:
        event = resp.json()["event_id"]
        return requests.get(f"{app.url}gradio_api/call/search_pixel/{event}", timeout=120).text

    demo, app = app_support.launch(sample_pixel_index)
    try:
        huge = call("data:image/png;base64," + "A" * (MAX_BODY_BYTES + 1024))
        assert huge.status_code == 413 and "an image, uploaded or pasted, may be 32 MB" in huge.json()["error"]
        over = call("data:image/png;base64," + "A" * (33 * 2 ** 20 * 4 // 3))
        assert over.status_code == 200 and "the limit is 32 MB, as for uploads" in result(over)
        small = call("data:image/png;base64," + base64.b64encode(bad_images.png_named_jpg()).decode())
        assert "results in" in result(small)
    finally:
        demo.close()
