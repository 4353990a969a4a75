"""Deterministic, seeded train/test split of a class-labelled image set.

One implementation serves both the crawled library (default 19 train / 1 test per class) and the
offline sample library (a test fraction, at least one test image per class).
"""
from __future__ import annotations

import filecmp
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from retrieval.atomic import atomic_path, write_json
from retrieval.errors import LibraryError
from retrieval.images import is_image_name

log = logging.getLogger(__name__)


def assign_splits(
    items_by_class: Mapping[str, Sequence[str]],
    *,
    n_test: int | None = 1,
    n_train: int | None = 19,
    test_fraction: float | None = None,
    seed: int = 0,
) -> dict[str, tuple[list[str], list[str]]]:
    """Return {class: (train_items, test_items)}.

    Items are sorted first, then shuffled with a per-class seed, so the result depends only on the
    set of names and the seed (not on directory listing order). With `test_fraction` the test count
    is round(fraction * n), at least 1; otherwise `n_test` per class. `n_train=None` keeps all the
    rest for training. A class with too few images for the request is warned about, and keeps at
    least one training image when it has two or more.
    """
    out: dict[str, tuple[list[str], list[str]]] = {}
    for cls in sorted(items_by_class):
        items = sorted(items_by_class[cls])
        random.Random(f"{seed}:{cls}").shuffle(items)
        want_test = max(1, round(test_fraction * len(items))) if test_fraction is not None else (n_test or 0)
        want_train = n_train if n_train is not None else max(len(items) - want_test, 0)
        if len(items) < want_test + want_train:
            log.warning("class %r has %d images, fewer than the %d train + %d test asked for",
                        cls, len(items), want_train, want_test)
            want_test = min(want_test, max(len(items) - 1, 0)) if len(items) > 1 else 0
            want_train = len(items) - want_test
        out[cls] = (items[want_test:want_test + want_train], items[:want_test])
    return out


SPLITS = ("train", "test")
SPLIT_RECORD = "split.json"


def list_classes(root: Path) -> dict[str, list[str]]:
    """{class: [image file names]} for ROOT/<class>/<image>, hidden folders and files skipped."""
    return {d.name: sorted(f.name for f in d.iterdir() if f.is_file() and is_image_name(f.name))
            for d in sorted(Path(root).iterdir()) if d.is_dir() and not d.name.startswith(".")}


def _copy(src: Path, dst: Path) -> bool:
    """Copy atomically unless an identical file is already there; True when it copied."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return False
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return True


def split_library(clean_dir: Path, data_dir: Path, n_train: int | None = 19, n_test: int = 1,
                  seed: int = 0) -> dict[str, Any]:
    """Copy clean/<class>/* into data/train/<class>/ and data/test/<class>/ (the seed's 19 + 1).

    Deterministic for a given seed and set of files (see `assign_splits`). Idempotent: identical
    files are not copied again; a copy this split no longer wants (another seed or count) is
    removed, since its source stays in clean/. Files in data/ that did not come from clean/ are
    left alone, with a warning. The plan is recorded in data/split.json.
    """
    clean_dir, data_dir = Path(clean_dir), Path(data_dir)
    if not clean_dir.is_dir():
        raise LibraryError(f"no cleaned images at {clean_dir}: run `python build_index.py clean` first")
    classes = {c: names for c, names in list_classes(clean_dir).items() if names}
    if not classes:
        raise LibraryError(f"{clean_dir} holds no <class>/<image> files to split")
    plan = assign_splits(classes, n_test=n_test, n_train=n_train, seed=seed)
    copied = removed = foreign = 0
    for cls, (train, test) in plan.items():
        for split, names in zip(SPLITS, (train, test)):
            folder = data_dir / split / cls
            for name in names:
                copied += _copy(clean_dir / cls / name, folder / name)
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if not f.is_file() or f.name in names or f.name.startswith("."):
                    continue
                if f.name in classes[cls]:  # our copy, no longer in this split
                    f.unlink()
                    removed += 1
                else:
                    foreign += 1
    if foreign:
        log.warning("%d files under %s did not come from %s; left as they are", foreign, data_dir, clean_dir)
    for split in SPLITS:
        extra = sorted(set(list_classes(data_dir / split)) - set(plan)) if (data_dir / split).is_dir() else []
        if extra:
            log.warning("%s/%s has classes not in %s, left as they are: %s", data_dir, split, clean_dir,
                        ", ".join(extra))
    from .provenance import carry_attribution
    carry_attribution(clean_dir, data_dir, {f"{split}/{cls}/{name}": f"{cls}/{name}" for cls, parts in plan.items()
                                            for split, names in zip(SPLITS, parts) for name in names})
    write_json(data_dir / SPLIT_RECORD, {"seed": seed, "n_train": n_train, "n_test": n_test,
                                         "classes": {c: {"train": tr, "test": te} for c, (tr, te) in plan.items()}})
    summary = {"classes": len(plan), "train": sum(len(tr) for tr, _ in plan.values()),
               "test": sum(len(te) for _, te in plan.values()), "copied": copied, "removed": removed}
    log.info("split: %(classes)d classes, %(train)d train + %(test)d test images "
             "(%(copied)d copied, %(removed)d stale copies removed)", summary)
    return summary
