"""The Duplicates tab (issue 21, item 7): its handler on a folder with planted near-duplicates gives
the groups, captioned by kind and similarity, and JSON and CSV exports that parse back; a library
without duplicates says so; the page moves nothing and shows no commands."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import gradio as gr
import pytest

import webui.duplicates as tab
from retrieval.errors import LookalikeError
from retrieval.indexing import build_index
from retrieval.search import LookalikeIndex
from test_quarantine import ORIGINAL, PLANTED, SECOND, photo, planted_library, snapshot
from webui.duplicates import DuplicateFinder, duplicates_tab


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, LookalikeIndex]:
    root = tmp_path_factory.mktemp("dup-tab")
    lib = planted_library(root / "Pictures")
    build_index(lib, root / "index", model="none", evaluate=False)
    return lib, LookalikeIndex.open(root / "index")


def test_the_handler_shows_each_group_with_kinds_and_moves_nothing(planted) -> None:
    lib, index = planted
    before = snapshot(lib)
    finder = DuplicateFinder(index)
    assert finder.default_threshold == 0.90 and finder.features == "phash"
    page = finder.page(None)
    assert page.summary.startswith("**2 groups, 8 images**; features: perceptual hash of the pixels, threshold 0.90.")
    assert [g.title.split(" · ")[0] for g in page.groups] == ["**Group 1**", "**Group 2**"]
    assert page.groups[0].title.endswith(f"kept: {ORIGINAL}") and page.groups[1].title.endswith(f"kept: {SECOND}")
    captions = {Path(path).relative_to(lib).as_posix(): text for g in page.groups for path, text in g.items}
    assert captions[ORIGINAL] == "kept · 240×160"
    for rel, kind in PLANTED.items():
        assert re.fullmatch(rf"{kind} · (0\.\d\d|1\.00)", captions[rel]), captions[rel]
    assert all(Path(path).is_file() and Path(path).is_relative_to(lib) for g in page.groups for path, _ in g.items)
    outputs = finder.outputs(0.9)                   # what the tab sends: summary, then (title, gallery) slots
    assert len(outputs) == 1 + 2 * tab.MAX_GROUPS and outputs[0] == page.summary
    assert outputs[2].visible is True and outputs[5].visible is False
    assert snapshot(lib) == before


def test_the_export_writes_json_and_csv_that_parse_back(planted) -> None:
    lib, index = planted
    finder = DuplicateFinder(index)                 # its export folder lives as long as it does (the app's)
    files, note = finder.export(0.9)
    json_file, csv_file = (Path(f) for f in files)
    assert (json_file.suffix, csv_file.suffix) == (".json", ".csv") and not json_file.is_relative_to(lib)
    assert note.startswith("2 groups (8 images) exported")
    data = json.loads(json_file.read_text("utf-8"))
    assert data["features"] == "phash" and data["threshold"] == 0.9 and data["images"] == 12
    assert [g["kept"] for g in data["groups"]] == [ORIGINAL, SECOND]
    members = {m["file"]: m for g in data["groups"] for m in g["members"]}
    assert {f: m["kind"] for f, m in members.items() if m["action"] == "move"} == PLANTED
    rows = list(csv.DictReader(csv_file.open(encoding="utf-8")))
    assert list(rows[0]) == ["group", "file", "action", "kind", "similarity", "width", "height", "sha256"]
    assert len(rows) == 8 and {r["file"]: r["kind"] for r in rows if r["action"] == "move"} == PLANTED
    assert {(r["file"], r["group"], r["width"], r["height"]) for r in rows if r["action"] == "keep"} == \
        {(ORIGINAL, "1", "240", "160"), (SECOND, "2", "240", "160")}
    assert all(0 < float(r["similarity"]) <= 1 for r in rows)


def test_more_groups_than_shown_are_counted_and_bad_thresholds_refused(planted, monkeypatch) -> None:
    _, index = planted
    monkeypatch.setattr(tab, "MAX_GROUPS", 1)
    page = DuplicateFinder(index).page(0.9)
    assert len(page.groups) == 1 and "The first 1 are shown; the export holds all 2." in page.summary
    for bad in ("abc", float("nan"), 0, 1.5):
        with pytest.raises(LookalikeError, match="threshold"):
            DuplicateFinder(index).page(bad)


def test_a_library_without_duplicates_says_so(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for n in range(4):
        (lib / f"p{n}.jpg").write_bytes(photo(30 + n))
    build_index(lib, tmp_path / "index", model="none", evaluate=False)
    page = DuplicateFinder(LookalikeIndex.open(tmp_path / "index")).page(None)
    assert page.groups == [] and page.summary.startswith("**No near-duplicates** among the 4 images")


def test_the_tab_has_its_endpoint_and_names_no_command(planted) -> None:
    _, index = planted
    with gr.Blocks() as demo:
        with gr.Tab("Duplicates"):
            duplicates_tab(index)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"duplicates", "duplicates_export"} <= names
    texts = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.value]
    texts += [b.info for b in demo.blocks.values() if isinstance(b, gr.Slider)]
    assert any("command line" in t for t in texts)             # the owner can quarantine, said in words ...
    assert not any(re.search(r"--[a-z]|python |build_index", t) for t in texts)   # ... without a command
