"""The offline sample library built from the Debian packages gcompris-qt-data and tuxpaint-stamps-default.

The full build runs once per session (tests/conftest.py); the rerun tests work on copies of it.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from collect import sample
from collect.sample import INSTALL_HINT, build_sample_library, parse_credits
from collect.sample import build as sample_build
from retrieval.attribution import licence_id, read_attribution, write_attribution
from retrieval.errors import LibraryError

HAVE_PACKAGES = sample.GCOMPRIS_ROOT.is_dir() and sample.TUXPAINT_ROOT.is_dir()
needs_packages = pytest.mark.skipif(not HAVE_PACKAGES, reason=f"needs: {INSTALL_HINT}")


def _images(out: Path) -> list[Path]:
    return sorted(p for split in ("train", "test") for p in (out / split).glob("*/*") if p.is_file())


def _hashes(out: Path) -> dict[str, str]:
    """sha256 of every file under `out`, by relative path (hidden files included)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(sample_data: Path) -> tuple[Path, dict]:
    """The session's sample library (tests/conftest.py builds it once) and its sample.json summary."""
    return sample_data, json.loads((sample_data / "sample.json").read_text(encoding="utf-8"))


@needs_packages
def test_library_size_classes_and_layout(built: tuple[Path, dict]) -> None:
    out, summary = built
    images = _images(out)
    assert len(images) >= 400 and summary["images"] == len(images)
    classes = {p.parent.name for p in images}
    assert len(classes) >= 12 and classes == set(summary["classes"])
    per_split = Counter((p.parent.parent.name, p.parent.name) for p in images)
    for cls in classes:
        assert per_split[("test", cls)] >= 1, f"class {cls} has no test image"
        assert per_split[("train", cls)] >= per_split[("test", cls)]
        counts = {"train": per_split[("train", cls)], "test": per_split[("test", cls)]}
        assert summary["classes"][cls] == counts
    assert sum(1 for p in images if p.name.startswith("gcompris-")) > 100
    assert sum(1 for p in images if p.name.startswith("tuxpaint-")) > 100
    for path in images:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB", path
            assert max(img.size) <= sample.MAX_SIDE and max(img.size) >= 64, path
    assert json.loads((out / "sample.json").read_text())["images"] == len(images)
    assert not (out / sample.PARTIAL_NAME).exists()


