"""Near-duplicates: grouping maths, pHash with zoomed variants, the `duplicates` command on stored
embeddings and on pixels, and `clean --near-duplicates` quarantining all but one per group."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest


import build_index
from bench.duplicates import variants
from retrieval.cli import main as cli_main
from retrieval.duplicates import (DEFAULT_THRESHOLDS, components, group_vectors, pair_scores, phash_of_images)
from retrieval.errors import LookalikeError
from retrieval.images import load_image
from retrieval.library import scan_split


def _photos(sample_data: Path, n: int, seed: int = 0) -> list[Path]:
    """n real photos of different classes from the sample library."""
    by_class: dict[str, Path] = {}
    for it in random.Random(seed).sample(scan_split(sample_data, "train"), 200):
        by_class.setdefault(it.label, it.path(sample_data))
    assert len(by_class) >= n
    return sorted(by_class.values())[:n]


def _with_copies(src: Path, folder: Path, stem: str) -> list[Path]:
    """The photo and its four near-duplicate copies (half size, JPEG q30, 10% crop, +20% brightness)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / f"{stem}{src.suffix}"]
    shutil.copyfile(src, out[0])
    for name, data in variants(load_image(src)).items():
        (folder / f"{stem}-{name}").write_bytes(data)
        out.append(folder / f"{stem}-{name}")
    return out


def test_groups_are_connected_components_above_the_threshold() -> None:
    base = np.eye(6, dtype=np.float32)
    vecs = np.stack([base[0], base[0] + 0.1 * base[1], base[0] + 0.2 * base[1] + 0.1 * base[2],
                     base[3], base[3] + 0.05 * base[4], base[5]])
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    groups = group_vectors(unit, 0.97)
    assert [g.rows for g in groups] == [(0, 1, 2), (3, 4)]
    assert 0.97 <= groups[1].min_similarity <= groups[1].max_similarity <= 1.0
    assert [g.rows for g in group_vectors(unit, 0.999)] == []
    assert components(4, np.array([0, 2]), np.array([3, 1])) == [[0, 3], [1, 2]]
    assert pair_scores([[0, 1, 2]], [[0, 1], [2, 3]]) == (1 / 3, 1 / 2)
    with pytest.raises(LookalikeError, match="far too low"):
        import retrieval.duplicates as d
        old, d.MAX_PAIRS = d.MAX_PAIRS, 3
        try:
            # distinct but similar vectors (identical ones are collapsed first, see the exact-copy test)
            close = np.ones((5, 2), np.float32) + np.arange(5, dtype=np.float32)[:, None] * [0.01, 0.0]
            group_vectors(close / np.linalg.norm(close, axis=1, keepdims=True), 0.5)
        finally:
            d.MAX_PAIRS = old


def test_phash_groups_a_photo_with_its_copies_and_not_other_photos(sample_data: Path, tmp_path: Path) -> None:
    a, b, c = _photos(sample_data, 3)
    files = _with_copies(a, tmp_path, "a") + _with_copies(b, tmp_path, "b") + [c]
    feats = phash_of_images([load_image(f) for f in files])
    groups = group_vectors(feats, DEFAULT_THRESHOLDS["phash"], as_hash=True)
    assert [g.rows for g in groups] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    plain = group_vectors(feats[:1], DEFAULT_THRESHOLDS["phash"], as_hash=True)   # without the zoomed hashes
    assert sum(len(g.rows) for g in plain) < 10          # ... the cropped copies are what it misses


@pytest.mark.parametrize("model, kind", [("none", "perceptual hash"), ("effnet", "effnet embeddings")])
def test_duplicates_command_on_an_index(sample_data: Path, tmp_path: Path, capsys, model: str, kind: str) -> None:
    photos = _photos(sample_data, 6, seed=1)
    lib = tmp_path / "lib"
    dup = _with_copies(photos[0], lib / "x", "first")
    for i, p in enumerate(photos[1:]):
        shutil.copyfile(p, lib / f"other{i}{p.suffix}")
    index = tmp_path / "index"
    assert build_index.main(["index", "--data", str(lib), "--index", str(index), "--model", model]) == 0
    capsys.readouterr()
    assert cli_main(["duplicates", "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert f"# 1 group of near-duplicates among 10 images ({kind}" in out
    assert "group 1: 5 images, similarity" in out
    listed = [ln.strip() for ln in out.splitlines() if ln.startswith("  ")]
    assert sorted(Path(p).name for p in listed) == sorted(p.name for p in dup)
    assert cli_main(["duplicates", "--index", str(index), "--json", "--threshold", "0.999"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold"] == 0.999 and all(len(g["files"]) >= 2 for g in report["groups"])
    assert cli_main(["duplicates", "--index", str(index), "--threshold", "1.5"]) == 2
    assert "from 0 (exclusive) to 1" in capsys.readouterr().err


def test_clean_near_duplicates_quarantines_all_but_one(sample_data: Path, tmp_path: Path, capsys) -> None:
    a, b = _photos(sample_data, 2, seed=2)
    raw = tmp_path / "raw"
    _with_copies(a, raw / "animal" / "cat", "a")
    shutil.copyfile(b, raw / "animal" / "cat" / f"b{b.suffix}")
    paths = ["--raw", str(raw), "--clean", str(tmp_path / "clean"), "--quarantine", str(tmp_path / "q")]
    assert build_index.main(["clean", *paths, "--min-side", "10"]) == 0
    assert len(list((tmp_path / "clean" / "cat").iterdir())) == 6          # without the flag: all kept
    assert build_index.main(["clean", *paths, "--min-side", "10", "--near-duplicates"]) == 0
    kept = sorted(p.name for p in (tmp_path / "clean" / "cat").iterdir())
    assert len(kept) == 2 and f"b{b.suffix}" in kept and sum(n.startswith("a") for n in kept) == 1
    log = [json.loads(ln) for ln in (tmp_path / "q" / "reasons.jsonl").read_text().splitlines()]
    near = [r for r in log if r["reason"] == "near_duplicate"]
    assert len(near) == 4 and all(len(r["group"]) == 5 and r["kept"] in r["group"] for r in near)
    assert {r["kept"] for r in near} == {f"cat/{n}" for n in kept if n.startswith("a")}
    assert len(list((tmp_path / "q" / "near_duplicate" / "cat").iterdir())) == 4
    assert "near_duplicate 4" in capsys.readouterr().out
