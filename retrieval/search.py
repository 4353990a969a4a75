"""Opening a built index and answering queries: pixel metrics, exact embedding metrics, HNSW, text.

Method names:
  pixel-{l1,l2,cosine,corr}          exact, over the resized pixels
  <emb>-{l1,l2,cosine,corr}          exact, over the stored embeddings (<emb> is "clip" or "effnet")
  <emb>-hnsw-{l2,cosine}             approximate, through Chroma's HNSW index
Nothing is rescanned or re-embedded per query: the library side is loaded once, here.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import IndexError_, LookalikeError, ModelError
from .images import ImageSource, load_image, resize_pixels
from .manifest import Manifest
from .metrics import METRICS, PreparedMatrix, get_metric, top_k

log = logging.getLogger(__name__)

MAX_K = 100
MAX_TEXT_CHARS = 300
HNSW_SPACES = ("l2", "cosine")


@dataclass(frozen=True)
class Hit:
    rank: int
    path: Path
    rel: str
    label: str
    score: float


@dataclass(frozen=True)
class Method:
    """A parsed method name: which vectors, which metric, exact or HNSW."""

    name: str
    source: str      # "pixel" or the embedder name
    metric: str
    hnsw: bool

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise LookalikeError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
    return int(k)


def content_sha256(source: ImageSource) -> str | None:
    """The content hash used to recognise a query that is itself in the library."""
    if isinstance(source, (bytes, bytearray)):
        return hashlib.sha256(source).hexdigest()
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        from .library import file_sha256
        return file_sha256(Path(source))
    return None


class LookalikeIndex:
    """A built index, opened once; thread-safe for concurrent read-only queries."""

    def __init__(self, index_dir: Path, manifest: Manifest, data_dir: Path | None = None,
                 chroma_url: str | None = None) -> None:
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self.data_dir = Path(data_dir) if data_dir else manifest.data_path(self.index_dir)
        self._chroma_url = chroma_url
        self.labels = np.array(manifest.labels)
        self.rels = [it["path"] for it in manifest.items]
        self.paths = [self.data_dir / r for r in self.rels]
        self._row_by_rel = {r: i for i, r in enumerate(self.rels)}
        self._rows_by_sha: dict[str, list[int]] = {}
        for i, it in enumerate(manifest.items):
            self._rows_by_sha.setdefault(it["sha256"], []).append(i)
        self.pixels = PreparedMatrix(self._array(manifest.pixels_file))
        emb = manifest.embedder
        self.embeddings = PreparedMatrix(self._array(emb["file"])) if emb else None
        self._embedder = None
        self._store = None
        # The model and the Chroma store load lazily, on first use; concurrent first queries from
        # any front end (the app's worker threads, a script's thread pool) must load them once.
        self._load_lock = threading.RLock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: Path, *, pixel_size: int | None = None, model: str | None = None,
             data_dir: Path | None = None, chroma_url: str | None = None) -> "LookalikeIndex":
        """Open INDEX, refusing one built with another pixel size or model than requested."""
        index_dir = Path(index_dir)
        manifest = Manifest.read(index_dir)
        if pixel_size is not None and pixel_size != manifest.pixel_size:
            raise IndexError_(
                f"the index at {index_dir} was built at {manifest.pixel_size}x{manifest.pixel_size} pixels, "
                f"not {pixel_size}x{pixel_size}; rebuild it with "
                f"python build_index.py index --index {index_dir} --pixel-size {pixel_size}"
            )
        index = cls(index_dir, manifest, data_dir, chroma_url)
        if model is not None:
            index.use_model(model)
        return index

    def _array(self, name: str) -> np.ndarray:
        path = self.index_dir / name
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise IndexError_(f"the index file {path} is missing or unreadable ({exc}); rebuild the index") from None
        if len(arr) != len(self.manifest.items):
            raise IndexError_(f"{path} holds {len(arr)} rows but the manifest lists "
                              f"{len(self.manifest.items)} images; rebuild the index")
        return np.asarray(arr)

    def use_model(self, spec: str) -> None:
        """Load the embedder named by `spec` and check that it is the one the index was built with."""
        built = self.manifest.embedder
        if not built:
            raise IndexError_(f"the index at {self.index_dir} has no embeddings (pixel-only); "
                              f"rebuild it with --model {spec}")
        from .embedders import load_embedder
        embedder = load_embedder(spec)
        if embedder.spec != built["spec"]:
            raise IndexError_(
                f"the index at {self.index_dir} was built with model {built['spec']}, "
                f"not {embedder.spec}; query it with that model or rebuild with --model {spec}"
            )
        self._embedder = embedder

    @property
    def embedder(self):
        """The index's own embedder, loaded on first use (pixel-only queries never load a model)."""
        if self._embedder is None:
            with self._load_lock:
                if self._embedder is None:
                    if not self.manifest.embedder:
                        raise IndexError_("this index has no embeddings; rebuild it with --model")
                    self.use_model(self.manifest.embedder["source"])
        return self._embedder

    @property
    def store(self):
        """The Chroma store, opened on first HNSW query and checked against the manifest."""
        if self._store is None:
            with self._load_lock:
                if self._store is None:
                    self._store = self._open_store()
        return self._store

    def loaded(self) -> set[str]:
        """What is in memory already: "model" and/or "store"."""
        return {name for name, obj in (("model", self._embedder), ("store", self._store)) if obj is not None}

    def prepare(self, method: str) -> tuple[set[str], float]:
        """Load what `method` needs (the model; Chroma for HNSW) before timing a query.

        Returns (what this call loaded, seconds it took), so front ends report loading apart from
        the query itself. Pixel methods need nothing and return at once."""
        m = self.parse_method(method)
        if m.source == "pixel":
            return set(), 0.0
        before = self.loaded()
        t0 = time.perf_counter()
        self.embedder
        if m.hnsw:
            self.store
        return self.loaded() - before, time.perf_counter() - t0

    def _open_store(self):
        from .vectorstore import VectorStore
        rec = self.manifest.chroma
        if not rec:
            raise IndexError_("this index has no Chroma collections; rebuild it with --model")
        if rec.get("syncing"):
            raise IndexError_(f"a build of {self.index_dir} stopped while it was updating the Chroma collections, "
                              "so they may not match this index; rerun build_index.py index to repair them "
                              "(the exact methods are unaffected)")
        url = self._chroma_url or rec.get("url")
        store = VectorStore.open(path=None if url else self.index_dir / rec["path"], url=url,
                                 prefix=rec["prefix"])
        counts = store.count()
        if any(c != len(self.rels) for c in counts.values()):
            raise IndexError_(f"Chroma holds {counts} vectors but the manifest lists {len(self.rels)} "
                              "images (an interrupted build?); rerun build_index.py index to repair it")
        return store

    # -- methods ---------------------------------------------------------------------------
    @property
    def methods(self) -> list[str]:
        names = [f"pixel-{m}" for m in METRICS]
        if self.manifest.embedder:
            e = self.manifest.embedder["name"]
            names += [f"{e}-{m}" for m in METRICS]
            if self.manifest.chroma:
                names += [f"{e}-hnsw-{s}" for s in HNSW_SPACES]
        return names

    @property
    def has_text(self) -> bool:
        return bool(self.manifest.embedder and self.manifest.embedder.get("has_text"))

    def parse_method(self, name: str) -> Method:
        if name not in self.methods:
            raise LookalikeError(f"unknown method {name!r} for this index; choose one of {', '.join(self.methods)}")
        source, _, rest = name.partition("-")
        hnsw = rest.startswith("hnsw-")
        metric = rest[5:] if hnsw else rest
        get_metric(metric)
        return Method(name, source, metric, hnsw)

    # -- queries ---------------------------------------------------------------------------
    def query_vectors(self, images: Sequence[Any], source: str) -> np.ndarray:
        """Turn decoded query images into the vectors a method compares: pixels or embeddings."""
        if source == "pixel":
            size = self.manifest.pixel_size
            return np.stack([resize_pixels(im, size).reshape(-1) for im in images])
        return self.embedder.encode_images(list(images))

    def rank(self, vectors: np.ndarray, method: Method, k: int,
             exclude: Sequence[set[int]] | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (row, score) per query vector; `exclude` holds rows to leave out per query."""
        exclude = exclude or [set() for _ in range(len(vectors))]
        if method.hnsw:
            return self._rank_hnsw(vectors, method, k, exclude)
        matrix = self.pixels if method.source == "pixel" else self.embeddings
        scores = matrix.scores(vectors, method.metric).reshape(len(vectors), -1)
        out = []
        for row_scores, skip in zip(scores, exclude):
            mask = None
            if skip:
                mask = np.zeros(len(row_scores), dtype=bool)
                mask[list(skip)] = True
            idx = top_k(row_scores, k, method.higher_is_better, mask)
            out.append([(int(i), float(row_scores[i])) for i in idx])
        return out

    def _rank_hnsw(self, vectors: np.ndarray, method: Method, k: int,
                   exclude: Sequence[set[int]]) -> list[list[tuple[int, float]]]:
        extra = max((len(s) for s in exclude), default=0)
        n = min(len(self.rels), k + extra)
        ids, dists = self.store.query(np.asarray(vectors, dtype=np.float32), n, method.metric)
        out = []
        for q_ids, q_d, skip in zip(ids, dists, exclude):
            hits = []
            for rid, d in zip(q_ids, q_d):
                row = self._row_by_rel.get(rid)
                if row is None or row in skip:
                    continue
                hits.append((row, 1.0 - float(d) if method.metric == "cosine" else float(d)))
            out.append(hits[:k])
        return out

    def self_rows(self, source: ImageSource) -> set[int]:
        sha = content_sha256(source)
        return set(self._rows_by_sha.get(sha, [])) if sha else set()

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        return [Hit(r + 1, self.paths[i], self.rels[i], str(self.labels[i]), s)
                for r, (i, s) in enumerate(ranked)]

    def search(self, query: ImageSource, method: str = "pixel-l1", k: int = 5,
               exclude_self: bool = True, name: str | None = None) -> tuple[list[Hit], float]:
        """Rank the library for one query image; returns (hits, seconds). The query itself is
        left out of its own results when its bytes are in the library. `name` is how error
        messages call the query (default: its path), e.g. an upload's own file name."""
        k = check_k(k)
        m = self.parse_method(method)
        t0 = time.perf_counter()
        image = load_image(query, name=name)
        vec = self.query_vectors([image], m.source)
        skip = [self.self_rows(query) if exclude_self else set()]
        hits = self._hits(self.rank(vec, m, k, skip)[0])
        return hits, time.perf_counter() - t0

    def search_text(self, text: str, method: str | None = None, k: int = 5) -> tuple[list[Hit], float]:
        """Text-to-image search, for embedders with a text tower."""
        k = check_k(k)
        text = (text or "").strip()
        if not text:
            raise LookalikeError("the text prompt is empty; describe what to look for, e.g. 'a red apple'")
        if len(text) > MAX_TEXT_CHARS:
            raise LookalikeError(f"the text prompt is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        if not self.has_text:
            name = (self.manifest.embedder or {}).get("spec", "pixels only")
            raise ModelError(f"this model ({name}) has no text encoder; text search needs a CLIP index "
                             "(build with --model ViT-B-32:laion2b_s34b_b79k or a local CLIP checkpoint)")
        m = self.parse_method(method or f"{self.manifest.embedder['name']}-cosine")
        if m.source == "pixel":
            raise LookalikeError("text search compares text and image embeddings; choose a CLIP method, not a pixel one")
        t0 = time.perf_counter()
        vec = self.embedder.encode_text([text])
        hits = self._hits(self.rank(vec, m, k)[0])
        return hits, time.perf_counter() - t0
