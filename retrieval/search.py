"""Opening a built index and answering queries: by image, by text, and composed.

`LookalikeIndex` opens an index once (its arrays checked against the manifest), offers the methods
of retrieval.methods that the index supports, and hands each ranking to the ranker of its back-end
(retrieval.ranking: exact, Chroma HNSW, re-ranked). Nothing is rescanned or re-embedded per query:
the library side is loaded once, here; the model and Chroma load on first use, or through `prepare`.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from .errors import IndexError_, LookalikeError, ModelError, Remedy
from .images import QUERY_SIDE, ImageSource, load_image, resize_pixels
from .manifest import Manifest
from .methods import PIXEL, Method, default_for, offered
from .metrics import L1Pruner, PreparedMatrix
from .ranking import ExactRanker, HnswRanker, Lazy, Ranked, Ranker, open_chroma
from .records import RerankRecord
from .rerank import Reranker, Settings

if TYPE_CHECKING:   # loading them imports torch or chromadb: only when first used
    from .compose import Term
    from .embedders import Embedder
    from .vectorstore import VectorStore

MAX_K = 100
MAX_TEXT_CHARS = 300


@dataclass(frozen=True)
class Hit:
    rank: int
    path: Path
    rel: str
    label: str
    score: float


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
                 chroma_url: str | None = None, precision: str | None = None) -> None:
        self.index_dir = Path(index_dir)
        self.precision = precision   # the query model's: None (fp32), "auto", "fp32", "bf16"
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
        self.embeddings = PreparedMatrix(self._array(emb.file)) if emb else None
        # The model, Chroma and the pruner load lazily, once: concurrent first queries from any
        # front end (the app's worker threads, a script's thread pool) wait for one load.
        self._load_lock = threading.RLock()
        self._embedder: Embedder | None = None
        self._warmed = False   # the embedder's first-call setup ran (prepare)
        size = manifest.pixel_size
        self._pruner = Lazy(lambda: L1Pruner(self.pixels, size), self._load_lock) if L1Pruner.wanted(size) else None
        self._store: Lazy[VectorStore] = Lazy(self._open_store, self._load_lock)
        self._exact = {src: ExactRanker(self.matrix(src), self._pruner if src == PIXEL else None)
                       for src in self.sources()}
        self._hnsw = HnswRanker(self._store, self._row_by_rel)
        self.reranker = self._reranker()
        # What the manifest offers never changes for an opened index: listed once, looked up per query.
        rerank = manifest.rerank
        self._offered = {str(m): m for m in offered(
            emb.name if emb else None, hnsw=manifest.chroma is not None,
            reranked=rerank.metrics() if rerank else {}, hnsw_reranked=bool(rerank and rerank.chroma_prefix),
            reciprocal=rerank.reciprocal() if rerank else frozenset())}

    def holds(self, rel: str) -> bool:
        """True when `rel` (a path relative to the library root, with forward slashes) is one of
        the indexed images: what a front end may read or serve from the library folder."""
        return rel in self._row_by_rel

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: Path, *, pixel_size: int | None = None, model: str | None = None,
             data_dir: Path | None = None, chroma_url: str | None = None,
             precision: str | None = None) -> "LookalikeIndex":
        """Open INDEX, refusing one built with another pixel size or model than requested.
        `precision` is the query model's (see retrieval.embedders.precision.query_precision)."""
        index_dir = Path(index_dir)
        manifest = Manifest.read(index_dir)
        built = manifest.pixel_size
        if pixel_size is not None and pixel_size != built:
            raise IndexError_(f"the index at {index_dir} was built at {built}x{built} pixels, not "
                              f"{pixel_size}x{pixel_size}; rebuild it at {pixel_size}x{pixel_size} pixels, "
                              f"or query it at {built}x{built}", remedy=Remedy.MATCH_PIXEL_SIZE)
        index = cls(index_dir, manifest, data_dir, chroma_url, precision)
        if model is not None:
            index.use_model(model)
        return index

    def _array(self, name: str) -> np.ndarray:
        path = self.index_dir / name
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise IndexError_(f"the index file {path} is missing or unreadable ({exc}); rebuild the index",
                              remedy=Remedy.REBUILD_INDEX) from None
        arr = np.asarray(arr)
        self.manifest.check_array(path, arr)   # shape, dtype, finiteness, build-time checksum
        return arr

    def matrix(self, source: str) -> PreparedMatrix:
        """The library's vectors of a source (one of `sources()`): the pixels or the embeddings."""
        matrix = self.pixels if source == PIXEL else self.embeddings
        if matrix is None or source not in self.sources():
            raise LookalikeError(f"this index has no {source} vectors; it holds {', '.join(self.sources())}")
        return matrix

    def _reranker(self) -> Reranker:
        """The re-ranked methods' ranker over this index's vectors (it loads their sides lazily)."""
        record = self.manifest.rerank or RerankRecord()
        plain = {source: self.matrix(source).data for source in self.sources()}
        chroma, prefix = self.manifest.chroma, record.chroma_prefix

        def dba_store() -> VectorStore:
            return open_chroma(self.index_dir, chroma, self._chroma_url, len(self.rels), prefix)

        return Reranker(record, plain, pixel_size=self.manifest.pixel_size, index_dir=self.index_dir,
                        check_dba=self.manifest.check_dba, dba_store=dba_store if chroma and prefix else None,
                        row_of=self._row_by_rel, check_stored=self.manifest.check_stored)

    def use_model(self, spec: str) -> None:
        """Load the embedder named by `spec` and check that it is the one the index was built with."""
        built = self.manifest.embedder
        if not built:
            raise IndexError_(f"the index at {self.index_dir} has no embeddings (pixel-only); rebuild it with a "
                              "model", remedy=Remedy.BUILD_WITH_MODEL)
        from .embedders import load_embedder
        from .embedders.precision import query_precision
        embedder = load_embedder(spec, precision=query_precision(self.precision, built.precision))
        embedder.release_other_precisions()
        if embedder.spec != built.spec:
            raise IndexError_(f"the index at {self.index_dir} was built with model {built.spec}, not "
                              f"{embedder.spec}; query it with that model, or rebuild it with this one",
                              remedy=Remedy.MATCH_MODEL)
        with self._load_lock:
            self._embedder, self._warmed = embedder, False

    @property
    def embedder(self) -> Embedder:
        """The index's own embedder, loaded on first use (pixel-only queries never load a model)."""
        if self._embedder is None:
            with self._load_lock:
                if self._embedder is None:
                    if not self.manifest.embedder:
                        raise IndexError_("this index has no embeddings; rebuild it with a model",
                                          remedy=Remedy.BUILD_WITH_MODEL)
                    self.use_model(self.manifest.embedder.source)
        assert self._embedder is not None   # use_model set it or raised
        return self._embedder

    @property
    def store(self) -> VectorStore:
        """The Chroma store, opened on first HNSW query and checked against the manifest."""
        return self._store.get()

    def _open_store(self) -> VectorStore:
        return open_chroma(self.index_dir, self.manifest.chroma, self._chroma_url, len(self.rels))

    @property
    def l1_pruner(self) -> L1Pruner | None:
        """pixel-l1's lower-bound pruning at large pixel sizes (None below PRUNE_MIN_SIDE)."""
        return self._pruner.get() if self._pruner is not None else None

    def loaded(self) -> set[str]:
        """What is in memory already: "model" and/or "store"."""
        return {name for name, on in (("model", self._embedder is not None), ("store", self._store.loaded)) if on}

    def prepare(self, method: str | Method) -> tuple[set[str], float]:
        """Load everything a first query of `method` would: the model and its one-time first-call
        setup, Chroma, the re-ranking side and its DBA collections, pixel-l1's pooled copies.

        Returns (what this call loaded of "model" / "store", seconds it took), so front ends report
        loading apart from the query itself. Cheap once loaded: front ends call it before every query."""
        m = self.parse_method(method)
        before = self.loaded()
        t0 = time.perf_counter()
        if not m.pixel:
            self._warm_model()
        self._ranker(m).prepare(m)
        return self.loaded() - before, time.perf_counter() - t0

    def _warm_model(self) -> None:
        """Load the model and run its first-call setup (one call on a test card), once per index."""
        embedder = self.embedder
        if not self._warmed:
            with self._load_lock:
                if not self._warmed:
                    embedder.warm()
                    self._warmed = True

    # -- methods ---------------------------------------------------------------------------
    @property
    def offered(self) -> list[Method]:
        """Every method this index offers, in the canonical order (retrieval.methods.offered)."""
        return list(self._offered.values())

    @property
    def methods(self) -> list[str]:
        """The names of the methods this index offers (what users type and pick)."""
        return list(self._offered)

    @property
    def default_method(self) -> Method:
        """The deep default (the embeddings' cosine), or pixel L1 for a pixel-only index."""
        return default_for(self.manifest.embedder.name if self.manifest.embedder else None)

    @property
    def best_method(self) -> Method:
        """The offered method with the best measured mAP in the index's evaluation.json, else the default."""
        from .evaluation_file import best_method
        return best_method(self.index_dir, self.offered) or self.default_method

    def sources(self) -> list[str]:
        """The vector sources: "pixel", and the embedder's name when the index has embeddings."""
        return [PIXEL] + ([self.manifest.embedder.name] if self.manifest.embedder else [])

    def rerank_settings(self, source: str) -> Settings:
        """k, alpha and the space of a source's re-ranked methods, as recorded in the manifest."""
        return self.reranker.settings(source)

    @property
    def has_text(self) -> bool:
        return bool(self.manifest.embedder and self.manifest.embedder.has_text)

    def parse_method(self, name: str | Method) -> Method:
        """The method `name` stands for, when this index offers it (else a message listing those it does)."""
        method = self._offered.get(str(name)) if isinstance(name, (str, Method)) else None
        if method is None:
            raise LookalikeError(f"unknown method {str(name)!r} for this index; choose one of {', '.join(self.methods)}")
        return method

    # -- ranking ---------------------------------------------------------------------------
    def _ranker(self, method: Method) -> Ranker:
        if method.reranked:
            return self.reranker
        return self._hnsw if method.hnsw else self._exact[method.source]

    def query_vectors(self, images: Sequence[Image.Image], source: str) -> np.ndarray:
        """Turn decoded query images into the vectors a method compares: pixels or embeddings."""
        if source == PIXEL:
            size = self.manifest.pixel_size
            return np.stack([resize_pixels(im, size).reshape(-1) for im in images])
        return self.embedder.encode_images(list(images))

    def rank(self, vectors: np.ndarray, method: Method, k: int,
             exclude: Sequence[set[int]] | None = None) -> Ranked:
        """Top-k (row, score) per query vector; `exclude` holds rows to leave out per query."""
        exclude = exclude or [set() for _ in range(len(vectors))]
        return self._ranker(method).rank(vectors, method, k, exclude)

    def self_rows(self, source: ImageSource) -> set[int]:
        """The library rows holding the same bytes as `source` (empty when it is not in the library)."""
        sha = content_sha256(source)
        return set(self._rows_by_sha.get(sha, [])) if sha else set()

    def hits(self, ranked: Sequence[tuple[int, float]]) -> list[Hit]:
        """One query's ranked (row, score) pairs as hits: rank from 1, path, class, score."""
        return [Hit(r + 1, self.paths[i], self.rels[i], str(self.labels[i]), s)
                for r, (i, s) in enumerate(ranked)]

    # -- queries ---------------------------------------------------------------------------
    def search(self, query: ImageSource, method: str | Method = "pixel-l1", k: int = 5,
               exclude_self: bool = True, name: str | None = None) -> tuple[list[Hit], float]:
        """Rank the library for one query image; returns (hits, seconds). The query itself is
        left out of its own results when its bytes are in the library. `name` is how error
        messages call the query (default: its path), e.g. an upload's own file name."""
        k = check_k(k)
        m = self.parse_method(method)
        t0 = time.perf_counter()
        image = load_image(query, name=name, reduce_to=QUERY_SIDE)   # no bigger than any method needs
        vec = self.query_vectors([image], m.source)
        skip = [self.self_rows(query) if exclude_self else set()]
        hits = self.hits(self.rank(vec, m, k, skip)[0])
        return hits, time.perf_counter() - t0

    def search_text(self, text: str, method: str | Method | None = None, k: int = 5) -> tuple[list[Hit], float]:
        """Text-to-image search, for embedders with a text tower."""
        k = check_k(k)
        text = (text or "").strip()
        if not text:
            raise LookalikeError("the text prompt is empty; describe what to look for, e.g. 'a red apple'")
        if len(text) > MAX_TEXT_CHARS:
            raise LookalikeError(f"the text prompt is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        if not self.has_text:
            name = self.manifest.embedder.spec if self.manifest.embedder else "pixels only"
            raise ModelError(f"this model ({name}) has no text encoder; text search needs a CLIP index: build "
                             "the index with a CLIP model", remedy=Remedy.BUILD_WITH_CLIP)
        m = self.parse_method(method or self.default_method)
        if m.pixel:
            raise LookalikeError("text search compares text and image embeddings; choose a CLIP method, not a pixel one")
        t0 = time.perf_counter()
        vec = self.embedder.encode_text([text])
        hits = self.hits(self.rank(vec, m, k)[0])
        return hits, time.perf_counter() - t0

    def search_composed(self, terms: Sequence[Term], method: str | Method | None = None, k: int = 5,
                        exclude_self: bool = True) -> tuple[list[Hit], float]:
        """Rank for a composed query (retrieval.compose.Term: weighted text and image terms, minus
        terms negative): one model call for the texts, one for the images, then one ranking.
        Images that are themselves in the library are left out of the results (positive terms)."""
        from .compose import combine
        k = check_k(k)
        m = self._composed_method(terms, method)
        t0 = time.perf_counter()
        texts = [(t.weight, t.text) for t in terms if t.text is not None]
        images = [(t.weight, t.image, t.name) for t in terms if t.text is None and t.image is not None]
        parts = []
        if texts:
            parts.append(self.embedder.encode_text([text for _, text in texts]))
        if images:
            parts.append(self.embedder.encode_images([load_image(image, name=name or None, reduce_to=QUERY_SIDE)
                                                      for _, image, name in images]))
        vec = combine(np.concatenate(parts), [w for w, _ in texts] + [w for w, _, _ in images])
        skip: set[int] = set()
        if exclude_self:
            for w, image, _ in images:
                if w > 0:
                    skip |= self.self_rows(image)
        hits = self.hits(self.rank(vec, m, k, [skip])[0])
        return hits, time.perf_counter() - t0

    def _composed_method(self, terms: Sequence[Term], method: str | Method | None) -> Method:
        """The method a composed query ranks by, after refusing terms this index cannot answer."""
        from .compose import check_terms
        check_terms(terms)
        if any(t.text is None and t.image is None for t in terms):
            raise LookalikeError("each term of a composed query is a text or an image")
        if not self.manifest.embedder:
            raise IndexError_("composed queries combine embeddings; this index holds pixels only: rebuild it "
                              "with a model (a CLIP model for text terms)", remedy=Remedy.BUILD_WITH_MODEL)
        texts = [t for t in terms if t.is_text]
        if texts and not self.has_text:
            raise ModelError(f"this model ({self.manifest.embedder.spec}) has no text encoder, so a composed "
                             "query cannot use text terms; use image terms only, or build the index with a "
                             "CLIP model", remedy=Remedy.BUILD_WITH_CLIP)
        for text in (t.text for t in texts if t.text is not None):
            if not text.strip() or len(text) > MAX_TEXT_CHARS:
                raise LookalikeError(f"each text term must be 1 to {MAX_TEXT_CHARS} characters, got {len(text)}")
        m = self.parse_method(method or self.default_method)
        if m.pixel:
            raise LookalikeError("composed queries combine embeddings; choose an embedding method, not a pixel one")
        return m
