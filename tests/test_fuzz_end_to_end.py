"""The decoder fuzzer's files through the build and the app (issue 19, item 6, "0 tracebacks in the
build and the app"): mutated files of every allowed format, with their usual extensions, in a
library that `build_index.py index` indexes, and as uploads to the app's search handlers.

The build must exit 0 (a broken file is a property of the library, reported, not a failure), print
no traceback, and account for every file: indexed or skipped with a reason. Each upload must be
answered or refused with a message (gr.Error), never raise anything else.

Fails before round 3 (checked against the code of 3e35094): the library scan ignored .tif, .avif,
.jp2 and .ico files, so they were neither indexed nor reported, and a fuzzed TIFF upload raised a
bare KeyError out of the app's pixel handler. (The probe's `build_index.py index` exit 1 with a
traceback came from such exceptions escaping load_image.)
"""
from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
from gradio.utils import get_upload_folder

from retrieval.search import LookalikeIndex
from test_decoder_fuzz import SEED, SEEDS, mutate
from webui.handlers import Searcher, user_errors

ROOT = Path(__file__).resolve().parents[1]
PER_FORMAT = 12
SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
          "TIFF": ".tif", "AVIF": ".avif", "JPEG2000": ".jp2", "ICO": ".ico"}


def _fuzzed() -> dict[str, bytes]:
    """PER_FORMAT mutated files per format, named with the format's usual extension."""
    out = {}
    for fmt in sorted(SEEDS):
        seeds, rng = SEEDS[fmt](), random.Random(f"{SEED}-e2e-{fmt}")
        for i in range(PER_FORMAT):
            out[f"{fmt.lower()}-{i}{SUFFIX[fmt]}"] = mutate(seeds[i % len(seeds)], rng)
        out[f"{fmt.lower()}-valid{SUFFIX[fmt]}"] = seeds[0]
    return out


@pytest.fixture(scope="module")
def fuzzed_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-e2e")
    files = _fuzzed()
    for n, (name, data) in enumerate(sorted(files.items())):
        folder = root / "data" / ("a" if n % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    proc = subprocess.run([sys.executable, str(ROOT / "build_index.py"), "index", "--data", str(root / "data"),
                           "--index", str(root / "index"), "--model", "none", "--no-eval"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    return root, files, proc


def test_the_build_indexes_or_skips_every_fuzzed_file_without_a_traceback(fuzzed_index):
    root, files, proc = fuzzed_index
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((root / "index" / "manifest.json").read_text())
    indexed = {Path(it["path"]).name for it in manifest["items"]}
    skipped = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
    assert indexed | set(skipped) == set(files)        # every file accounted for, once
    assert not indexed & set(skipped)
    assert all(reason for reason in skipped.values())
    assert {f"{fmt.lower()}-valid{SUFFIX[fmt]}" for fmt in SEEDS} <= indexed   # the valid seeds index
    assert skipped, "the fuzzer produced no broken file: the test would prove nothing"


def test_every_fuzzed_upload_is_answered_or_refused_with_a_message(fuzzed_index):
    root, files, _ = fuzzed_index
    searcher = Searcher(LookalikeIndex.open(root / "index"))
    search = user_errors(searcher.pixel)
    upload = Path(get_upload_folder()) / secrets.token_hex(32)   # where Gradio keeps an upload
    upload.mkdir(parents=True)
    answered = refused = 0
    try:
        for name, data in sorted(files.items()):
            (upload / name).write_bytes(data)
            try:
                search({"path": str(upload / name), "orig_name": name}, "l1", 3)
                answered += 1
            except gr.Error as exc:
                assert str(exc.message).startswith(f"the upload {name!r}: "), exc.message
                refused += 1
    finally:
        shutil.rmtree(upload, ignore_errors=True)
    assert answered >= len(SEEDS) and refused > 0
