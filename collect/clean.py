"""The `clean` stage: raw/<category>/<term>/* -> clean/<class>/*, with a quarantine for rejects.

As in the seed, each search term is a class (the seed's merge step keys classes by the term folder,
`Dataset/<category>/<term>/img`); a term listed under two categories becomes one class.

Rules, and why:
- raw/ is the downloader's cache and is never modified (so a re-download is never triggered by
  cleaning). clean/ is derived from it; re-running gives the same clean/ (idempotent).
- An image is rejected when the decoder (`retrieval.images.load_image`) refuses it, whatever the
  cause: not an image, an unsupported format, corrupt or truncated, over its size or decode
  limits (the reason is the decoder's message); when it is smaller than
  `min_side` on either side (the seed's 50 px), or has the same bytes as one already kept
  (first in sorted path order wins). Rejects are copied to quarantine/<reason>/<category>/<term>/
  and logged in quarantine/reasons.jsonl; nothing is deleted silently.
- Images that are not plain RGB (greyscale, CMYK, palette, transparency, animation) are converted
  once through `retrieval.images.load_image` (transparency onto white, first frame, EXIF applied)
  and saved as JPEG (from JPEG) or PNG; RGB JPEG/PNG/WebP/BMP files are copied byte for byte.
- A file in clean/ that the current run does not produce (a stricter --min-side, a hand-added
  file) is moved to quarantine/stale/<class>/, not deleted.
- clean/.clean_state.json caches each source's check by content hash, so a re-run decodes only
  new files.
- With `near_duplicates`, groups of near-duplicates among the kept images (resized, recompressed,
  lightly cropped or brightened copies; `retrieval.duplicates`, perceptual hash) keep one image
  each, the largest, and the others go to quarantine/near_duplicate/<class>/ with the whole group
  and its similarity in the reason log.
"""
from __future__ import annotations

import filecmp
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from retrieval.atomic import atomic_path, remove_leftovers, write_bytes, write_json
from retrieval.errors import ImageError, LibraryError
from retrieval.image_formats import OPENERS, frames_at_most
from retrieval.images import load_image
from retrieval.library import inside_root

log = logging.getLogger(__name__)

STATE_NAME = ".clean_state.json"
REASONS_LOG = "reasons.jsonl"
MIN_SIDE = 50
KEEP_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}


@dataclass
class CleanReport:
    kept: int = 0
    written: int = 0                                     # files newly written to clean/
    converted: int = 0                                   # of the kept, how many were re-encoded as RGB
    rejected: Counter = field(default_factory=Counter)   # reason -> files (this run's view of raw/)
    quarantined: int = 0                                 # files newly placed in quarantine/
    classes: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, str]] = field(default_factory=list)   # {"path": raw rel, "kind": reason}

    def reject_lines(self, quarantine_dir: Path) -> list[str]:
        """Counts by reason with a few examples (retrieval.library.summarize_skips: one bounded line
        however many), and where the full list is."""
        if not self.rejects:
            return []
        from retrieval.library import summarize_skips
        return [f"  {summarize_skips(self.rejects)}; every reject with its reason: "
                f"{Path(quarantine_dir) / REASONS_LOG}"]

    def summary(self) -> str:
        rej = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (f"{self.kept} images kept in {len(self.classes)} classes ({self.written} written, "
                f"{self.converted} converted to RGB); rejected: {rej}; {self.quarantined} newly quarantined")


def inspect_image(data: bytes, name: str) -> tuple[dict[str, Any], Image.Image | None]:
    """Check one file's bytes: ({status, detail, width, height, format, mode, convert}, decoded image).

    The pixels are decoded by `load_image` first, like everywhere else: its format allowlist and
    bounds decide, and whatever fails there is an ImageError, so every decoder failure is a
    rejected file with its reason, never a crash. Only a file it accepted is opened again (same
    allowed formats) to learn its format, mode and whether it is animated.
    """
    if not data:
        return {"status": "not_image", "detail": "empty file (0 bytes)"}, None
    try:
        img = load_image(data, name=name)
    except ImageError as exc:
        return {"status": reject_reason(str(exc)), "detail": str(exc)[:200]}, None
    try:
        with Image.open(io.BytesIO(data), formats=OPENERS) as header:
            fmt, mode, animated = header.format, header.mode, frames_at_most(header, 1) > 1
    except Exception as exc:   # noqa: BLE001 (a header the decoder took but a second read trips on)
        return {"status": "corrupt", "detail": f"{type(exc).__name__}: {exc}"[:200]}, None
    convert = mode != "RGB" or fmt not in KEEP_FORMATS or animated
    return {"status": "ok", "detail": "", "width": img.width, "height": img.height,
            "format": fmt, "mode": mode, "convert": convert}, img


