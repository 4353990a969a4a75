"""Writing the sample library: encode the planned pictures as JPEG, resume an earlier run, and
finish with the attribution and `sample.json`.

`sample.json` is written last, so its absence marks an unfinished run; a `.sample-partial.json`
marker holds the encoding settings meanwhile. A rerun reuses the images already written (same
settings, same source picture), moves those whose split changed, and gives the same bytes.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from tqdm import tqdm

from retrieval.atomic import write_bytes, write_json
from retrieval.attribution import read_attribution, write_attribution
from retrieval.errors import ImageError, LibraryError
from retrieval.images import load_image
from retrieval.paths import ATTRIBUTION

from ..split import assign_splits
from .records import attribution_md, records
from .sources import (CLASS_MAP, GCOMPRIS_COPYRIGHT, GCOMPRIS_ROOT, INSTALL_HINT, TUXPAINT_COPYRIGHT,
                      TUXPAINT_ROOT, Candidate, plan_sample)

log = logging.getLogger(__name__)

MAX_SIDE = 512
JPEG_QUALITY = 90
FORMAT_VERSION = 1
SPLITS = ("train", "test")
SUMMARY_NAME = "sample.json"
PARTIAL_NAME = ".sample-partial.json"
OUR_FILE = re.compile(r"^(gcompris|tuxpaint)-[a-z0-9_.-]+\.jpg$")

Splits = dict[str, tuple[list[str], list[str]]]   # class -> (train names, test names)


def encode_jpeg(data: bytes, label: str, *, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """RGB JPEG bytes, longer side capped; transparency is flattened onto white by load_image."""
    img = load_image(data, name=label)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _our_files(out: Path) -> dict[str, Path]:
    """{file name: path} of the images an earlier sample run wrote; refuses a folder with others."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        base = out / split
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            rel = path.relative_to(out)
            if len(rel.parts) != 3 or not OUR_FILE.match(path.name):
                raise LibraryError(
                    f"{out} already holds images that `sample` did not write (e.g. {rel}); "
                    "build the sample library into another folder with --out, or move them away")
            found[path.name] = path
    return found


