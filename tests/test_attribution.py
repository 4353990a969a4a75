"""retrieval.attribution: the one ATTRIBUTION.json schema, its legacy forms, and a reader that never raises."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from retrieval.attribution import (SCHEMA, Attribution, licence_id, make_record, read_attribution,
                                   write_attribution)
from retrieval.paths import ATTRIBUTION, ATTRIBUTION_MD


def _write(folder: Path, obj) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = obj if isinstance(obj, str) else json.dumps(obj)
    (folder / ATTRIBUTION).write_text(text, encoding="utf-8")
    return folder


def test_per_image_records_round_trip(tmp_path: Path) -> None:
    records = [
        make_record(source="gcompris-qt-data", licence="CC-BY-SA 4.0", author="Charles J. Sharp",
                    **{"file": "train/bird/gcompris-swans.jpg", "class": "bird", "split": "train"},
                    page_url="https://commons.wikimedia.org/wiki/File:Swans.jpg", original_sha256="ab" * 32),
        make_record(source="tuxpaint-stamps-default", licence="GPL-2", credit=None,
                    **{"file": "test/bird/tuxpaint-crow.jpg", "class": "bird", "split": "test"}),
        make_record(source="flickr.com", licence="CC-BY-2.0", url="https://live.staticflickr.com/x.jpg",
                    term="barn owl", **{"file": "train/owl/owl_001.jpg", "class": "owl"}),
    ]
    assert records[0]["licence"] == "CC-BY-SA-4.0"  # normalised, so one licence counts once
    assert "credit" not in records[1] and records[1]["images"] == 1  # None fields are dropped
    assert list(records[0])[:6] == ["file", "class", "split", "source", "licence", "images"]
    write_attribution(tmp_path, records, markdown="# Credits\n")
    on_disk = json.loads((tmp_path / ATTRIBUTION).read_text(encoding="utf-8"))
    assert on_disk == {"schema": SCHEMA, "records": records}
    assert (tmp_path / ATTRIBUTION_MD).read_text(encoding="utf-8") == "# Credits\n"
    back = read_attribution(tmp_path)
    assert back.problem is None and back.records == records and back.images == 3
    assert back.licences == Counter({"CC-BY-SA-4.0": 1, "GPL-2": 1, "CC-BY-2.0": 1})
    assert back.sources == Counter({"gcompris-qt-data": 1, "tuxpaint-stamps-default": 1, "flickr.com": 1})
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files behind


def test_whole_set_record_round_trips_and_counts_every_image(tmp_path: Path) -> None:
    record = make_record(source="Fashion-MNIST", licence="MIT", images=70_000,
                         url="https://github.com/zalandoresearch/fashion-mnist")
    write_attribution(tmp_path, [record])
    assert not (tmp_path / ATTRIBUTION_MD).exists()  # no markdown asked for, none written
    assert (tmp_path / ATTRIBUTION).stat().st_size < 1000  # one record, not 70,000
    back = read_attribution(tmp_path)
    assert back == Attribution(records=[record], licences=Counter({"MIT": 70_000}),
                               sources=Counter({"Fashion-MNIST": 70_000}))
    assert back.images == 70_000


def test_make_record_refuses_what_the_reader_would_skip(tmp_path: Path) -> None:
    for bad in ({"source": "", "licence": "MIT"}, {"source": "x", "licence": "  "},
                {"source": "x", "licence": "MIT", "images": 0}, {"source": "x", "licence": "MIT", "images": True},
                {"source": "x", "licence": "MIT", "images": 2.5}, {"source": "x", "licence": "MIT", "author": 3},
                {"source": "x", "licence": "MIT", "file": "../outside.jpg"},
                {"source": "x", "licence": "MIT", "file": "/etc/passwd"},
                {"source": "x", "licence": "MIT", "tags": ["a", "b"]}):
        with pytest.raises(ValueError):
            make_record(**bad)
    with pytest.raises(ValueError, match="record 1"):
        write_attribution(tmp_path, [make_record(source="x", licence="MIT"), {"source": "y"}])
    assert not (tmp_path / ATTRIBUTION).exists()  # nothing half-valid was written
    assert [licence_id(s) for s in ("CC-BY-SA 4.0", "Public domain", "GPLv2+", "pd", "")] == \
           ["CC-BY-SA-4.0", "Public-Domain", "GPL-2+", "Public-Domain", "unknown"]


def test_missing_file_is_empty_without_a_problem(tmp_path: Path) -> None:
    for folder in (tmp_path, tmp_path / "does-not-exist"):
        att = read_attribution(folder)
        assert att.records == [] and att.images == 0 and att.problem is None
        assert att.licences == Counter() and att.sources == Counter()


def test_legacy_sample_list_is_mapped(tmp_path: Path) -> None:
    legacy = [  # what collect/sample.py wrote before the schema
        {"file": "train/bird/gcompris-erase-swans.jpg", "class": "bird", "split": "train",
         "package": "gcompris-qt-data", "original": "/usr/share/gcompris-qt/rcc/erase.rcc:x/swans.webp",
         "copyright": "Charles J. Sharp", "licence": "CC-BY-SA 4.0", "licence_id": "CC-BY-SA-4.0",
         "source": "https://commons.wikimedia.org/wiki/File:Swans.jpg", "credits_from": "erase.rcc:README",
         "original_sha256": "cd" * 32},
        {"file": "test/bird/tuxpaint-animals-birds-crow.jpg", "class": "bird", "split": "test",
         "package": "tuxpaint-stamps-default", "original": "/usr/share/tuxpaint/stamps/crow.png",
         "copyright": "", "licence": "GPL-2", "licence_id": "GPL-2", "title": "Crow", "credits_from": "",
         "original_sha256": "ef" * 32},
        {"file": "train/cat/x.jpg", "licence_id": "CC0", "package": "gcompris-qt-data"},  # minimal
    ]
    att = read_attribution(_write(tmp_path, legacy))
    assert att.problem is None and att.images == 3
    swans, crow, minimal = att.records
    assert swans["source"] == "gcompris-qt-data" and swans["licence"] == "CC-BY-SA-4.0"
    assert swans["author"] == "Charles J. Sharp" and swans["licence_stated"] == "CC-BY-SA 4.0"
    assert swans["page_url"] == "https://commons.wikimedia.org/wiki/File:Swans.jpg"
    assert swans["original_sha256"] == "cd" * 32 and swans["images"] == 1
    assert "package" not in swans and "licence_id" not in swans and "copyright" not in swans
    assert crow["source"] == "tuxpaint-stamps-default" and "author" not in crow and crow["title"] == "Crow"
    assert minimal == {"file": "train/cat/x.jpg", "source": "gcompris-qt-data", "licence": "CC0", "images": 1}
    assert att.licences == Counter({"CC-BY-SA-4.0": 1, "GPL-2": 1, "CC0": 1})
    assert att.sources == Counter({"gcompris-qt-data": 2, "tuxpaint-stamps-default": 1})


def test_legacy_fashion_mnist_dict_is_mapped(tmp_path: Path) -> None:
    old = {"source": "Fashion-MNIST, Zalando Research (Xiao, Rasul and Vollgraf, 2017), MIT licence; "
                     "https://github.com/zalandoresearch/fashion-mnist", "license": "MIT",
           "classes": ["t-shirt-top", "trouser"]}
    for split, cls, n in (("train", "trouser", 4), ("train", "t-shirt-top", 2), ("test", "trouser", 1)):
        (tmp_path / split / cls).mkdir(parents=True)
        for i in range(n):
            (tmp_path / split / cls / f"{split}-{i:05d}.png").write_bytes(b"png")
    (tmp_path / "train" / "trouser" / ".hidden.tmp").write_bytes(b"x")  # not an image
    att = read_attribution(_write(tmp_path, old))
    assert att.problem is None and att.images == 7  # the images the library holds
    assert att.licences == Counter({"MIT": 7}) and att.sources == Counter({"Fashion-MNIST": 7})
    assert att.records[0]["credit"] == old["source"]
    # The same file alone (e.g. beside the Parquet shards of a Hub repo) covers the whole data set.
    assert read_attribution(_write(tmp_path / "alone", old)).images == 70_000


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("42", "number"),
    ('"records"', "string"),
    ("null", "null"),
    ('{"schema": 1, "records": {"a": 1}}', "not a list"),
    ('{"schema": 1}', "without records"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # nested past the parser's recursion limit
])
def test_unreadable_or_misshapen_files_give_a_problem_not_an_exception(tmp_path: Path, content: str,
                                                                        words: str) -> None:
    att = read_attribution(_write(tmp_path, content))
    assert att.records == [] and att.images == 0 and att.licences == Counter()
    assert att.problem and ATTRIBUTION in att.problem and words in att.problem, att.problem


def test_bad_records_are_skipped_and_named(tmp_path: Path) -> None:
    good = make_record(source="Fashion-MNIST", licence="MIT", images=10)
    data = {"schema": 1, "records": [
        good,
        "a string",
        {"source": "x", "images": 1},                       # missing licence
        {"source": "x", "licence": "MIT", "images": "5"},   # images of the wrong type
        {"source": ["x"], "licence": "MIT"},                # source of the wrong type
        {"source": "x", "licence": "MIT", "file": "../../etc/passwd"},
        {"source": "y", "licence": "CC0-1.0"},              # no images: covers one
    ]}
    att = read_attribution(_write(tmp_path, data))
    assert [r["source"] for r in att.records] == ["Fashion-MNIST", "y"]
    assert att.images == 11 and att.licences == Counter({"MIT": 10, "CC0-1.0": 1})
    assert "5 of 7 records were skipped" in att.problem
    assert "record 1" in att.problem and "no licence" in att.problem and "2 more" in att.problem


def test_other_schema_and_unreadable_file(tmp_path: Path) -> None:
    rec = make_record(source="s", licence="MIT")
    newer = read_attribution(_write(tmp_path / "newer", {"schema": 2, "records": [rec]}))
    assert newer.records == [rec] and "newer version" in newer.problem
    odd = read_attribution(_write(tmp_path / "odd", {"schema": "one", "records": [rec]}))
    assert odd.records == [rec] and "unknown schema" in odd.problem
    (tmp_path / "dir" / ATTRIBUTION).mkdir(parents=True)  # a folder where the file should be
    assert "could not be read" in read_attribution(tmp_path / "dir").problem
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / ATTRIBUTION).write_bytes(b"\xff\xfe\x00bad")
    assert "could not be read" in read_attribution(tmp_path / "bin").problem


def test_core_module_imports_neither_gradio_nor_collect() -> None:
    import ast

    import retrieval.attribution as module
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert not imported & {"gradio", "collect"}
