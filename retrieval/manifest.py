"""The index manifest: what an index holds and how it was built.

The manifest is written last and atomically, and it names the exact array files it belongs to, so
a build killed half-way leaves the previous index readable (or none at all), never a mixture.
"""
from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from . import atomic
from .errors import IndexError_
from .paths import MANIFEST

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")   # no separators, not hidden, not '..'
FORMAT = 1
PACKAGES = ("numpy", "pillow", "torch", "open_clip_torch", "timm", "chromadb", "gradio")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class Manifest:
    """Everything needed to open an index and to check that a request matches it."""

    data_root: str                      # relative to the index folder when possible
    pixel_size: int
    pixels_file: str
    items: list[dict[str, str]]         # {"path": rel, "label": cls, "sha256": hex}, row order
    skipped: list[dict[str, str]] = field(default_factory=list)
    embedder: dict[str, Any] | None = None   # spec, source, name, dim, has_text, file
    chroma: dict[str, Any] | None = None     # mode, path or url, prefix
    versions: dict[str, str] = field(default_factory=package_versions)
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def read(cls, index_dir: Path) -> "Manifest":
        path = Path(index_dir) / MANIFEST
        if not path.is_file():
            raise IndexError_(
                f"no index at {index_dir} (missing {MANIFEST}). Build one with: "
                f"python build_index.py index --data data --index {index_dir}"
            )
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{path} is unreadable ({exc}); rebuild the index") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise IndexError_(f"{path} has format {found}, this Lookalike reads {FORMAT}; rebuild the index")
        known = set(cls.__dataclass_fields__)
        try:
            manifest = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:   # a required field is missing
            raise IndexError_(f"{path} is incomplete ({exc}); rebuild the index") from None
        if not isinstance(manifest.items, list) or not isinstance(manifest.pixels_file, str):
            raise IndexError_(f"{path} is malformed (items or pixels_file); rebuild the index")
        manifest._check_names(path)
        return manifest

    def _check_names(self, path: Path) -> None:
        """Refuse names that would lead outside the index or library folder. An index can come from
        a Hub dataset repo, so its manifest is input like any other: the files it names are opened
        (and Chroma's folder created) inside the index folder only, and its images inside the library."""
        files = [self.pixels_file, (self.embedder or {}).get("file", "x"), (self.chroma or {}).get("path") or "x"]
        for name in files:
            if not isinstance(name, str) or not _PLAIN_NAME.match(name):
                raise IndexError_(f"{path} names the index file {name!r}, which is not a plain file name "
                                  "inside the index folder; refusing it. Rebuild the index")
        for item in self.items:
            rel = item.get("path") if isinstance(item, dict) else None
            if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
                raise IndexError_(f"{path} lists the image {rel!r}, which is not a path inside the library; "
                                  "refusing it. Rebuild the index")

    def write(self, index_dir: Path) -> None:
        atomic.write_json(Path(index_dir) / MANIFEST, self.to_json())

    def data_path(self, index_dir: Path) -> Path:
        root = Path(self.data_root)
        return root if root.is_absolute() else (Path(index_dir) / root).resolve()

    @property
    def labels(self) -> list[str]:
        return [it["label"] for it in self.items]
