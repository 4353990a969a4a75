"""Query time: the re-ranked methods of one opened index (a `retrieval.ranking.Ranker`).

The library side of a source (its re-ranking space rows, through the stored library-side transform,
and the stored DBA rows) is loaded once, on first use, and its k-reciprocal graph on the first +kr
query; each query is then moved into the same space, expanded (alpha-QE) and ranked, exactly or, for
<emb>-hnsw-cosine+dba+qe, through the Chroma DBA collections.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from ..errors import IndexError_, Remedy
from ..methods import Method
from ..metrics import top_k_rows
from ..ranking import Lazy, Ranked, chroma_hits
from .maths import LibrarySide, Settings, expand, rerank_scores, settings_for, space_rows
from .reciprocal import Graph, Inverted
from .transform import Transform

if TYPE_CHECKING:
    from ..records import RerankRecord
    from ..vectorstore import VectorStore

CheckDba = Callable[[Path, np.ndarray, int], None]   # (file, rows, width): raises when they do not fit
CheckStored = Callable[[Path, np.ndarray, str], None]   # (file, array, what): checksum; raises when changed


def _no_check(path: Path, arr: np.ndarray, what: str) -> None:
    return None


class Reranker:
    """Re-ranked ranking over one index's vectors. Thread-safe for concurrent queries.

    `record`: the manifest's re-ranking record; `plain`: each source's library vectors as stored
    (pixels uint8, embeddings); `check_dba`: refuses a DBA array that does not fit the index
    (Manifest.check_dba); `check_stored`: refuses a transform or graph file changed since the build
    (Manifest.check_stored); `dba_store`: opens the Chroma DBA collections (None: there are none);
    `row_of`: Chroma id (the image's path) -> row."""

    def __init__(self, record: RerankRecord, plain: Mapping[str, np.ndarray], *, pixel_size: int,
                 index_dir: Path, check_dba: CheckDba, dba_store: Callable[[], VectorStore] | None = None,
                 row_of: Mapping[str, int] | None = None, check_stored: CheckStored | None = None) -> None:
        self.record = record
        self.plain = plain
        self.pixel_size = pixel_size
        self.index_dir = Path(index_dir)
        self.check_dba = check_dba
        self.check_stored = check_stored or _no_check
        self._graphs: dict[str, tuple[Graph, Inverted]] = {}
        self.row_of = row_of or {}
        self._lock = threading.RLock()
        self._sides: dict[str, LibrarySide] = {}
        self._store = Lazy(dba_store or self._no_store, self._lock)

    def offers(self, source: str) -> bool:
        return source in self.record.sources

    def settings(self, source: str) -> Settings:
        if not self.offers(source):
            return settings_for(source)
        return self.record.sources[source].settings

    def _mirror_size(self, source: str) -> int | None:
        """How to mirror a source's rows for flip-averaging: pixels only."""
        return self.pixel_size if source == "pixel" else None

    def side(self, source: str) -> LibrarySide:
        """The space rows (from the plain vectors) and the stored DBA rows of a source."""
        with self._lock:
            if source not in self._sides:
                self._sides[source] = self._load_side(source)
            return self._sides[source]

    def _load_side(self, source: str) -> LibrarySide:
        plain = self.plain[source]
        rec = self.record.sources[source]
        transform = Transform.from_array(self._stored(rec.space_file, source, "transform")) if rec.space_file \
            else None
        if transform is not None and (transform.mean.shape != (plain.shape[1],) or
                                      (transform.basis is not None and transform.basis.shape[1] != plain.shape[1])):
            raise self._rebuild(f"the re-ranking transform of {source} does not fit its {plain.shape[1]}-value vectors")
        path = self.index_dir / rec.dba_file
        if not path.is_file():
            raise IndexError_(f"the re-ranking (DBA) file of {source} in {self.index_dir} is missing; "
                              "rerun the build to repair the index", remedy=Remedy.REPAIR_INDEX)
        try:
            dba_rows = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise IndexError_(f"the re-ranking (DBA) file {path} is unreadable ({exc}); rerun the build to "
                              "repair the index", remedy=Remedy.REPAIR_INDEX) from None
        self.check_dba(path, dba_rows, transform.width if transform is not None else plain.shape[1])
        return LibrarySide(space_rows(plain, self.settings(source), self._mirror_size(source), transform),
                           np.asarray(dba_rows, dtype=np.float32), transform)

    def _rebuild(self, what: str) -> IndexError_:
        return IndexError_(f"{what} in {self.index_dir}; rebuild the index", remedy=Remedy.REBUILD_INDEX)

    def _stored(self, name: str, source: str, what: str) -> np.ndarray:
        """A re-ranking file of the index, checked against the manifest's checksum."""
        path = self.index_dir / name
        try:
            arr = np.load(path)
        except (OSError, ValueError) as exc:
            raise self._rebuild(f"the re-ranking {what} file of {source} ({name}) is missing or unreadable "
                                f"({type(exc).__name__})") from None
        self.check_stored(path, arr, f"re-ranking {what}")
        return arr

    def graph(self, source: str) -> tuple[Graph, Inverted]:
        """The k-reciprocal graph of a source and its inverted index, loaded on first use."""
        with self._lock:
            if source not in self._graphs:
                files = self.record.sources[source].graph_files
                if not files:
                    raise self._rebuild(f"{source} has no k-reciprocal graph")
                ints, floats = (self._stored(f, source, "graph") for f in files)
                try:
                    g = Graph.from_arrays(ints, floats)
                except ValueError as exc:
                    raise self._rebuild(f"the k-reciprocal graph of {source} is damaged ({exc})") from None
                if g.rows != len(self.plain[source]):
                    raise self._rebuild(f"the k-reciprocal graph of {source} holds {g.rows} rows, not "
                                        f"{len(self.plain[source])}")
                self._graphs[source] = (g, Inverted.of(g))
            return self._graphs[source]

    def _no_store(self) -> VectorStore:
        raise IndexError_("this index has no Chroma DBA collections; rebuild it with a model",
                          remedy=Remedy.BUILD_WITH_MODEL)

    @property
    def store(self) -> VectorStore:
        """The Chroma DBA collections, opened on first use."""
        return self._store.get()

    def prepare(self, method: Method) -> None:
        self.side(method.source)
        if method.kr:
            self.graph(method.source)
        if method.hnsw:
            self._store.get()

    def rank(self, vectors: np.ndarray, method: Method, k: int, exclude: Sequence[set[int]]) -> Ranked:
        """Top-k (row, cosine in the re-ranking space) per raw query vector (pixels or embedding)."""
        s = self.settings(method.source)
        side = self.side(method.source)
        q = space_rows(vectors, s, self._mirror_size(method.source), side.transform)
        if method.hnsw:
            return self._rank_hnsw(q, side, s, k, exclude)
        inverted = None
        if method.kr:
            graph, inverted = self.graph(method.source)
            side = LibrarySide(side.base, side.dba, side.transform, graph)
        return top_k_rows(rerank_scores(q, side, s, method.dba, method.qe, exclude, method.kr, inverted),
                          k, True, exclude)

    def _rank_hnsw(self, q: np.ndarray, side: LibrarySide, s: Settings, k: int,
                   exclude: Sequence[set[int]]) -> Ranked:
        """DBA+QE through Chroma: the DBA collection's top s.k neighbours, the expanded query from
        their DBA rows (held in memory), then the DBA collection asked again."""
        first = chroma_hits(self.store, q, "cosine", s.k, exclude, self.row_of)
        idx = np.zeros((len(q), s.k), dtype=np.int64)
        sims = np.full((len(q), s.k), -np.inf, dtype=np.float32)
        for i, hits in enumerate(first):
            for j, (row, sim) in enumerate(hits):
                idx[i, j], sims[i, j] = row, sim
        assert side.dba is not None   # side() always loads the stored DBA rows
        expanded = expand(q, side.dba, s.k, s.alpha, neighbours=(idx, sims))
        return chroma_hits(self.store, expanded, "cosine", k, exclude, self.row_of)
