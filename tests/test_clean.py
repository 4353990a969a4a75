"""The cleaner: small, corrupt, non-image and duplicate files go to the quarantine with a reason,
other modes become RGB, terms become classes, raw/ is untouched, and a re-run changes nothing."""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from collect.clean import clean_images


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (hidden ones included)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    cat = raw / "animal" / "Cat"
    cat.mkdir(parents=True)
    good = _encode(Image.new("RGB", (80, 64), (200, 30, 30)), "JPEG")
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half fully transparent
    files = {
        "good.jpg": good,
        "z_dup.jpg": good,                                                # same bytes as good.jpg
        "small.jpg": _encode(Image.new("RGB", (49, 200), "green"), "JPEG"),
        "gray.jpg": _encode(Image.new("L", (60, 60), 128), "JPEG"),
        "cmyk.jpg": _encode(Image.new("CMYK", (60, 60), (0, 255, 255, 0)), "JPEG"),
        "alpha.png": _encode(rgba, "PNG"),
        "anim.gif": _encode(Image.new("P", (60, 60)), "GIF"),
        "corrupt.jpg": good[: len(good) // 2],
        "text.jpg": b"<html>this was a web page</html>",
    }
    for name, data in files.items():
        (cat / name).write_bytes(data)
    (cat / ".good.jpg.x1y2.tmp").write_bytes(b"partial")          # a download's leftover temp file
    other = raw / "pet" / "Cat"                                    # the same term in another category
    other.mkdir(parents=True)
    (other / "tabby.png").write_bytes(_encode(Image.new("RGB", (70, 70), (1, 2, 3)), "PNG"))
    (raw / "plant" / "Rose").mkdir(parents=True)
    (raw / "plant" / "Rose" / "r.webp").write_bytes(_encode(Image.new("RGB", (90, 90), "red"), "WEBP"))
    (raw / "manifest.json").write_text("{}")
    return raw


def test_clean_sorts_good_from_bad_and_keeps_everything(tmp_path: Path, raw: Path) -> None:
    before = _tree(raw)
    clean, quarantine = tmp_path / "clean", tmp_path / "quarantine"
    report = clean_images(raw, clean, quarantine, progress=False)

    assert _tree(raw) == before  # raw/ is the download cache: never changed
    kept = {p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert kept == {"Cat/good.jpg", "Cat/gray.jpg", "Cat/cmyk.jpg", "Cat/alpha.png", "Cat/anim.png",
                    "Cat/tabby.png", "Rose/r.webp"}
    assert report.classes == {"Cat": 6, "Rose": 1}
    assert dict(report.rejected) == {"duplicate": 1, "too_small": 1, "corrupt": 1, "not_image": 1}

    # Already-RGB files are copied byte for byte; the others are RGB now.
    assert (clean / "Cat" / "good.jpg").read_bytes() == (raw / "animal" / "Cat" / "good.jpg").read_bytes()
    for rel in kept:
        with Image.open(clean / rel) as img:
            assert img.mode == "RGB", rel
    with Image.open(clean / "Cat" / "alpha.png") as img:
        assert img.getpixel((5, 5)) == (255, 255, 255) and img.getpixel((60, 5)) == (0, 0, 255)
    assert report.converted == 4  # gray, cmyk, alpha, anim

    # Rejects are copied to quarantine/<reason>/<category>/<term>/ and logged with their reason.
    log = [json.loads(line) for line in (quarantine / "reasons.jsonl").read_text().splitlines()]
    assert {(r["reason"], r["file"]) for r in log} == {
        ("duplicate", "duplicate/animal/Cat/z_dup.jpg"),  # the first in path order is kept
        ("too_small", "too_small/animal/Cat/small.jpg"),
        ("corrupt", "corrupt/animal/Cat/corrupt.jpg"),
        ("not_image", "not_image/animal/Cat/text.jpg"),
    }
    for r in log:
        assert (quarantine / r["file"]).read_bytes() == (raw / r["source"].removeprefix("raw/")).read_bytes()
    small = next(r for r in log if r["reason"] == "too_small")
    assert "49x200" in small["detail"]


def test_clean_is_idempotent_and_never_deletes(tmp_path: Path, raw: Path, caplog) -> None:
    clean, quarantine = tmp_path / "clean", tmp_path / "quarantine"
    clean_images(raw, clean, quarantine, progress=False)
    after_first = (_tree(clean), _tree(quarantine))
    again = clean_images(raw, clean, quarantine, progress=False)
    assert (_tree(clean), _tree(quarantine)) == after_first
    assert again.written == 0 and again.quarantined == 0 and again.kept == 7

    # A stricter minimum: smaller images leave clean/ for quarantine/stale/; they are not deleted.
    n_files = len(_tree(clean)) + len(_tree(quarantine))
    stricter = clean_images(raw, clean, quarantine, min_side=65, progress=False)
    assert stricter.classes == {"Cat": 1, "Rose": 1}  # tabby (70x70) and r (90x90) are left
    stale = sorted(p.relative_to(quarantine / "stale").as_posix() for p in (quarantine / "stale").rglob("*.*"))
    assert stale == ["Cat/alpha.png", "Cat/anim.png", "Cat/cmyk.jpg", "Cat/good.jpg", "Cat/gray.jpg"]
    # Every file is still somewhere: moved ones left clean/, raw rejects were added to quarantine.
    assert len(_tree(clean)) + len(_tree(quarantine)) >= n_files
    reasons = [json.loads(line)["reason"] for line in (quarantine / "reasons.jsonl").read_text().splitlines()]
    assert reasons.count("stale") == 5


def test_clean_merges_a_term_listed_under_two_categories(tmp_path: Path, raw: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="collect.clean")
    clean_images(raw, tmp_path / "clean", tmp_path / "q", progress=False)
    assert (tmp_path / "clean" / "Cat" / "tabby.png").is_file()
    assert "class 'Cat' merges the term from categories animal, pet" in caplog.text
