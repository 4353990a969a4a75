"""Opening a built index and answering queries: pixel metrics, exact embedding metrics, HNSW, text.

Method names:
  pixel-{l1,l2,cosine,corr}          exact, over the resized pixels
  <emb>-{l1,l2,cosine,corr}          exact, over the stored embeddings (<emb> is "clip" or "effnet")
  <emb>-hnsw-{l2,cosine}             approximate, through Chroma's HNSW index
  <src>-cosine+{qe,dba,dba+qe}       re-ranked (retrieval.rerank): alpha-query expansion and/or
                                     database-side augmentation, exact; <emb>-hnsw-cosine+dba+qe via Chroma
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
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import IndexError_, LookalikeError, ModelError
from .images import QUERY_SIDE, ImageSource, load_image, resize_pixels
from .manifest import Manifest
from .metrics import METRICS, L1Pruner, PreparedMatrix, get_metric, top_k_rows

if TYPE_CHECKING:   # loading them imports torch or chromadb: only when first used
    from .embedders import Embedder
    from .rerank import Reranker
    from .vectorstore import VectorStore

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
    dba: bool = False    # re-ranked: library vectors with database-side augmentation
    qe: bool = False     # re-ranked: alpha-query expansion

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    @property
    def reranked(self) -> bool:
        return self.dba or self.qe


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
        self.embeddings = PreparedMatrix(self._array(emb["file"])) if emb else None
        self._embedder: Embedder | None = None
        self._store: VectorStore | None = None
        self._reranker: Reranker | None = None
        # The model and the Chroma store load lazily, on first use; concurrent first queries from
        # any front end (the app's worker threads, a script's thread pool) must load them once.
        self._load_lock = threading.RLock()
        self._warm: threading.Thread | None = None   # warm_up()'s background loader
        self._l1_pruner: L1Pruner | None = None
        self._warm_times: dict[str, float] = {}       # started / ready (perf_counter), seconds
        self._warm_error: str | None = None

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
        if pixel_size is not None and pixel_size != manifest.pixel_size:
            raise IndexError_(
                f"the index at {index_dir} was built at {manifest.pixel_size}x{manifest.pixel_size} pixels, "
                f"not {pixel_size}x{pixel_size}; rebuild it with "
                f"python build_index.py index --index {index_dir} --pixel-size {pixel_size}"
            )
        index = cls(index_dir, manifest, data_dir, chroma_url, precision)
        if model is not None:
            index.use_model(model)
        return index

    def _array(self, name: str) -> np.ndarray:
        path = self.index_dir / name
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise IndexError_(f"the index file {path} is missing or unreadable ({exc}); rebuild the index") from None
        arr = np.asarray(arr)
        self.manifest.check_array(path, arr)   # shape, dtype, finiteness, build-time checksum
        return arr

    def use_model(self, spec: str) -> None:
        """Load the embedder named by `spec` and check that it is the one the index was built with."""
        built = self.manifest.embedder
        if not built:
            raise IndexError_(f"the index at {self.index_dir} has no embeddings (pixel-only); "
                              f"rebuild it with --model {spec}")
        from .embedders import load_embedder
        from .embedders.precision import query_precision
        embedder = load_embedder(spec, precision=query_precision(self.precision, built.get("precision")))
        embedder.release_other_precisions()
        if embedder.spec != built["spec"]:
            raise IndexError_(
                f"the index at {self.index_dir} was built with model {built['spec']}, "
                f"not {embedder.spec}; query it with that model or rebuild with --model {spec}"
            )
        self._embedder = embedder

    @property
    def embedder(self) -> Embedder:
        """The index's own embedder, loaded on first use (pixel-only queries never load a model)."""
        if self._embedder is None:
            with self._load_lock:
                if self._embedder is None:
                    if not self.manifest.embedder:
                        raise IndexError_("this index has no embeddings; rebuild it with --model")
                    self.use_model(self.manifest.embedder["source"])
        assert self._embedder is not None   # use_model set it or raised
        return self._embedder

    @property
    def store(self) -> VectorStore:
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
        if m.source == "pixel" and not m.reranked:
            return set(), 0.0
        before = self.loaded()
        t0 = time.perf_counter()
        # Reading a lazy property loads it.
        if m.source != "pixel":
            _ = self.embedder
        if m.hnsw and not m.reranked:
            _ = self.store
        if m.reranked:   # the library side of re-ranking (and its Chroma collections), once
            self.reranker.side(m.source)
            if m.hnsw:
                _ = self.reranker.store
        return self.loaded() - before, time.perf_counter() - t0

    # -- warming up (the app) ---------------------------------------------------------------
    def warm_methods(self) -> list[str]:
        """What a front end warms: the default deep method, and an HNSW one when Chroma is there."""
        emb = self.manifest.embedder
        if not emb:
            return []
        return [f"{emb['name']}-cosine"] + ([f"{emb['name']}-hnsw-cosine"] if self.manifest.chroma else [])

    def warm_up(self, methods: Sequence[str] | None = None) -> threading.Thread | None:
        """Start loading what `methods` need (default: warm_methods()) in a background thread and
        return at once; `loading`, `ready` and `wait_ready` tell the state. Pixel search never
        waits for it. A failed load is logged and kept in `warm_error`; the next query that needs
        the model then tries again and reports the error itself."""
        methods = list(self.warm_methods() if methods is None else methods)
        if self._warm is not None or not (methods or L1Pruner.wanted(self.manifest.pixel_size)):
            return self._warm
        self._warm_times = {"started": time.perf_counter()}

        def load() -> None:
            try:
                if self.l1_pruner is not None:   # the pooled copies for pixel-l1 (well under a second)
                    self.l1_pruner.pooled()
                for m in methods:
                    self.prepare(m)
                if self._embedder is not None:
                    self._embedder.warm()         # first-call setup, outside any user's query
            except Exception as exc:   # reported to the UI and the log; never kills the app
                self._warm_error = f"{type(exc).__name__}: {exc}"
                log.warning("warming up failed (the first deep query will retry): %s", exc)
            finally:
                self._warm_times["seconds"] = time.perf_counter() - self._warm_times["started"]

        self._warm = threading.Thread(target=load, name="lookalike-warm-up", daemon=True)
        self._warm.start()
        return self._warm

    @property
    def loading(self) -> bool:
        """True while warm_up()'s thread is still loading."""
        return self._warm is not None and self._warm.is_alive()

    @property
    def ready(self) -> bool:
        """Deep queries will not wait for a load: warm-up finished (or never started)."""
        return not self.loading

    def loading_seconds(self) -> float | None:
        """Seconds the warm-up has run so far (while loading) or took (when done); None: not started."""
        if "seconds" in self._warm_times:
            return self._warm_times["seconds"]
        return time.perf_counter() - self._warm_times["started"] if self._warm_times else None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s for the warm-up; True when it is done."""
        if self._warm is not None:
            self._warm.join(timeout)
        return self.ready

    def _open_store(self) -> VectorStore:
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
        return names + self._reranked_methods()

    # -- re-ranked methods (retrieval.rerank) --------------------------------------------------
    @property
    def reranker(self) -> Reranker:
        """The re-ranked methods' state (library sides, DBA collections), created on first use."""
        if self._reranker is None:
            with self._load_lock:
                if self._reranker is None:
                    from .rerank import Reranker
                    self._reranker = Reranker(self)
        return self._reranker

    def _reranked_methods(self) -> list[str]:
        from .rerank import method_names
        rerank = self.manifest.rerank or {}
        record = rerank.get("sources") or {}
        names = []
        for source in self.sources():
            if source in record:
                names += method_names(source, record[source].get("metric", "cosine"))
        emb = self.manifest.embedder
        if emb and emb["name"] in record and self.manifest.chroma and rerank.get("chroma_prefix"):
            names += method_names(emb["name"], record[emb["name"]].get("metric", "cosine"), hnsw=True)
        return names

    def sources(self) -> list[str]:
        """The vector sources: "pixel", and the embedder's name when the index has embeddings."""
        return ["pixel"] + ([self.manifest.embedder["name"]] if self.manifest.embedder else [])

    def rerank_settings(self, source: str):
        """k, alpha and the space of a source's re-ranked methods, as recorded in the manifest."""
        return self.reranker.settings(source)

    @property
    def has_text(self) -> bool:
        return bool(self.manifest.embedder and self.manifest.embedder.get("has_text"))

    def parse_method(self, name: str) -> Method:
        if name not in self.methods:
            raise LookalikeError(f"unknown method {name!r} for this index; choose one of {', '.join(self.methods)}")
        from .rerank import split_name
        base, dba, qe = split_name(name)
        source, _, rest = base.partition("-")
        hnsw = rest.startswith("hnsw-")
        metric = rest[5:] if hnsw else rest
        get_metric(metric)
        return Method(name, source, metric, hnsw, dba, qe)

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
        if method.reranked:
            return self.reranker.rank(vectors, method, k, exclude)
        if method.hnsw:
            return self._rank_hnsw(vectors, method, k, exclude)
        if method.source == "pixel" and method.metric == "l1" and self.l1_pruner is not None \
                and np.asarray(vectors).dtype == np.uint8:   # exact, reads few full rows (metrics.L1Pruner)
            return [self._rank_pruned(v, k, skip) for v, skip in zip(vectors, exclude)]
        matrix = self.pixels if method.source == "pixel" else self.embeddings
        assert matrix is not None, "parse_method offers embedding methods only when the index has embeddings"
        scores = matrix.scores(vectors, method.metric).reshape(len(vectors), -1)
        return top_k_rows(scores, k, method.higher_is_better, exclude)

    @property
    def l1_pruner(self) -> L1Pruner | None:
        """pixel-l1's lower-bound pruning at large pixel sizes (None below PRUNE_MIN_SIDE)."""
        if self._l1_pruner is None and L1Pruner.wanted(self.manifest.pixel_size):
            with self._load_lock:
                if self._l1_pruner is None:
                    self._l1_pruner = L1Pruner(self.pixels, self.manifest.pixel_size)
        return self._l1_pruner

    def _rank_pruned(self, vector: np.ndarray, k: int, skip: set[int]) -> list[tuple[int, float]]:
        mask = None
        if skip:
            mask = np.zeros(len(self.rels), dtype=bool)
            mask[list(skip)] = True
        pruner = self.l1_pruner
        assert pruner is not None, "rank() prunes only when the pruner exists"
        rows, scores = pruner.top_k(vector, k, mask)
        return [(int(i), float(s)) for i, s in zip(rows, scores)]

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
        image = load_image(query, name=name, reduce_to=QUERY_SIDE)   # no bigger than any method needs
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
        emb = self.manifest.embedder
        assert emb is not None   # has_text implies an embedder
        m = self.parse_method(method or f"{emb['name']}-cosine")
        if m.source == "pixel":
            raise LookalikeError("text search compares text and image embeddings; choose a CLIP method, not a pixel one")
        t0 = time.perf_counter()
        vec = self.embedder.encode_text([text])
        hits = self._hits(self.rank(vec, m, k)[0])
        return hits, time.perf_counter() - t0

    def search_composed(self, terms: Sequence[Any], method: str | None = None, k: int = 5,
                        exclude_self: bool = True) -> tuple[list[Hit], float]:
        """Rank for a composed query (retrieval.compose.Term: weighted text and image terms, minus
        terms negative): one model call for the texts, one for the images, then one ranking.
        Images that are themselves in the library are left out of the results (positive terms)."""
        from .compose import check_terms, combine
        k = check_k(k)
        check_terms(terms)
        if not self.manifest.embedder:
            raise IndexError_("composed queries combine embeddings; this index holds pixels only: rebuild it "
                              "with --model (CLIP for text terms)")
        texts = [t for t in terms if t.is_text]
        if texts and not self.has_text:
            raise ModelError(f"this model ({self.manifest.embedder['spec']}) has no text encoder, so a composed "
                             "query cannot use text terms; use image terms only, or build a CLIP index "
                             "(--model ViT-B-32:laion2b_s34b_b79k or a local CLIP checkpoint)")
        for t in texts:
            if not t.text.strip() or len(t.text) > MAX_TEXT_CHARS:
                raise LookalikeError(f"each text term must be 1 to {MAX_TEXT_CHARS} characters, got {len(t.text)}")
        m = self.parse_method(method or f"{self.manifest.embedder['name']}-cosine")
        if m.source == "pixel":
            raise LookalikeError("composed queries combine embeddings; choose an embedding method, not a pixel one")
        t0 = time.perf_counter()
        images = [t for t in terms if not t.is_text]
        decoded = [load_image(t.image, name=t.name or None, reduce_to=QUERY_SIDE) for t in images]
        parts = []
        if texts:
            parts.append(self.embedder.encode_text([t.text for t in texts]))
        if images:
            parts.append(self.embedder.encode_images(decoded))
        vec = combine(np.concatenate(parts), [t.weight for t in texts] + [t.weight for t in images])
        skip: set[int] = set()
        if exclude_self:
            for t in images:
                if t.weight > 0:
                    skip |= self.self_rows(t.image)
        hits = self._hits(self.rank(vec, m, k, [skip])[0])
        return hits, time.perf_counter() - t0