def reject_reason(message: str) -> str:
    """The quarantine folder for a decoder refusal (ImageError message): not_image,
    unsupported_format, too_large or corrupt."""
    text = message.lower()
    if "not an image" in text:
        return "not_image"
    if "unsupported image format" in text:
        return "unsupported_format"
    if any(k in text for k in ("decompression bomb", "too large", "to decode", "limit for icons", "frames or pages")):
        return "too_large"
    return "corrupt"


def _output_name(stem: str, info: dict[str, Any]) -> str:
    if not info["convert"]:
        return stem + KEEP_FORMATS[info["format"]]
    return stem + (".jpg" if info["format"] == "JPEG" else ".png")


def _encode_rgb(img: Image.Image, name: str) -> bytes:
    buf = io.BytesIO()
    if name.endswith(".jpg"):
        img.save(buf, "JPEG", quality=95)
    else:
        img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def raw_files(raw_dir: Path) -> list[tuple[str, str, Path]]:
    """(category, term, file) for every visible file at raw/<category>/<term>/<file>, sorted.

    The library's symlink policy (retrieval.library): a symbolic link to a folder is not followed,
    and a link to a file outside raw/ is not read (nor copied into quarantine); each is logged."""
    out = []

    def folders(parent: Path) -> list[Path]:
        found = []
        for p in sorted(parent.iterdir()):
            if p.name.startswith(".") or not p.is_dir():
                continue
            if p.is_symlink():
                log.warning("clean: not following %s: a symbolic link to a folder", p)
                continue
            found.append(p)
        return found

    for cat in folders(raw_dir):
        for term in folders(cat):
            for f in sorted(term.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                if f.is_symlink() and not inside_root(f, raw_dir):
                    log.warning("clean: not reading %s: a symbolic link to a file outside %s", f, raw_dir)
                    continue
                out.append((cat.name, term.name, f))
    return out


def images_outside_layout(raw_dir: Path, limit: int = 1000) -> list[str]:
    """Image files (by name) under raw_dir that are not at <category>/<term>/<file>: loose ones,
    or deeper; hidden folders left out. At most `limit` of them."""
    from retrieval.images import is_image_name
    out: list[str] = []
    for folder, dirs, names in os.walk(raw_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        depth = len(Path(folder).relative_to(raw_dir).parts)
        if depth != 2:
            out += [(Path(folder) / n).relative_to(raw_dir).as_posix() for n in sorted(names)
                    if not n.startswith(".") and is_image_name(n)]
        if len(out) >= limit:
            break
    return out[:limit]


class _Quarantine:
    """Copies or moves rejects under quarantine/<reason>/..., appending to the reason log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.new: list[dict[str, Any]] = []

    def put(self, src: Path, rel: str, reason: str, detail: str, source: str, *, move: bool,
            extra: dict[str, Any] | None = None) -> None:
        target = self.root / reason / rel
        n = 1
        while target.exists():
            if filecmp.cmp(src, target, shallow=False):  # already kept here: nothing new to log
                if move:
                    src.unlink()
                return
            target = target.with_name(f"{Path(rel).stem}.{n}{Path(rel).suffix}")
            n += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        if move:
            shutil.move(src, target)  # a rename on one file system
        else:
            with atomic_path(target) as tmp:
                shutil.copyfile(src, tmp)
        self.new.append({"file": target.relative_to(self.root).as_posix(), "source": source,
                         "reason": reason, "detail": detail, **(extra or {}),
                         "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def flush(self) -> None:
        if not self.new:
            return
        log_path = self.root / REASONS_LOG
        old = log_path.read_bytes() if log_path.is_file() else b""
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.new)
        write_bytes(log_path, old + lines.encode("utf-8"))


def clean_images(raw_dir: Path, clean_dir: Path, quarantine_dir: Path, *, min_side: int = MIN_SIDE,
                 progress: bool = True, near_duplicates: bool = False,
                 near_threshold: float | None = None) -> CleanReport:
    """Build clean/<class>/ from raw/<category>/<term>/; see the module docstring."""
    raw_dir, clean_dir, quarantine_dir = Path(raw_dir), Path(clean_dir), Path(quarantine_dir)
    files = _files_to_clean(raw_dir, clean_dir, quarantine_dir, near_duplicates)
    state_path = clean_dir / STATE_NAME
    checks, outputs = _load_state(state_path)
    quarantine = _Quarantine(quarantine_dir)
    report = CleanReport()
    first_seen: dict[str, str] = {}
    produced: dict[str, set[str]] = defaultdict(set)
    categories_of: dict[str, set[str]] = defaultdict(set)
    sources: dict[str, str] = {}   # clean rel -> raw rel, to carry the provenance

    for category, term, path in tqdm(files, desc="cleaning", unit="img", disable=not progress):
        rel = f"{category}/{term}/{path.name}"
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        info, img = (checks[sha], None) if sha in checks else inspect_image(data, rel)
        checks[sha] = info
        reason, detail = _verdict(info, first_seen.get(sha), min_side)
        if reason != "ok":
            report.rejected[reason] += 1
            report.rejects.append({"path": rel, "kind": reason})
            quarantine.put(path, rel, reason, detail, f"raw/{rel}", move=False)
            continue
        first_seen[sha] = rel
        cls = term
        name = _output_name(path.stem, info)
        target = clean_dir / cls / name
        out_rel = f"{cls}/{name}"
        if not target.is_file() or outputs.get(out_rel) != sha:
            _write_clean(target, data, info, img, rel)
            outputs[out_rel] = sha
            report.written += 1
        report.converted += bool(info["convert"])
        produced[cls].add(name)
        categories_of[cls].add(category)
        sources[out_rel] = rel

    _log_merged_classes(categories_of)
    if near_duplicates:
        _quarantine_near_duplicates(clean_dir, produced, outputs, checks, quarantine, report, near_threshold)
    _move_stale(clean_dir, produced, quarantine)
    quarantine.flush()
    live = {f"{cls}/{name}" for cls, names in produced.items() for name in names}
    from .provenance import carry_attribution
    carry_attribution(raw_dir, clean_dir, {r: sources[r] for r in live if r in sources})
    write_json(state_path, {"version": 1, "checks": checks,
                            "outputs": {k: v for k, v in outputs.items() if k in live}})
    report.kept = sum(len(v) for v in produced.values())
    report.quarantined = len(quarantine.new)
    report.classes = {cls: len(names) for cls, names in sorted(produced.items())}
    log.info("clean: %s -> %s", report.summary(), clean_dir)
    return report


# For a folder of one's own photos, near-duplicates are found on its index and moved aside in place.
OWN_PHOTOS = ("for near-duplicates in any other folder of photos, index it (python build_index.py index --data "
              "DIR --index INDEX) and run python -m retrieval duplicates --index INDEX --quarantine QDIR, which "
              "moves all but one of each group aside and can undo it (docs/own-photos.md)")


def _files_to_clean(raw_dir: Path, clean_dir: Path, quarantine_dir: Path,
                    near_duplicates: bool = False) -> list[tuple[str, str, Path]]:
    """raw_files(raw_dir), refusing a missing or empty raw/ (and, for near-duplicates, images
    outside the crawler's layout, which clean/ would silently leave out); makes clean/ and clears
    the temporaries a killed run left in clean/ and quarantine/."""
    if not raw_dir.is_dir():
        raise LibraryError(f"no raw images at {raw_dir}: run `python build_index.py download` first")
    files = raw_files(raw_dir)
    if not files:
        raise LibraryError(f"{raw_dir} holds no raw/<category>/<term>/<image> files to clean (the crawler's "
                           f"layout, which the clean stage copies into clean/<term>/); {OWN_PHOTOS}")
    stray = images_outside_layout(raw_dir) if near_duplicates else []
    if stray:
        raise LibraryError(f"{raw_dir} is not the crawler's raw/<category>/<term>/ layout: {len(stray)} images lie "
                           f"elsewhere (e.g. {stray[0]}) and clean would leave them out; {OWN_PHOTOS}")
    clean_dir.mkdir(parents=True, exist_ok=True)
    for folder in (clean_dir, quarantine_dir):   # temporaries of a run that was killed
        remove_leftovers(folder, recursive=True)
    return files


def _verdict(info: dict[str, Any], kept_as: str | None, min_side: int) -> tuple[str, str]:
    """(reason, detail) for one checked file: its check's status, or too_small under `min_side`, or
    duplicate when the same bytes were already kept (as `kept_as`); "ok" keeps it."""
    reason, detail = info["status"], info.get("detail", "")
    if reason == "ok" and min(info["width"], info["height"]) < min_side:
        return "too_small", f"{info['width']}x{info['height']} < {min_side}px"
    if reason == "ok" and kept_as is not None:
        return "duplicate", f"same bytes as {kept_as}"
    return reason, detail


def _write_clean(target: Path, data: bytes, info: dict[str, Any], img: Image.Image | None, rel: str) -> None:
    """Write one kept image: the bytes as they are, or re-encoded as RGB when the check says convert."""
    if not info["convert"]:
        write_bytes(target, data)
        return
    if img is None:  # the check came from the state cache
        img = load_image(data, name=rel)
    write_bytes(target, _encode_rgb(img, target.name))


def _log_merged_classes(categories_of: dict[str, set[str]]) -> None:
    """Say which classes join one term from several categories (the class is the term)."""
    for cls, cats in sorted(categories_of.items()):
        if len(cats) > 1:
            log.info("class %r merges the term from categories %s", cls, ", ".join(sorted(cats)))


def _quarantine_near_duplicates(clean_dir: Path, produced: dict[str, set[str]], outputs: dict[str, str],
                                checks: dict[str, dict[str, Any]], quarantine: _Quarantine, report: CleanReport,
                                threshold: float | None) -> None:
    """Keep the largest image of each near-duplicate group (then the first by name); move the rest."""
    from retrieval.duplicates import DEFAULT_THRESHOLDS, check_threshold, group_vectors, keeper, phash_of_images

    t = check_threshold(DEFAULT_THRESHOLDS["phash"] if threshold is None else threshold)
    rels = sorted(f"{cls}/{name}" for cls, names in produced.items() for name in names)
    images = [load_image(clean_dir / rel, name=rel) for rel in tqdm(rels, desc="near-duplicates", unit="img",
                                                                   leave=False, disable=len(rels) < 50)]
    def area(rel: str) -> int:
        check = checks.get(outputs.get(rel, ""), {})
        return check.get("width", 0) * check.get("height", 0)

    for group in group_vectors(phash_of_images(images), t, as_hash=True):
        members = [rels[i] for i in group.rows]
        keep = members[keeper(members, [area(r) for r in members])]
        detail = (f"near-duplicate of {keep} (group of {len(members)}, similarity "
                  f"{group.min_similarity:.3f}-{group.max_similarity:.3f}, threshold {t:.2f})")
        for rel in members:
            if rel == keep:
                continue
            cls, name = rel.split("/", 1)
            quarantine.put(clean_dir / rel, rel, "near_duplicate", detail, f"clean/{rel}", move=True,
                           extra={"kept": keep, "group": members, "similarity": [group.min_similarity,
                                                                                  group.max_similarity]})
            produced[cls].discard(name)
            report.rejected["near_duplicate"] += 1
    log.info("near-duplicates: %d removed from %s (pHash, threshold %.2f)", report.rejected["near_duplicate"],
             clean_dir, t)


def _load_state(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """({source sha256: check result}, {clean rel path: source sha256}) from the last run."""
    if not path.is_file():
        return {}, {}
    try:
        state = json.loads(path.read_text("utf-8"))
        return dict(state["checks"]), dict(state["outputs"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable %s; every image is checked again", path)
        return {}, {}


def _move_stale(clean_dir: Path, produced: dict[str, set[str]], quarantine: _Quarantine) -> None:
    """Files in clean/<class>/ that this run did not produce go to quarantine/stale/<class>/."""
    for cls_dir in sorted(p for p in clean_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(p for p in cls_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            if f.name not in produced.get(cls_dir.name, ()):
                rel = f"{cls_dir.name}/{f.name}"
                quarantine.put(f, rel, "stale", "no longer produced from raw/ by this run", f"clean/{rel}", move=True)
        if not any(cls_dir.iterdir()):
            cls_dir.rmdir()