def _clean_temp_and_empty(out: Path) -> None:
    for split in SPLITS:
        base = out / split
        if not base.is_dir():
            continue
        for tmp in base.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        for folder in sorted(base.iterdir()):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _assign_splits(selected: list[Candidate], *, test_fraction: float, seed: int
                   ) -> tuple[Splits, dict[str, str]]:
    """(per class (train names, test names), split of each name): the seeded split, kept apart
    from the files so that another seed only moves images."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for cand in selected:
        by_class[cand.cls].append(cand.name)
    splits = assign_splits(by_class, n_test=None, n_train=None, test_fraction=test_fraction, seed=seed)
    split_of = {name: split for cls, (train, test) in splits.items()
                for split, names in (("train", train), ("test", test)) for name in names}
    return splits, split_of


def _previous_build(out: Path, params: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """(may images be reused, {file name: sha256 of the picture it was made from}).

    Reuse needs the same encoding settings as the earlier run (finished or not); the digests come
    from its attribution, so a picture that changed in an upgraded package is made again.
    """
    previous = {}
    for marker in (out / SUMMARY_NAME, out / PARTIAL_NAME):
        try:
            previous = json.loads(marker.read_text(encoding="utf-8")).get("params", {})
            break
        except (OSError, ValueError, AttributeError):
            continue
    made_from = {PurePosixPath(r["file"]).name: r["original_sha256"]
                 for r in read_attribution(out).records
                 if "file" in r and isinstance(r.get("original_sha256"), str)}
    return previous == params, made_from


@dataclass
class _Placement:
    """What bringing the folder up to date involves: images still to encode, and what was kept."""

    todo: list[tuple[Candidate, Path]]
    reused: int = 0
    moved: int = 0
    removed: int = 0


def _place_existing(out: Path, selected: list[Candidate], split_of: dict[str, str], existing: dict[str, Path],
                    *, reuse: bool, made_from: dict[str, str]) -> _Placement:
    """Keep or move the images an earlier run wrote and delete those no longer planned, so a rerun
    only encodes what is new or changed."""
    placement = _Placement(todo=[])
    planned: set[Path] = set()
    for cand in selected:
        dest = out / split_of[cand.name] / cand.cls / f"{cand.name}.jpg"
        planned.add(dest)
        old = existing.get(dest.name)
        if old is not None and (not reuse or made_from.get(dest.name, cand.digest) != cand.digest):
            old = None
        if old is not None and old == dest:
            placement.reused += 1
        elif old is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, dest)
            placement.moved += 1
        else:
            placement.todo.append((cand, dest))
    for path in existing.values():
        if path not in planned and path.exists():
            path.unlink()
            placement.removed += 1
    _clean_temp_and_empty(out)
    return placement


def _encode_all(todo: list[tuple[Candidate, Path]], *, max_side: int, quality: int, workers: int | None) -> None:
    """Encode and write the images in threads (PIL releases the GIL); on Ctrl-C, stop without the
    queued work, so what was written stays and the next run resumes from there."""
    def work(item: tuple[Candidate, Path]) -> None:
        cand, dest = item
        write_bytes(dest, encode_jpeg(cand.read(), cand.original, max_side=max_side, quality=quality))

    n_workers = workers or min(8, os.cpu_count() or 1)
    failed: list[str] = []
    pool = ThreadPoolExecutor(max_workers=n_workers)
    try:
        with tqdm(total=len(todo), desc="sample images", unit="img", disable=not todo) as bar:
            for item, future in [(item, pool.submit(work, item)) for item in todo]:
                try:
                    future.result()
                except ImageError as exc:
                    failed.append(item[0].name)
                    log.warning("skipping %s: %s", item[0].original, exc)
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C, stop without the queued work
    if failed:
        raise LibraryError(f"{len(failed)} sample pictures could not be converted (first: {failed[0]}); "
                           f"the packages may be damaged: reinstall them with {INSTALL_HINT}")


def _summary(recs: list[dict], splits: Splits, params: dict[str, Any], *, seed: int,
             test_fraction: float) -> dict[str, Any]:
    """sample.json: the settings, and images per class, split, package and licence."""
    classes = {cls: {"train": len(tr), "test": len(te)} for cls, (tr, te) in sorted(splits.items())}
    return {
        "format_version": FORMAT_VERSION,
        "params": params,
        "seed": seed,
        "test_fraction": test_fraction,
        "images": len(recs),
        "classes": classes,
        "packages": dict(sorted(Counter(r["source"] for r in recs).items())),
        "licences": dict(sorted(Counter(r["licence"] for r in recs).items())),
        "attribution": ATTRIBUTION,
    }


def _start_run(out: Path, params: dict[str, Any]) -> tuple[dict[str, Path], bool, dict[str, str]]:
    """(images already there, may they be reused, {file: source digest}); marks the run unfinished
    before anything is touched: sample.json only comes back at the end."""
    out.mkdir(parents=True, exist_ok=True)
    existing = _our_files(out)
    reuse, made_from = _previous_build(out, params)
    if existing and not reuse:
        log.info("encoding settings changed (or unknown); re-encoding every image")
    write_json(out / PARTIAL_NAME, {"params": params})
    (out / SUMMARY_NAME).unlink(missing_ok=True)
    return existing, reuse, made_from


def build_sample_library(
    out: Path,
    *,
    seed: int = 0,
    test_fraction: float = 0.1,
    workers: int | None = None,
    gcompris_root: Path = GCOMPRIS_ROOT,
    tuxpaint_root: Path = TUXPAINT_ROOT,
    gcompris_copyright: Path = GCOMPRIS_COPYRIGHT,
    tuxpaint_copyright: Path = TUXPAINT_COPYRIGHT,
    class_map: Path = CLASS_MAP,
    max_side: int = MAX_SIDE,
    quality: int = JPEG_QUALITY,
) -> dict[str, Any]:
    """Build (or bring up to date) the sample library under `out`; return a summary dict.

    Reruns reuse the images already there when the encoding settings and the source picture match,
    move images whose split changed (another seed) instead of re-encoding them, and delete images
    no longer planned.
    """
    if not 0.0 < test_fraction < 1.0:
        raise LibraryError(f"--test-fraction must be between 0 and 1 (got {test_fraction})")
    start = time.perf_counter()
    out = Path(out)
    selected = plan_sample(gcompris_root=gcompris_root, tuxpaint_root=tuxpaint_root,
                           gcompris_copyright=gcompris_copyright, tuxpaint_copyright=tuxpaint_copyright,
                           class_map=class_map)
    splits, split_of = _assign_splits(selected, test_fraction=test_fraction, seed=seed)
    params = {"format_version": FORMAT_VERSION, "max_side": max_side, "jpeg_quality": quality}
    existing, reuse, made_from = _start_run(out, params)
    placement = _place_existing(out, selected, split_of, existing, reuse=reuse, made_from=made_from)
    _encode_all(placement.todo, max_side=max_side, quality=quality, workers=workers)

    recs = records(selected, split_of)
    summary = _summary(recs, splits, params, seed=seed, test_fraction=test_fraction)
    write_attribution(out, recs, markdown=attribution_md(recs, summary))
    write_json(out / SUMMARY_NAME, summary)  # last: marks a finished build
    (out / PARTIAL_NAME).unlink(missing_ok=True)
    return {**summary, "out": str(out), "encoded": len(placement.todo), "reused": placement.reused,
            "moved": placement.moved, "removed": placement.removed,
            "seconds": round(time.perf_counter() - start, 2)}
