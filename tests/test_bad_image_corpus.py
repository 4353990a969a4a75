"""The bad-image corpus (tests/bad_images.py) through every stage: load_image, library scan + index
build, cleaner, CLI search, app upload (gradio_client against a live 127.0.0.1 launch) and the
downloader (a local server sending each file with an image content type). Every file is either
handled (RGB, rotation, first frame, transparency on white) or refused with its own message;
nothing crashes or escapes. See docs/reliability.md, "Bad and awkward images".

The `corpus` fixture (tests/conftest.py) is the indexed library with the corpus in it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import bad_images
from app_support import launch
from bad_images import ACCEPTED, CASES, REJECTED
from collect.clean import clean_images
from collect.download import DownloadConfig, Downloader
from fault_server import FaultServer
from flickr_standin import Reply
from reliability_support import ENV, ROOT
from retrieval.errors import ImageError
from retrieval.images import load_image
from retrieval.search import LookalikeIndex

pytestmark = pytest.mark.usefixtures("watchdog")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_file_is_handled_or_refused_with_its_reason(corpus, case):
    path = corpus.files[case.name]
    for source in (path, path.read_bytes()):          # a library file, and an upload's bytes
        if case.accepted:
            img = load_image(source)
            case.check(img)
        else:
            with pytest.raises(ImageError, match=case.message):
                load_image(source)


def test_the_bomb_and_the_huge_image_stay_bounded_in_memory_and_time(corpus):
    """Decoded in a fresh process each: peak RSS above the bare interpreter's, with a time bound."""
    probe = ("import resource, sys; from retrieval.images import load_image; from retrieval.errors import ImageError\n"
             "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "try:\n    load_image(sys.argv[1]); verdict = 'ok'\nexcept ImageError as e:\n    verdict = str(e)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, verdict)")
    growth = {}
    for name in ("bomb.png", "huge-8000x6000.jpg"):
        out = subprocess.run([sys.executable, "-c", probe, str(corpus.files[name])], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=60)
        kb, verdict = out.stdout.split(" ", 1)
        growth[name] = int(kb) / 1024
        assert ("decompression bomb" in verdict) == (name == "bomb.png"), verdict
    print(f"decode memory growth: {growth}")
    assert growth["bomb.png"] < 20            # refused from its header: 900 Mpx would be ~2.7 GB
    assert growth["huge-8000x6000.jpg"] < 700  # 48 Mpx RGB is 144 MB; a few working copies at most


def test_index_build_skips_and_reports_the_bad_files_and_indexes_the_rest(corpus):
    skipped = {s["path"]: s["reason"] for s in corpus.summary["skipped"]}
    expected = {f"train/awkward/{c.name}": c for c in REJECTED if c.library}
    assert set(skipped) == set(expected)
    for rel, reason in skipped.items():
        assert re.search(expected[rel].message, reason), (rel, reason)
    index = LookalikeIndex.open(corpus.index)
    assert index.manifest.skipped == corpus.summary["skipped"]   # the report is kept with the index
    awkward = {r.split("/")[-1] for r in index.rels if r.startswith("train/awkward/")}
    assert awkward == {c.name for c in ACCEPTED}                 # the SVG is not even listed
    for case in ACCEPTED:   # each accepted file was stored as decoded: it finds itself first
        path = corpus.data / "train" / "awkward" / case.name
        for method in ("pixel-l1", "effnet-hnsw-cosine"):
            hits, _ = index.search(path, method, k=1, exclude_self=False)
            assert hits[0].rel == f"train/awkward/{case.name}", (case.name, method)


def test_cleaner_quarantines_each_bad_file_with_its_reason(corpus, tmp_path):
    raw = tmp_path / "raw"
    bad_images.write_corpus(raw / "web" / "awkward")
    report = clean_images(raw, tmp_path / "clean", tmp_path / "quarantine", progress=False)
    log = {Path(r["file"]).name: r for r in map(json.loads, (tmp_path / "quarantine" / "reasons.jsonl").open())}
    verdicts = {name: rec["reason"] for name, rec in log.items()}
    assert verdicts == {c.name: c.clean for c in CASES if c.clean != "ok"}
    assert "49x49 < 50px" in log["49x49.jpg"]["detail"] and "1x1 < 50px" in log["1x1.png"]["detail"]
    assert "decompression bomb" in log["bomb.png"]["detail"] and "empty" in log["zero-bytes.jpg"]["detail"]
    kept = {p.stem: p for p in (tmp_path / "clean" / "awkward").iterdir()}
    assert set(kept) == {Path(c.name).stem for c in CASES if c.clean == "ok"}
    assert report.kept == len(kept)
    for case in CASES:
        if case.clean == "ok":   # what the cleaner wrote is RGB and still right (rotation, alpha, frame)
            case.check(load_image(kept[Path(case.name).stem]))
            with Image.open(kept[Path(case.name).stem]) as img:
                assert img.mode == "RGB" and getattr(img, "n_frames", 1) == 1, case.name


