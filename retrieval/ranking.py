"""One ranking seam: every way of ranking the library for query vectors is a `Ranker`.

`LookalikeIndex` opens an index and hands each method to the ranker of its back-end: exact over
the pixels or the embeddings (`ExactRanker`, with the L1 pruner for uint8 pixel-l1), Chroma's HNSW
(`HnswRanker`), or re-ranking (`retrieval.rerank.Reranker`). A ranker's `prepare` loads what its
first query would, so front ends can time loading apart from querying.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Generic, Mapping, Protocol, Sequence, TypeVar

import numpy as np

from .errors import IndexError_, Remedy
from .methods import Method
from .metrics import L1Pruner, PreparedMatrix, top_k_rows

if TYPE_CHECKING:   # chromadb loads with the store, on the first HNSW query
    from .records import ChromaRecord
    from .vectorstore import VectorStore

Ranked = list[list[tuple[int, float]]]   # per query: (row, score), best first
T = TypeVar("T")


class Ranker(Protocol):
    """Ranks the library rows for query vectors by one family of methods."""

    def prepare(self, method: Method) -> None:
        """Load what a first query of `method` needs; cheap once loaded."""

    def rank(self, vectors: np.ndarray, method: Method, k: int, exclude: Sequence[set[int]]) -> Ranked:
        """Top-k (row, score) per query vector, leaving out each query's `exclude` rows."""


class Lazy(Generic[T]):
    """A value loaded on first use, once, however many threads ask for it at the same time (the
    app's workers, a script's thread pool)."""

    def __init__(self, load: Callable[[], T], lock: threading.RLock | None = None) -> None:
        self._load = load
        self._lock = lock or threading.RLock()
        self._value: T | None = None

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._load()
        return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None


class ExactRanker:
    """Exact top-k over a matrix in memory (pixels or embeddings), any metric. With a pruner,
    pixel-l1 on uint8 queries reads few full rows (metrics.L1Pruner), with the same result."""

    def __init__(self, matrix: PreparedMatrix, pruner: Lazy[L1Pruner] | None = None) -> None:
        self.matrix = matrix
        self.pruner = pruner

    def _prunes(self, method: Method) -> bool:
        return self.pruner is not None and method.metric == "l1"

    def prepare(self, method: Method) -> None:
        if self.pruner is not None and self._prunes(method):
            self.pruner.get().pooled()   # the pooled copies, built once

    def rank(self, vectors: np.ndarray, method: Method, k: int, exclude: Sequence[set[int]]) -> Ranked:
        if self.pruner is not None and self._prunes(method) and np.asarray(vectors).dtype == np.uint8:
            pruner = self.pruner.get()
            return [self._pruned(pruner, v, k, skip) for v, skip in zip(vectors, exclude)]
        scores = self.matrix.scores(vectors, method.metric).reshape(len(vectors), -1)
        return top_k_rows(scores, k, method.higher_is_better, exclude)

    def _pruned(self, pruner: L1Pruner, vector: np.ndarray, k: int, skip: set[int]) -> list[tuple[int, float]]:
        mask = None
        if skip:
            mask = np.zeros(self.matrix.n, dtype=bool)
            mask[list(skip)] = True
        rows, scores = pruner.top_k(vector, k, mask)
        return [(int(i), float(s)) for i, s in zip(rows, scores)]


def chroma_hits(store: VectorStore, queries: np.ndarray, space: str, k: int, exclude: Sequence[set[int]],
                row_of: Mapping[str, int]) -> Ranked:
    """Top-k (row, score) per query from a Chroma collection: ids -> rows (`row_of`), each query's
    excluded rows skipped (asked for that many more), trimmed to k. Scores: cosine similarity
    (1 - distance) for "cosine", Chroma's squared distance for "l2"."""
    extra = max((len(s) for s in exclude), default=0)
    ids, dists = store.query(np.asarray(queries, dtype=np.float32), min(len(row_of), k + extra), space)
    out = []
    for q_ids, q_d, skip in zip(ids, dists, exclude):
        hits = []
        for rid, d in zip(q_ids, q_d):
            row = row_of.get(rid)
            if row is not None and row not in skip:
                hits.append((row, 1.0 - float(d) if space == "cosine" else float(d)))
        out.append(hits[:k])
    return out


class HnswRanker:
    """Approximate top-k through Chroma's HNSW collections (one per space)."""

    def __init__(self, store: Lazy[VectorStore], row_of: Mapping[str, int]) -> None:
        self.store = store
        self.row_of = row_of

    def prepare(self, method: Method) -> None:
        self.store.get()

    def rank(self, vectors: np.ndarray, method: Method, k: int, exclude: Sequence[set[int]]) -> Ranked:
        return chroma_hits(self.store.get(), vectors, method.metric, k, exclude, self.row_of)


def open_chroma(index_dir: Path, chroma: ChromaRecord | None, url: str | None, rows: int,
                prefix: str | None = None) -> VectorStore:
    """The index's Chroma collections (with `prefix`: its DBA collections), refused when a build
    stopped while updating them or when they hold another number of rows than the manifest."""
    from .vectorstore import VectorStore
    if chroma is None:
        raise IndexError_("this index has no Chroma collections; rebuild it with a model",
                          remedy=Remedy.BUILD_WITH_MODEL)
    if chroma.syncing:
        raise IndexError_(f"a build of {index_dir} stopped while it was updating the Chroma collections, so "
                          "they may not match this index; rerun the build to repair them (the exact methods "
                          "are unaffected)", remedy=Remedy.REPAIR_INDEX)
    path, url = chroma.location(index_dir, url)
    store = VectorStore.open(path=path, url=url, prefix=prefix or chroma.prefix)
    counts = store.count()
    if any(c != rows for c in counts.values()):
        raise IndexError_(f"the Chroma collections {prefix or chroma.prefix} hold {counts} vectors but the "
                          f"manifest lists {rows} images (an interrupted build?); rerun the build to repair them",
                          remedy=Remedy.REPAIR_INDEX)
    return store
