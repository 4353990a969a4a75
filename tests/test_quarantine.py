"""Near-duplicates in a folder of one's own photos (issue 21, item 7): each copy's kind, the
quarantine that moves all but one image of each group out of the library, and its undo.

The library is nested folders, no classes, with one photo planted five times (byte-identical, half
size, JPEG quality 30, a 10% crop, +20% brightness: bench/duplicates.py's copies), a second photo
with a recompressed copy, and unrelated photos. A pixel-only index (pHash) finds the groups.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import build_index
from bench.duplicates import variants
from retrieval.cli import main as cli_main
from retrieval.duplicate_groups import analyse
from retrieval.duplicates import find_duplicates, keeper
from retrieval.errors import LookalikeError
from retrieval.images import load_image
from retrieval.indexing import build_index as index_library
from retrieval.quarantine import plan, safe_move
from retrieval.search import LookalikeIndex

ORIGINAL, SECOND = "2023/summer/a-original.jpg", "2024/g-second.jpg"
PLANTED = {"2023/summer/b-same.jpg": "same file", "backup/c-half.png": "resized",
           "backup/old/d-q30.jpg": "recompressed", "phone/e-crop.png": "cropped",
           "phone/f-bright.png": "brightened", "2024/h-second-q30.jpg": "recompressed"}


def photo(seed: int, size: tuple[int, int] = (240, 160)) -> bytes:
    """A photo-like JPEG: smooth colour fields and a few discs, distinct per seed (distinct pHash)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y, r = int(rng.integers(0, size[0] - 40)), int(rng.integers(0, size[1] - 40)), int(rng.integers(10, 40))
        draw.ellipse((x, y, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def planted_library(root: Path) -> Path:
    """The planted library (see the module docstring), 12 images in nested folders."""
    def put(rel: str, data: bytes) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    original = photo(1)
    put(ORIGINAL, original)
    put("2023/summer/b-same.jpg", original)
    copies = variants(load_image(original))
    put("backup/c-half.png", copies["half.png"])
    put("backup/old/d-q30.jpg", copies["q30.jpg"])
    put("phone/e-crop.png", copies["crop.png"])
    put("phone/f-bright.png", copies["bright.png"])
    second = photo(2)
    put(SECOND, second)
    put("2024/h-second-q30.jpg", variants(load_image(second))["q30.jpg"])
    for n in range(3):
        put(f"2024/other{n}.jpg", photo(10 + n))
    put("loose.jpg", photo(20))
    return root


def indexed(tmp_path: Path) -> tuple[Path, Path]:
    lib = planted_library(tmp_path / "Pictures")
    index_library(lib, tmp_path / "index", model="none", evaluate=False)
    return lib, tmp_path / "index"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256 of its bytes)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_planted_copies_are_grouped_with_their_kind_and_the_largest_is_kept(tmp_path: Path) -> None:
    lib, idx = indexed(tmp_path)
    index = LookalikeIndex.open(idx)
    analysis = analyse(index, find_duplicates(index))
    assert analysis.features == "phash" and analysis.total_groups == 2 and analysis.images == 12
    assert [g.kept.rel for g in analysis.groups] == [ORIGINAL, SECOND]
    kinds = {m.rel: m.kind for g in analysis.groups for m in g.others}
    assert kinds == PLANTED
    first = analysis.groups[0]
    assert (first.kept.width, first.kept.height) == (240, 160) and first.kept.kind == "kept"
    sizes = {m.rel: (m.width, m.height) for m in first.others}
    assert sizes["backup/c-half.png"] == (120, 80) and sizes["phone/e-crop.png"] == (216, 144)
    sims = {m.rel: m.similarity for m in first.others}
    assert sims["2023/summer/b-same.jpg"] == 1.0 and all(0.8 <= v <= 1.0 for v in sims.values())   # a copy may
    # be linked to the group through another copy: its own similarity to the kept image can be below the threshold
    assert keeper(["b.jpg", "a.jpg", "c.jpg"], [10, 10, 4]) == 1          # largest, then first by name


def test_quarantine_moves_all_but_the_kept_images_and_undo_restores_them(tmp_path: Path, capsys) -> None:
    lib, idx = indexed(tmp_path)
    before = snapshot(lib)
    q = tmp_path / "quarantine"
    assert cli_main(["duplicates", "--index", str(idx), "--quarantine", str(q)]) == 0
    out = capsys.readouterr().out
    after = snapshot(lib)
    assert set(before) - set(after) == set(PLANTED)                     # exactly the copies left ...
    assert all(after[rel] == before[rel] for rel in after)
    held = snapshot(q)
    records = [rel for rel in held if rel.startswith("quarantine-")]
    assert len(records) == 1
    assert {rel: sha for rel, sha in held.items() if rel not in records} == {r: before[r] for r in PLANTED}
    record = json.loads((q / records[0]).read_text())
    assert record["library"] == str(lib.resolve())
    assert {m["source"]: (m["target"], m["kind"], m["status"]) for m in record["moves"]} == \
        {r: (r, kind, "moved") for r, kind in PLANTED.items()}
    assert all(m["sha256"] == before[m["source"]] and m["group"] in (1, 2) for m in record["moves"])
    assert f"moved 6 files to {q}" in out and f"--undo {q / records[0]}" in out
    assert f"rebuild it with python build_index.py index --data {lib} --index {idx} --model none" in out

    assert cli_main(["duplicates", "--undo", str(q / records[0])]) == 0
    out = capsys.readouterr().out
    assert snapshot(lib) == before                                      # byte-identical, same places
    assert sorted(p.relative_to(q).as_posix() for p in q.rglob("*")) == records   # empty folders gone too
    assert "restored 6 files" in out and "still lists the restored files: nothing to rebuild" in out
    assert cli_main(["duplicates", "--undo", str(q / records[0])]) == 0   # again: nothing left to do
    assert "restored 0 files" in capsys.readouterr().out

    assert cli_main(["duplicates", "--index", str(idx), "--quarantine", str(q)]) == 0   # a second run works
    assert set(before) - set(snapshot(lib)) == set(PLANTED)
    assert len(list(q.glob("quarantine-*.json"))) == 2


def test_a_dry_run_moves_nothing_and_writes_no_record(tmp_path: Path, capsys) -> None:
    lib, idx = indexed(tmp_path)
    before = snapshot(lib)
    q = tmp_path / "quarantine"
    assert cli_main(["duplicates", "--index", str(idx), "--quarantine", str(q), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert snapshot(lib) == before and not q.exists()
    assert "would move 6 files" in out and "nothing moved" in out
    assert all(f"{rel} -> {q / rel} ({kind}" in out for rel, kind in PLANTED.items())
    assert cli_main(["duplicates", "--index", str(idx), "--dry-run"]) == 2      # dry run of what?
    assert "goes with --quarantine" in capsys.readouterr().err


def test_undo_refuses_a_path_taken_again_or_a_changed_copy_and_loses_nothing(tmp_path: Path, capsys) -> None:
    lib, idx = indexed(tmp_path)
    before = snapshot(lib)
    q = tmp_path / "quarantine"
    assert cli_main(["duplicates", "--index", str(idx), "--quarantine", str(q)]) == 0
    record = next(q.glob("quarantine-*.json"))
    intruder = photo(99)
    (lib / "backup/c-half.png").write_bytes(intruder)                   # a new file at a moved one's path
    (q / "phone/f-bright.png").write_bytes(b"changed in the quarantine")
    (lib / "2023/summer/b-same.jpg").write_bytes((q / "2023/summer/b-same.jpg").read_bytes())   # put back by hand
    capsys.readouterr()
    assert cli_main(["duplicates", "--undo", str(record)]) == 3
    out = capsys.readouterr().out
    assert "backup/c-half.png: its original path is taken by another file again" in out
    assert "phone/f-bright.png: the quarantined file changed" in out
    assert (lib / "backup/c-half.png").read_bytes() == intruder          # neither file was touched
    assert (q / "backup/c-half.png").is_file() and not (lib / "phone/f-bright.png").exists()
    restored = snapshot(lib)
    assert all(restored[r] == before[r] for r in PLANTED if r not in ("backup/c-half.png", "phone/f-bright.png"))
    statuses = {m["source"]: m["status"] for m in json.loads(record.read_text())["moves"]}
    assert statuses["backup/c-half.png"] == "moved" and statuses["2024/h-second-q30.jpg"] == "restored"
    assert statuses["2023/summer/b-same.jpg"] == "restored" and not (q / "2023/summer/b-same.jpg").exists()

    (lib / "backup/c-half.png").unlink()                                 # the owner makes room: undo again
    assert cli_main(["duplicates", "--undo", str(record)]) == 3          # the changed copy still stays
    assert snapshot(lib)["backup/c-half.png"] == before["backup/c-half.png"]
    assert "restored 1 file; 1 file left in" in capsys.readouterr().out


def test_a_group_whose_kept_image_changed_is_left_alone(tmp_path: Path) -> None:
    lib, idx = indexed(tmp_path)
    index = LookalikeIndex.open(idx)
    analysis = analyse(index, find_duplicates(index))
    (lib / ORIGINAL).unlink()                          # the kept image is gone: its copies must stay
    (lib / "2024/h-second-q30.jpg").write_bytes(photo(50))   # changed since the index was built
    record = plan(analysis, lib, tmp_path / "q", idx)
    refused = {m.source: m.note for m in record.moves if m.status == "refused"}
    assert set(refused) == set(PLANTED)
    assert "kept image 2023/summer/a-original.jpg is missing or changed" in refused["phone/e-crop.png"]
    assert "changed" in refused["2024/h-second-q30.jpg"]


def test_the_quarantine_folder_may_not_be_indexed_again(tmp_path: Path, capsys) -> None:
    lib, idx = indexed(tmp_path)
    before = snapshot(lib)
    assert cli_main(["duplicates", "--index", str(idx), "--quarantine", str(lib / "dupes")]) == 2
    assert "inside the library" in capsys.readouterr().err and snapshot(lib) == before
    hidden = lib / ".dupes"                              # a hidden folder is never indexed: allowed
    assert cli_main(["duplicates", "--index", str(idx), "--quarantine", str(hidden)]) == 0
    assert set(snapshot(hidden)) >= set(PLANTED)


def test_a_move_never_overwrites_and_copies_across_file_systems(tmp_path: Path, monkeypatch) -> None:
    src, dst = tmp_path / "a.jpg", tmp_path / "q" / "a.jpg"
    src.write_bytes(b"photo")
    dst.parent.mkdir()
    dst.write_bytes(b"other")
    sha = hashlib.sha256(b"photo").hexdigest()
    with pytest.raises(LookalikeError, match="in the way"):
        safe_move(src, dst, sha)
    assert src.read_bytes() == b"photo" and dst.read_bytes() == b"other"
    dst.unlink()

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    safe_move(src, dst, sha)                           # the exclusive copy, checked, then the unlink
    assert dst.read_bytes() == b"photo" and not src.exists()


def test_clean_near_duplicates_points_a_photo_folder_to_the_quarantine(tmp_path: Path, capsys) -> None:
    lib = planted_library(tmp_path / "Pictures")
    paths = ["--clean", str(tmp_path / "clean"), "--quarantine", str(tmp_path / "q")]
    assert build_index.main(["clean", "--raw", str(lib), *paths, "--near-duplicates"]) == 2
    err = capsys.readouterr().err
    assert "not the crawler's raw/<category>/<term>/ layout" in err and "loose.jpg" in err
    assert "python -m retrieval duplicates --index INDEX --quarantine" in err
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(photo(1))
    assert build_index.main(["clean", "--raw", str(flat), *paths, "--near-duplicates"]) == 2
    assert "python -m retrieval duplicates" in capsys.readouterr().err
    assert not (tmp_path / "clean").exists() or not any((tmp_path / "clean").rglob("*.jpg"))
