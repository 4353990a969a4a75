"""Any folder is a library: flat, nested, class folders or train/test; labels optional; renames and
moves reuse vectors by content hash; symlinks never lead outside; odd names and partial libraries
do not sink a build."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import build_index
from retrieval.cli import main as cli_main
from retrieval.indexing import build_index as build
from retrieval.library import (CLASS_LAYOUT, FLAT_LAYOUT, NESTED_LAYOUT, SPLIT_LAYOUT, inside_root,
                               printable, scan_library)
from retrieval.manifest import Manifest
from retrieval.search import LookalikeIndex

from conftest import make_tiny_library


def _photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A distinct small JPEG (colour blocks from the seed), so content hashes differ."""
    rng = np.random.default_rng(seed)
    arr = np.kron(rng.integers(0, 255, size=(4, 4, 3)), np.ones((size[1] // 4, size[0] // 4, 1))).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=92)
    return path


def _build(data: Path, index: Path, *extra: str) -> int:
    return build_index.main(["index", "--data", str(data), "--index", str(index), "--model", "none", *extra])


def _rels(index: Path) -> list[str]:
    return [it["path"] for it in Manifest.read(index).items]


def test_flat_then_nested_folder_build_search_and_skip_evaluation(tmp_path, capsys, caplog):
    flat = tmp_path / "flat"
    for i in range(5):
        _photo(flat / f"img{i}.jpg", i)
    (flat / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO):
        assert _build(flat, tmp_path / "i1") == 0
    out = capsys.readouterr().out
    assert "indexed 5 images" in out and "no evaluation for an unlabelled library" in out
    assert f"{FLAT_LAYOUT} layout" in caplog.text
    assert not (tmp_path / "i1" / "evaluation.json").exists()
    hits, _ = LookalikeIndex.open(tmp_path / "i1").search(flat / "img3.jpg", "pixel-l1", k=5, exclude_self=False)
    assert hits[0].rel == "img3.jpg" and hits[0].label == "" and len(hits) == 5

    nested = tmp_path / "nested"
    _photo(nested / "loose.jpg", 10)
    for i, rel in enumerate(["2023/summer/beach/a.jpg", "2023/summer/b.png", "2024/c.jpg", "2024/x/y/z/d.jpg"]):
        _photo(nested / rel, 20 + i)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _build(nested, tmp_path / "i2") == 0
    out = capsys.readouterr().out
    assert "indexed 5 images" in out and "no evaluation for an unlabelled library" in out
    assert f"{NESTED_LAYOUT} layout" in caplog.text
    assert _rels(tmp_path / "i2") == sorted(["loose.jpg", "2023/summer/beach/a.jpg", "2023/summer/b.png",
                                             "2024/c.jpg", "2024/x/y/z/d.jpg"])
    assert cli_main(["search", str(nested / "2024/x/y/z/d.jpg"), "--index", str(tmp_path / "i2"), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[0] for ln in lines[2:]] == ["1", "2"] and "2024/x/y/z/d.jpg" not in lines[2] + lines[3]
    assert cli_main(["evaluate", "--index", str(tmp_path / "i2")]) == 0
    assert "no evaluation for an unlabelled library" in capsys.readouterr().out


def test_class_folders_are_labels_and_without_a_test_split_k_fold_evaluates(tmp_path, capsys, caplog):
    lib = tmp_path / "myphotos"
    for i in range(3):
        _photo(lib / "bird" / f"b{i}.jpg", i)
        _photo(lib / "fish" / "deep" / f"f{i}.jpg", 10 + i)
    with caplog.at_level(logging.INFO):
        assert _build(lib, tmp_path / "i") == 0
    assert f"{CLASS_LAYOUT} layout" in caplog.text and "2 classes" in caplog.text
    assert set(Manifest.read(tmp_path / "i").labels) == {"bird", "fish"}
    out = capsys.readouterr().out
    assert "no test split" in out and "evaluated by k-fold" in out and "-fold (seed" in out
    report = json.loads((tmp_path / "i" / "evaluation.json").read_text())
    assert report["protocol"] == "kfold" and report["queries"] == 6 and report["classes"] == 2
    assert scan_library(lib, labels="none").labelled is False
    assert scan_library(lib / "fish", labels="folders").items[0].label == "deep"


def test_rename_move_delete_reembeds_nothing_and_the_deleted_never_returns(tmp_path):
    lib = tmp_path / "photos"
    for i in range(4):
        _photo(lib / "a" / f"p{i}.jpg", i)
    _photo(lib / "top.jpg", 9)
    index = tmp_path / "index"
    first = build(lib, index, model="effnet")
    assert first["images"] == 5 and first["embedded"] == 5 and "evaluation_skipped" in first

    (lib / "a" / "p0.jpg").rename(lib / "a" / "renamed.jpg")            # rename
    (lib / "b").mkdir()
    shutil.move(lib / "a" / "p1.jpg", lib / "b" / "p1.jpg")             # move to another folder
    deleted = lib / "a" / "p2.jpg"
    deleted_bytes = deleted.read_bytes()
    deleted.unlink()                                                     # delete
    again = build(lib, index, model="effnet")
    assert again["images"] == 4 and again["embedded"] == 0 and again["pixels_decoded"] == 0
    rels = _rels(index)
    assert rels == sorted(["a/renamed.jpg", "b/p1.jpg", "a/p3.jpg", "top.jpg"])
    opened = LookalikeIndex.open(index)
    assert set(opened.store.metadatas()) == set(rels)        # Chroma agrees: old ids gone, new ones there
    query = tmp_path / "q.jpg"
    query.write_bytes(deleted_bytes)
    for method in ("pixel-l1", "effnet-cosine", "effnet-hnsw-cosine"):
        hits, _ = opened.search(query, method, k=4)
        assert "a/p2.jpg" not in {h.rel for h in hits} and len(hits) == 4
    third = build(lib, index, model="effnet")
    assert third["embedded"] == 0 and "a/p2.jpg" not in _rels(index)


def test_hidden_folders_and_an_index_inside_the_library_are_skipped(tmp_path):
    lib = tmp_path / "lib"
    _photo(lib / "a.jpg", 1)
    _photo(lib / ".thumbnails" / "t.jpg", 2)
    _photo(lib / "sub" / ".hidden.jpg", 3)
    assert _build(lib, lib / "index") == 0
    (lib / "index" / "stray.jpg").write_bytes((lib / "a.jpg").read_bytes())   # never scanned as a photo
    assert _build(lib, lib / "index") == 0
    assert _rels(lib / "index") == ["a.jpg"]


def test_symlinks_never_lead_outside_the_library(tmp_path):
    outside = tmp_path / "secret"
    _photo(outside / "private.jpg", 1)
    _photo(outside / "folder" / "inner.jpg", 2)
    lib = tmp_path / "lib" / "train"
    _photo(lib / "cat" / "c.jpg", 3)
    _photo(lib / "dog" / "d.jpg", 4)
    os.symlink(outside / "private.jpg", lib / "cat" / "escape.jpg")          # file link leaving the root
    os.symlink(outside / "folder", lib / "linkedclass")                      # folder link
    os.symlink(lib / "dog" / "d.jpg", lib / "cat" / "alias.jpg")             # file link inside the root
    os.symlink(lib / "cat" / "gone.jpg", lib / "cat" / "broken.jpg")         # broken link (inside)
    summary = build(tmp_path / "lib", tmp_path / "index", model="none")
    rels = _rels(tmp_path / "index")
    assert rels == ["train/cat/alias.jpg", "train/cat/c.jpg", "train/dog/d.jpg"]
    reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
    assert "outside the library" in reasons["train/cat/escape.jpg"]
    assert "not followed" in reasons["train/linkedclass"]
    assert "broken" in reasons["train/cat/broken.jpg"]
    assert not inside_root(lib / "cat" / "escape.jpg", tmp_path / "lib")
    assert inside_root(lib / "cat" / "alias.jpg", tmp_path / "lib")
    assert not inside_root(tmp_path / "lib" / ".." / "secret" / "private.jpg", tmp_path / "lib")


@pytest.mark.parametrize("model", ["none", "effnet"])
def test_a_name_that_is_not_utf8_is_skipped_and_reported(tmp_path, model, capsys):
    lib = tmp_path / "lib"
    _photo(lib / "good.jpg", 1)
    _photo(lib / "also good é.jpg", 2)
    bad = os.fsdecode(b"bad-\xff\xfe.jpg")
    _photo(lib / bad, 3)
    assert build_index.main(["index", "--data", str(lib), "--index", str(tmp_path / "i"), "--model", model]) == 0
    out = capsys.readouterr().out
    assert "indexed 2 images" in out and "1 skipped" in out
    manifest = Manifest.read(tmp_path / "i")
    assert [s["path"] for s in manifest.skipped] == ["bad-\\xff\\xfe.jpg"] == [printable(bad)]
    assert "not valid UTF-8" in manifest.skipped[0]["reason"]
    json.dumps(manifest.to_json(), ensure_ascii=False).encode("utf-8")     # the manifest is valid UTF-8
    if model == "effnet":
        assert set(LookalikeIndex.open(tmp_path / "i").store.metadatas()) == {"good.jpg", "also good é.jpg"}


def test_partial_libraries_build_and_evaluate_with_exit_0(tmp_path, capsys):
    from webui.texts import BEST_MARK, evaluation_markdown

    data = make_tiny_library(tmp_path / "data", n_train=3, n_test=1)
    shutil.rmtree(data / "test")
    assert _build(data, tmp_path / "i1") == 0                       # no test/: k-fold instead
    out = capsys.readouterr().out
    assert "no test split" in out and "9 images against the other folds" in out
    assert cli_main(["evaluate", "--index", str(tmp_path / "i1")]) == 0
    out = capsys.readouterr().out
    assert "no test split" in out and "k-fold instead" in out and "| pixel-l1 |" in out
    text = evaluation_markdown(LookalikeIndex.open(tmp_path / "i1"))
    assert "every image is a query" in text and text.count(BEST_MARK) == 1   # its one table, best row marked
    (tmp_path / "i1" / "evaluation.json").unlink()
    assert cli_main(["evaluate", "--index", str(tmp_path / "i1"), "--save", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"] == "kfold"
    assert json.loads((tmp_path / "i1" / "evaluation.json").read_text())["queries"] == 9

    (data / "test" / "red").mkdir(parents=True)                     # a test/ whose only image is corrupt
    (data / "test" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert _build(data, tmp_path / "i2") == 0
    out = capsys.readouterr().out
    assert "none of the 1 test images" in out and "could be read" in out and "-fold (seed" in out
    assert cli_main(["evaluate", "--index", str(tmp_path / "i2")]) == 0
    out = capsys.readouterr().out
    assert "could be read" in out and "k-fold instead" in out

    one = tmp_path / "one"                                          # one class: nothing to tell apart
    for i in range(3):
        _photo(one / "train" / "cat" / f"c{i}.jpg", i)
    assert _build(one, tmp_path / "i3") == 0
    assert "evaluation skipped" in capsys.readouterr().out
    assert cli_main(["evaluate", "--index", str(tmp_path / "i3")]) == 0
    assert "at least 2 classes" in capsys.readouterr().out
    assert not (tmp_path / "i3" / "evaluation.json").exists()


def test_missing_and_empty_library_errors_describe_the_layouts(tmp_path, monkeypatch, capsys):
    assert _build(tmp_path / "mine", tmp_path / "i") == 2
    err = capsys.readouterr().err
    assert "no library at" in err and "nested folders of any depth" in err and "train/<class>" in err
    assert "build_index.py sample" not in err                  # they asked for their own folder
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "readme.txt").write_text("x")
    assert _build(tmp_path / "mine", tmp_path / "i") == 2
    err = capsys.readouterr().err
    assert "is empty" in err and "any folder of images" in err and "build_index.py sample" not in err
    monkeypatch.chdir(tmp_path)                               # the default library folder: data/
    assert build_index.main(["index", "--model", "none"]) == 2
    assert "build_index.py sample --out data" in capsys.readouterr().err


def test_train_test_layout_still_evaluates(tmp_path):
    data = make_tiny_library(tmp_path / "data", n_train=3, n_test=1)
    library = scan_library(data)
    assert library.layout == SPLIT_LAYOUT and len(library.items) == 9 and len(library.queries) == 3
    summary = build(data, tmp_path / "i", model="none")
    assert summary["evaluation"]["queries"] == 3 and (tmp_path / "i" / "evaluation.json").is_file()


def test_app_starts_on_an_unlabelled_index_and_searches_it(tmp_path):
    from gradio_client import handle_file
    from app_support import launch

    lib = tmp_path / "photos"
    for i in range(6):
        _photo(lib / ("deep/er" if i % 2 else "") / f"p{i}.jpg", i)
    build(lib, tmp_path / "index", model="none")
    demo, app = launch(tmp_path / "index")
    try:
        gallery, status, rows = app.client.predict(handle_file(str(lib / "deep/er/p1.jpg")), "l1", 3,
                                                   api_name="/search_pixel")
        assert len(rows) == 3 and "3 results" in status
        assert {r["file"] for r in rows} <= {it["path"] for it in app.index.manifest.items}
        assert "deep/er/p1.jpg" not in {r["file"] for r in rows}     # the query itself is left out
        import requests
        config = requests.get(app.url + "config", timeout=10).text
        assert "No evaluation for an unlabelled library" in config and "Library images" in config
    finally:
        demo.close()