@needs_packages
def test_cutouts_are_flattened_onto_white(built: tuple[Path, dict]) -> None:
    out, _ = built
    crow = next(out.glob("*/bird/tuxpaint-animals-birds-crow.jpg"))
    with Image.open(crow) as img:
        corners = [img.getpixel(xy) for xy in ((0, 0), (img.width - 1, 0), (0, img.height - 1))]
        centre = img.getpixel((img.width // 2, img.height // 2))
    assert all(min(px) >= 245 for px in corners), corners  # transparent background -> white, not black
    assert max(centre) < 200  # the (black) crow itself survived


@needs_packages
def test_attribution_covers_every_file(built: tuple[Path, dict]) -> None:
    out, summary = built
    attribution = read_attribution(out)  # the reader the app and the Hub card use
    assert attribution.problem is None
    records = attribution.records
    files = {str(p.relative_to(out)) for p in _images(out)}
    assert [r["file"] for r in records] == sorted(files)
    assert attribution.images == len(files) == summary["images"]
    for r in records:
        split, cls, _ = r["file"].split("/")
        assert (r["split"], r["class"], r["images"]) == (split, cls, 1)
        assert r["source"] in (sample.GCOMPRIS_PACKAGE, sample.TUXPAINT_PACKAGE)
        assert r["licence"] and r["licence_stated"] and r["author"] and r["credits_from"], r
        if r["source"] == sample.GCOMPRIS_PACKAGE:
            bundle, internal = r["original"].split(":", 1)
            assert bundle.endswith(".rcc") and internal.startswith("gcompris/src/activities/")
            assert r["credits_from"].endswith("/README"), r  # every GCompris photo has a README credit
        else:
            assert Path(r["original"]).is_file() and r["licence"] == "GPL-2"
    assert {"Public-Domain", "CC0-1.0", "CC-BY-SA-4.0", "GPL-2"} <= set(attribution.licences)
    assert summary["licences"] == dict(sorted(attribution.licences.items()))
    assert summary["packages"] == dict(sorted(attribution.sources.items()))
    assert set(attribution.sources) == {sample.GCOMPRIS_PACKAGE, sample.TUXPAINT_PACKAGE}
    swans = next(r for r in records
                 if r["original"].endswith("erase.rcc:gcompris/src/activities/erase/resource/swans.webp"))
    assert swans["author"] == "Charles J. Sharp" and swans["licence"] == "CC-BY-SA-4.0"
    assert swans["page_url"].startswith("https://commons.wikimedia.org/") and swans["class"] == "bird"
    assert "ATTRIBUTION.json" in (out / "ATTRIBUTION.md").read_text(encoding="utf-8")
    on_disk = json.loads((out / "ATTRIBUTION.json").read_text(encoding="utf-8"))
    assert on_disk["schema"] == 1 and on_disk["records"] == records


@needs_packages
def test_rerun_is_idempotent_and_resumes(built: tuple[Path, dict], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    shutil.copytree(built[0], out)
    before = _hashes(out)
    again = build_sample_library(out, seed=0, workers=2)
    assert (again["encoded"], again["removed"]) == (0, 0)
    assert _hashes(out) == before

    # A picture that changed upstream (another package version) is made again; the rest is kept.
    records = read_attribution(out).records
    records[7]["original_sha256"] = "0" * 64
    write_attribution(out, records)
    refreshed = build_sample_library(out, seed=0, workers=2)
    assert (refreshed["encoded"], refreshed["reused"]) == (1, len(records) - 1)
    assert _hashes(out) == before

    # An interrupted run (Ctrl-C after a few images) is detectable: no sample.json, a partial marker.
    lost = _images(out)[::50]
    for path in lost:
        path.unlink()
    calls = itertools.count()
    real_encode = sample_build.encode_jpeg

    def interrupted(*args, **kwargs):
        if next(calls) >= 3:
            raise KeyboardInterrupt
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(sample_build, "encode_jpeg", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_sample_library(out, seed=0, workers=2)
    assert not (out / "sample.json").exists() and (out / sample.PARTIAL_NAME).exists()
    still_missing = [p for p in lost if not p.exists()]
    assert 0 < len(still_missing) < len(lost)
    monkeypatch.setattr(sample_build, "encode_jpeg", real_encode)
    (still_missing[0].parent / f".{still_missing[0].name}.abc.tmp").write_bytes(b"half")
    resumed = build_sample_library(out, seed=0, workers=2)
    assert resumed["encoded"] == len(still_missing)
    assert _hashes(out) == before


@needs_packages
def test_a_library_with_the_old_attribution_list_is_reused_and_upgraded(built: tuple[Path, dict],
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "data"
    shutil.copytree(built[0], out)
    before = _hashes(out)
    legacy = []  # ATTRIBUTION.json as the previous version wrote it: a bare list with the old keys
    for r in read_attribution(out).records:
        old = {k: v for k, v in r.items() if k not in ("source", "licence", "images", "author", "page_url",
                                                        "licence_stated")}
        legacy.append({**old, "package": r["source"], "copyright": r.get("author", ""),
                       "licence": r.get("licence_stated", ""), "licence_id": r["licence"],
                       **({"source": r["page_url"]} if "page_url" in r else {})})
    (out / "ATTRIBUTION.json").write_text(json.dumps(legacy), encoding="utf-8")
    old_view = read_attribution(out)
    assert old_view.problem is None and old_view.records == read_attribution(built[0]).records
    again = build_sample_library(out, seed=0, workers=2)
    assert (again["encoded"], again["removed"]) == (0, 0)  # the old digests still let images be reused
    assert _hashes(out) == before  # and the file is rewritten in the current schema


@needs_packages
def test_split_is_seeded_and_deterministic(built: tuple[Path, dict], tmp_path: Path) -> None:
    out = tmp_path / "data"
    shutil.copytree(built[0], out)
    before = _hashes(out)
    other = build_sample_library(out, seed=1, workers=2)
    assert other["encoded"] == 0 and other["moved"] > 0  # images change split, they are not re-made
    assert {c: sum(v.values()) for c, v in other["classes"].items()} == \
           {c: sum(v.values()) for c, v in built[1]["classes"].items()}
    test_seed1 = {p.name for p in (out / "test").glob("*/*")}
    test_seed0 = {Path(k).name for k in before if k.startswith("test/")}
    assert test_seed1 != test_seed0
    back = build_sample_library(out, seed=0, workers=2)
    assert back["encoded"] == 0 and _hashes(out) == before


def test_missing_packages_name_the_install_command(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LibraryError) as err:
        build_sample_library(tmp_path / "out", gcompris_root=empty, tuxpaint_root=empty)
    assert INSTALL_HINT in str(err.value)
    assert "gcompris-qt-data" in str(err.value) and "tuxpaint-stamps-default" in str(err.value)
    assert not (tmp_path / "out").exists()
    # Through the `sample` subcommand, as build_index.py registers it.
    parser = argparse.ArgumentParser()
    sample.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sample", "--out", str(tmp_path / "out"), "--gcompris-root", str(empty),
                              "--tuxpaint-root", str(empty)])
    with pytest.raises(LibraryError, match="sudo apt-get install gcompris-qt-data tuxpaint-stamps-default"):
        args.func(args)


@needs_packages
def test_refuses_a_folder_holding_another_library(tmp_path: Path) -> None:
    foreign = tmp_path / "data" / "train" / "cat" / "crawled_001.jpg"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    with pytest.raises(LibraryError, match="did not write"):
        build_sample_library(tmp_path / "data")
    assert foreign.read_bytes() == b"not ours"


def test_parse_credits_handles_the_real_readme_shapes() -> None:
    text = """Copyright: Timothee Giet, 2018
License: CC-BY-SA 4.0
Files:
  background.svg

Copyright:
  Copyright 2011 NASA
  Copyright 2018 Timothée Giet
License: Public Domain
Comment: original source at https://en.wikipedia.org/wiki/File:Mercury.jpg
Files:
  mercury.webp

Copyright: Dietmar Rabich / Wikimedia Commons
Source: https://commons.wikimedia.org/wiki/File:Alpakas.jpg
License: CC-BY-SA-4.0
Comments: cropping, sharpening
Files: alpaca.webp

Copyright: 2000, 2008 Bruno Coudoin and others
License: CC-BY 4.0
EilanDonanCastle_0.webp
EilanDonanCastle_background.webp
Comment: based on a photo by Guillaume Piolle
Copyright: Somebody Else
License: CC0-1.0
Files: wonders/petra.webp
"""
    credits = parse_credits(text)
    assert set(credits) == {"background.svg", "mercury.webp", "alpaca.webp", "EilanDonanCastle_0.webp",
                            "EilanDonanCastle_background.webp", "wonders/petra.webp"}
    assert credits["mercury.webp"]["copyright"] == "Copyright 2011 NASA; Copyright 2018 Timothée Giet"
    assert credits["mercury.webp"]["licence"] == "Public Domain"
    assert credits["alpaca.webp"] == {
        "copyright": "Dietmar Rabich / Wikimedia Commons", "licence": "CC-BY-SA-4.0",
        "source": "https://commons.wikimedia.org/wiki/File:Alpakas.jpg", "comment": "cropping, sharpening"}
    assert credits["EilanDonanCastle_background.webp"]["licence"] == "CC-BY 4.0"
    assert credits["EilanDonanCastle_background.webp"]["comment"] == "based on a photo by Guillaume Piolle"
    assert credits["wonders/petra.webp"] == {"copyright": "Somebody Else", "licence": "CC0-1.0"}
    assert [licence_id(s) for s in ("CC-BY-SA 4.0", "Public domain", "GPLv2+", "CC0-1.0")] == \
           ["CC-BY-SA-4.0", "Public-Domain", "GPL-2+", "CC0-1.0"]