def test_cli_search_over_the_corpus_exits_2_with_the_message_never_a_traceback(corpus):
    def run(case):
        path = corpus.files[case.name]
        return case, subprocess.run([sys.executable, "-m", "retrieval", "search", str(path), "--index",
                                     str(corpus.index), "-k", "3"], cwd=ROOT, env=ENV, capture_output=True,
                                    text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        for case, out in pool.map(run, CASES):
            assert "Traceback" not in out.stderr, (case.name, out.stderr)
            if case.accepted:
                assert out.returncode == 0, (case.name, out.stderr)
                assert len(out.stdout.strip().splitlines()) == 2 + 3, out.stdout
            else:
                assert out.returncode == 2, (case.name, out.returncode)
                line = out.stderr.strip()
                assert "\n" not in line and line.startswith(f"error: {corpus.files[case.name]}: "), line
                assert re.search(case.message, line), line


@pytest.fixture(scope="module")
def app(corpus):
    demo, app = launch(corpus.index)
    yield app
    demo.close()


@pytest.mark.parametrize("api,method", [("/search_pixel", "l1"), ("/search_deep", "effnet-cosine")])
def test_app_upload_over_the_corpus(corpus, app, api, method):
    full = method if api == "/search_deep" else f"pixel-{method}"
    for case in CASES:
        upload = handle_file(str(corpus.files[case.name]))
        if case.accepted:
            _, status, rows = app.client.predict(upload, method, 5, api_name=api)
            hits, _ = app.index.search(corpus.files[case.name], full, 5)
            assert [r["file"] for r in rows] == [h.rel for h in hits], case.name
        else:
            with pytest.raises(AppError) as err:
                app.client.predict(upload, method, 5, api_name=api)
            message = str(err.value)
            assert re.search(case.message, message), (case.name, message)
            # Named by the user's own file name; the server's upload cache path is not revealed.
            assert f"the upload '{case.name}'" in message and "/gradio" not in message, message
    _, _, rows = app.client.predict(handle_file(str(corpus.files["photo.webp"])), method, 3, api_name=api)
    assert len(rows) == 3   # still serving


@pytest.mark.parametrize("k,message", [(0, "k must be"), (-3, "k must be"), (10 ** 12, "k must be"),
                                       ("5; DROP TABLE", "k must be"), (None, "k must be")])
def test_app_refuses_out_of_range_k(corpus, app, k, message):
    with pytest.raises(AppError, match=message):
        app.client.predict(handle_file(str(corpus.files["photo.webp"])), "l1", k, api_name="/search_pixel")


def test_downloader_over_the_corpus_then_the_cleaner(corpus, tmp_path):
    config = DownloadConfig(workers=4, delay=0.0, read_timeout=10.0, retries=0, max_bytes=32 * 2 ** 20)
    with FaultServer() as srv:
        for case in CASES:
            srv.routes[f"/corpus/{case.name}"] = Reply(200, case.make(), case.content_type)
        jobs = [("web", "awkward", srv.url(f"/corpus/{c.name}")) for c in CASES]
        raw = tmp_path / "raw"
        Downloader(raw, config).run(jobs, progress=False)
        records = {r["url"].rsplit("/", 1)[1]: r for r in json.loads((raw / "manifest.json").read_text())["items"]}
    for case in CASES:
        rec = records[case.name]
        if case.accepted:
            assert rec["status"] == "ok", (case.name, rec)
            assert (raw / rec["file"]).read_bytes() == case.make()
        else:
            assert rec["status"] == "not_image" and rec["file"] is None, (case.name, rec)
            assert re.search(case.message, rec["detail"]), (case.name, rec["detail"])
    files = [p for p in raw.rglob("*") if p.is_file()]
    assert len(files) == len(ACCEPTED) + 1 and all(p.resolve().is_relative_to(raw.resolve()) for p in files)
    report = clean_images(raw, tmp_path / "clean", tmp_path / "quarantine", progress=False)
    assert dict(report.rejected) == {"too_small": 2}      # what got past the downloader: 1x1 and 49x49
    assert report.kept == len(ACCEPTED) - 2
