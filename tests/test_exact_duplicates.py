"""Exact copies are grouped by content hash before any similarity threshold (issue 19, item 6).

Fails before round 3: 5,000 copies of one photo make 12.5 million pairs above any threshold, and
`duplicates` refused with "far too low" (the refusal blamed the threshold, not the copies); the
cleaner's `--near-duplicates` did the same for copies whose bytes differ but pixels do not.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

import build_index
import retrieval.duplicates as dup
from retrieval.cli import main as cli_main


def _jpeg(seed: int, size: int = 48) -> bytes:
    """A small photo-like image: smooth random blobs, distinct per seed (different pHash)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_5000_identical_photos_are_one_group_of_exact_copies(tmp_path: Path, capsys) -> None:
    lib = tmp_path / "lib"
    (lib / "same").mkdir(parents=True)
    (lib / "other").mkdir()
    photo = _jpeg(0)
    for n in range(5000):
        (lib / "same" / f"copy{n:04d}.jpg").write_bytes(photo)
    for n in range(3):
        (lib / "other" / f"distinct{n}.jpg").write_bytes(_jpeg(n + 1))
    index = tmp_path / "index"
    assert build_index.main(["index", "--data", str(lib), "--index", str(index), "--model", "none", "--no-eval"]) == 0
    capsys.readouterr()

    assert cli_main(["duplicates", "--index", str(index), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["groups"]) == 1
    group = report["groups"][0]
    assert len(group["files"]) == 5000 and group["exact_copies"] is True
    assert [len(s) for s in group["same_bytes"]] == [5000]
    assert all(Path(f).parent.name == "same" for f in group["files"])
    assert group["min_similarity"] == group["max_similarity"] == 1.0

    assert cli_main(["duplicates", "--index", str(index)]) == 0   # the text report, no refusal either
    assert "group 1: 5,000 images" in capsys.readouterr().out


def test_copies_with_different_bytes_but_the_same_pixels_collapse_before_the_pair_search(monkeypatch) -> None:
    """Identical feature rows are one representative: the pair limit sees 2 rows, not 40."""
    monkeypatch.setattr(dup, "MAX_PAIRS", 5)
    same = np.tile(np.array([[0.6, 0.8]], np.float32), (40, 1))
    other = np.array([[1.0, 0.0]], np.float32)
    groups = dup.group_vectors(np.vstack([same, other]), 0.99, keys=[f"sha{n}" for n in range(41)])
    assert [len(g.rows) for g in groups] == [40] and groups[0].exact == () and not groups[0].all_exact
    keyed = dup.group_vectors(np.vstack([same, other]), 0.99, keys=["a"] * 20 + ["b"] * 20 + ["c"])
    assert [g.exact for g in keyed] == [(tuple(range(20)), tuple(range(20, 40)))]


def test_clean_near_duplicates_handles_many_pixel_identical_copies(tmp_path: Path, monkeypatch) -> None:
    """40 PNGs with the same pixels and different text chunks (so different bytes, not removed as
    exact duplicates by the cleaner): one kept, 39 quarantined, no "far too low" refusal."""
    monkeypatch.setattr(dup, "MAX_PAIRS", 100)    # 780 pairs would be over it without the collapse
    folder = tmp_path / "raw" / "animal" / "cat"
    folder.mkdir(parents=True)
    img = Image.open(io.BytesIO(_jpeg(7, 64))).convert("RGB")
    for n in range(40):
        meta = PngImagePlugin.PngInfo()
        meta.add_text("Comment", f"copy {n}")
        img.save(folder / f"c{n:02d}.png", "PNG", pnginfo=meta)
    paths = ["--raw", str(tmp_path / "raw"), "--clean", str(tmp_path / "clean"), "--quarantine", str(tmp_path / "q")]
    assert build_index.main(["clean", *paths, "--min-side", "10", "--near-duplicates"]) == 0
    assert len(list((tmp_path / "clean" / "cat").iterdir())) == 1
    assert len(list((tmp_path / "q" / "near_duplicate" / "cat").iterdir())) == 39
