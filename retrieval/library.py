"""Scanning a library laid out as DATA/<split>/<class>/<image>.

The scan only lists files (cheap); decoding happens once, at index time, where an unreadable file
is reported and skipped. Hidden files and folders are skipped; so are files whose extension is not
an image format we read.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import LibraryError
from .images import IMAGE_EXTENSIONS, is_image_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LibraryItem:
    """One image: its path relative to the data root (posix, stable across machines) and class."""

    rel: str
    label: str

    def path(self, root: Path) -> Path:
        return root / self.rel


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scan_split(root: Path, split: str = "train") -> list[LibraryItem]:
    """List DATA/<split>/<class>/* images in a stable (sorted) order.

    Raises LibraryError when the folder is missing or holds no images, naming what was looked for.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise LibraryError(
            f"no library at {split_dir}: expected class folders {split_dir}/<class>/*.jpg. "
            "Build the sample library with: python build_index.py sample --out " + str(root)
        )
    items: list[LibraryItem] = []
    ignored = 0
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and is_image_name(f.name):
                items.append(LibraryItem(f.relative_to(root).as_posix(), class_dir.name))
            elif not f.name.startswith("."):
                ignored += 1
    if ignored:
        log.info("%s: ignored %d files that are not %s images", split_dir, ignored,
                 "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)))
    if not items:
        raise LibraryError(
            f"the library {split_dir} is empty: no images in {split_dir}/<class>/ "
            f"(supported: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return items
