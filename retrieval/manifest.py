"""The index manifest: what an index holds and how it was built.

The manifest is written last and atomically, and it names the exact array files it belongs to, so
a build killed half-way leaves the previous index readable (or none at all), never a mixture.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from . import atomic
from .errors import IndexError_, Remedy
from .paths import MANIFEST
from .records import ChromaRecord, Damaged, EmbedderRecord, MapsRecord, RerankRecord

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")   # no separators, not hidden, not '..'
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
REBUILD = "rebuild the index"
FORMAT = 1
PACKAGES = ("numpy", "pillow", "torch", "open_clip_torch", "timm", "chromadb", "gradio")


def array_checksum(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes: written at build time, checked on open, so a
    swapped, truncated or hand-edited array is refused instead of answered from."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.data.cast("B"))   # the buffer itself, not a copy
    return h.hexdigest()


class Item(TypedDict):
    """One indexed image, in row order."""

    path: str      # relative to the library root, forward slashes
    label: str     # its class ("" in an unlabelled library)
    sha256: str    # of the file's bytes


def items_checksum(items: list[Item]) -> str:
    """sha256 of the rows (path, label, content hash) in order: a relabelled or reordered manifest
    no longer matches the arrays it names, and is refused."""
    rows = [[it.get("path"), it.get("label"), it.get("sha256")] for it in items]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


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
    items: list[Item]
    skipped: list[dict[str, str]] = field(default_factory=list)
    embedder: EmbedderRecord | None = None
    chroma: ChromaRecord | None = None
    rerank: RerankRecord | None = None
    maps: MapsRecord | None = None        # the library maps (retrieval.projection); older indexes lack it
    versions: dict[str, str] = field(default_factory=package_versions)
    format: int = FORMAT
    checksums: dict[str, str] = field(default_factory=dict)   # "items" and each array file -> sha256

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("embedder", "chroma", "rerank", "maps"):
            record = out[key]
            out[key] = None if record is None else record.to_json()
        if self.maps is None:
            out.pop("maps")   # the layout of indexes built before maps, unchanged
        return out

    @classmethod
    def read(cls, index_dir: Path) -> "Manifest":
        path = Path(index_dir) / MANIFEST
        if not path.is_file():
            raise IndexError_(f"no index at {index_dir} (missing {MANIFEST}); build one", remedy=Remedy.BUILD_INDEX)
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{path} is unreadable ({exc}); rebuild the index", remedy=Remedy.REBUILD_INDEX) from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise IndexError_(f"{path} has format {found}, this Lookalike reads {FORMAT}; rebuild the index",
                              remedy=Remedy.REBUILD_INDEX)
        known = set(cls.__dataclass_fields__)
        fields_ = {k: v for k, v in raw.items() if k in known}
        try:
            for key, record in (("embedder", EmbedderRecord), ("chroma", ChromaRecord), ("rerank", RerankRecord),
                                ("maps", MapsRecord)):
                if fields_.get(key) is not None:
                    fields_[key] = record.from_json(fields_[key])
        except Damaged as exc:
            raise IndexError_(f"{path} is damaged: {exc}; {REBUILD}", remedy=Remedy.REBUILD_INDEX) from None
        try:
            manifest = cls(**fields_)
        except TypeError as exc:   # a required field is missing
            raise IndexError_(f"{path} is incomplete ({exc}); rebuild the index", remedy=Remedy.REBUILD_INDEX) from None
        if not isinstance(manifest.items, list) or not isinstance(manifest.pixels_file, str):
            raise IndexError_(f"{path} is malformed (items or pixels_file); rebuild the index",
                              remedy=Remedy.REBUILD_INDEX)
        manifest.validate(path)
        return manifest

    def validate(self, path: Path) -> None:
        """Refuse a manifest whose names lead outside its folders or whose fields are damaged."""
        self._check_names(path)
        self._check_fields(path)

    def _check_fields(self, path: Path) -> None:
        """Types and values a damaged or hand-edited manifest gets wrong, each with its own message."""
        def bad(what: str) -> IndexError_:
            return IndexError_(f"{path} is damaged: {what}; {REBUILD}", remedy=Remedy.REBUILD_INDEX)
        if type(self.pixel_size) is not int or not 1 <= self.pixel_size <= 4096:
            raise bad(f"pixel_size is {self.pixel_size!r}, not a whole number of pixels")
        for i, item in enumerate(self.items):
            for key in ("path", "label", "sha256"):
                if not isinstance(item.get(key), str):
                    raise bad(f"image {i} ({item.get('path')!r}) has no {key}")
            if not _SHA256.match(item["sha256"]):
                raise bad(f"image {i} ({item['path']!r}) has sha256 {item['sha256'][:80]!r}, not 64 hex digits")
        if not isinstance(self.checksums, dict):
            raise bad("checksums is not an object")
        want = self.checksums.get("items")
        if want is not None and want != items_checksum(self.items):
            raise bad("its image list (paths, labels or content hashes) was changed after the build "
                      "(the items checksum does not match)")

    def _check_names(self, path: Path) -> None:
        """Refuse names that would lead outside the index or library folder. An index can come from
        a Hub dataset repo, so its manifest is input like any other: the files it names are opened
        (and Chroma's folder created) inside the index folder only, and its images inside the library."""
        files: list[Any] = [self.pixels_file, *self.files()[1:]]
        if self.chroma is not None and self.chroma.path is not None:
            files.append(self.chroma.path)
        for name in files:
            if not isinstance(name, str) or not _PLAIN_NAME.match(name):
                raise IndexError_(f"{path} names the index file {name!r}, which is not a plain file name "
                                  "inside the index folder; refusing it. Rebuild the index", remedy=Remedy.REBUILD_INDEX)
        for item in self.items:
            rel = item.get("path") if isinstance(item, dict) else None
            if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
                raise IndexError_(f"{path} lists the image {rel!r}, which is not a path inside the library; "
                                  "refusing it. Rebuild the index", remedy=Remedy.REBUILD_INDEX)

    def check_array(self, path: Path, arr: np.ndarray) -> None:
        """Refuse an array that does not fit this manifest: rank, row count, width, dtype,
        finiteness and (for indexes that recorded one) the build-time checksum."""
        if path.name == self.pixels_file:
            self._check(path, arr, "pixel", self.pixel_size * self.pixel_size * 3, ("uint8",), "pixel_size")
        else:
            self._check(path, arr, "embedding", self.embedder.dim if self.embedder else None, ("float32", "float16"),
                        "dim")

    def check_dba(self, path: Path, arr: np.ndarray, width: int) -> None:
        """The same checks for a re-ranking (DBA) array of `width` values per row (retrieval.rerank)."""
        self._check(path, arr, "re-ranking (DBA)", width, ("float32",), "its source's vectors")

    def check_stored(self, path: Path, arr: np.ndarray, kind: str) -> None:
        """A re-ranking file with its own layout (the transform, the k-reciprocal graph; their
        readers check the layout): finite values and the build-time checksum."""
        def bad(what: str) -> IndexError_:
            return IndexError_(f"the {kind} array {path.name} is damaged: {what}; {REBUILD}", remedy=Remedy.REBUILD_INDEX)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise bad("it holds NaN or infinite values")
        want = self.checksums.get(path.name)
        if want is None or want != array_checksum(arr):
            raise bad("its contents changed after the build (the checksum in the manifest does not match)")

    def _check(self, path: Path, arr: np.ndarray, kind: str, width: int | None, dtypes: tuple[str, ...],
               width_from: str) -> None:
        def bad(what: str) -> IndexError_:
            return IndexError_(f"the {kind} array {path.name} is damaged: {what}; {REBUILD}", remedy=Remedy.REBUILD_INDEX)
        if arr.ndim != 2:
            raise bad(f"it has {arr.ndim} dimensions {tuple(arr.shape)}, not 2 (rows x values)")
        if arr.shape[0] != len(self.items):
            raise bad(f"it holds {arr.shape[0]} rows but the manifest lists {len(self.items)} images")
        if arr.shape[1] != width:
            raise bad(f"its rows have {arr.shape[1]} values, not the {width} that the manifest "
                      f"({width_from}) implies")
        if arr.dtype.name not in dtypes:
            raise bad(f"its values are {arr.dtype.name}, not {' or '.join(dtypes)}")
        if kind != "pixel" and not np.isfinite(arr).all():
            raise bad(f"{int((~np.isfinite(arr)).any(axis=1).sum())} rows hold NaN or infinite values")
        want = self.checksums.get(path.name)
        if want is not None and want != array_checksum(arr):
            raise bad("its contents changed after the build (the checksum in the manifest does not match)")

    def seal(self, index_dir: Path) -> None:
        """Record the checksums of the rows and of each array file this manifest names (at build
        time, just before the manifest is written), for check_array and read to verify on open."""
        self.checksums = {"items": items_checksum(self.items),
                          **{f: array_checksum(np.load(Path(index_dir) / f, mmap_mode="r")) for f in self.files()}}

    def files(self) -> list[str]:
        """Every array file this manifest names: the pixels, the embeddings, the re-ranking files, the maps."""
        return ([self.pixels_file] + ([self.embedder.file] if self.embedder else [])
                + (self.rerank.files() if self.rerank else []) + (self.maps.files() if self.maps else []))

    def write(self, index_dir: Path) -> None:
        atomic.write_json(Path(index_dir) / MANIFEST, self.to_json())

    def data_path(self, index_dir: Path) -> Path:
        root = Path(self.data_root)
        return root if root.is_absolute() else (Path(index_dir) / root).resolve()

    @property
    def labels(self) -> list[str]:
        return [it["label"] for it in self.items]
