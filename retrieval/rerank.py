"""Re-ranking beyond nearest neighbours: alpha-query expansion (alpha-QE) and database-side augmentation (DBA).

Both are standard tools of image retrieval on top of a fixed set of vectors (Radenovic et al., "Fine-tuning
CNN image retrieval with no human annotation", 2018), and both work on any vector source: the resized
pixels or the embeddings.

* Every vector first goes into the *re-ranking space* of its source: float32, optionally flip-averaged
  (pixels: the thumbnail averaged with its mirror image, library and query alike), optionally
  square-rooted (power normalisation, signed so that CLIP's negative components keep their sign),
  centred for the correlation metric, and scaled to unit length, so a dot product is the cosine.
* DBA (index time): each library vector is replaced by the weighted sum of itself and its top-k
  neighbours in the library, weights sim^alpha, then re-normalised. It depends on the whole library, so it
  is recomputed from the current library at every build: images added or deleted incrementally change
  their neighbours' vectors too, and a stale DBA matrix would be wrong.
* alpha-QE (query time): the query plus its top-k neighbours, weighted by sim^alpha, searched again.

Which refinements a source gets, and k / alpha, come from the measured k-fold table (docs/evaluation.md,
`python -m retrieval evaluate --protocol kfold --tune`); SETTINGS holds the choice, the manifest records it.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from . import atomic
from .errors import IndexError_
from .metrics import top_k_rows
from .vectorstore import row_digest

log = logging.getLogger(__name__)

KS = (3, 5, 8, 12)              # the k grid of the tuning table
ALPHAS = (0.0, 0.5, 1.0, 3.0)   # the alpha grid
SUFFIXES = ("+qe", "+dba", "+dba+qe")
HNSW_SUFFIXES = ("+dba+qe",)    # through Chroma: a DBA collection, and QE by querying it again
CHUNK_ROWS = 1024               # library rows per matrix product when computing DBA
DBA_PREFIX_SUFFIX = "-dba"      # the Chroma collections of DBA vectors: <prefix>-dba-{l2,cosine}
MODES = ("auto", "on", "off")   # --rerank: within the budget below, always, never
# `--rerank auto` re-ranks a source only while its float32 re-ranking rows fit this budget: the build
# writes them as the DBA file and the app holds them twice (plain and DBA rows). 512 MiB covers about
# 43,000 images of 32x32 pixels, 105,000 effnet (1280-d) or 262,000 CLIP (512-d) vectors; the pixels
# of the seed's 448x448 exceed it from 223 images on (DBA of the sample library there would be a 958 MB
# file), and DBA's O(N^2 D) time grows with it (minutes at the bound on 2 cores).
DBA_AUTO_MAX_BYTES = 512 << 20


@dataclass(frozen=True)
class Settings:
    """How one vector source is re-ranked. `metric` is the similarity QE and DBA use (cosine for
    embeddings; pixels may prefer correlation); `flip` and `sqrt` are the cheap refinements."""

    metric: str = "cosine"
    k: int = 8
    alpha: float = 0.5
    sqrt: bool = False
    flip: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Settings":
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


# Chosen from the k-fold table on the sample library (docs/evaluation.md; reproduce with
# `python -m retrieval evaluate --protocol kfold --tune`). "embedding" is every embedder (effnet,
# clip), "pixel" the resized pixels. Flip-averaging is offered for pixels only, where it is a free
# mirror of the stored thumbnail and adds about +0.01 mAP (0.203 -> 0.215 for DBA+QE); on effnet
# vectors a probe measured DBA+QE at 0.668 without and 0.669 with flip + sqrt, inside the noise, so
# embeddings skip both (flip would double the embedding work at index and query time). sqrt lowers
# both sources slightly (effnet 0.668 -> 0.667, pixels 0.215 -> 0.208), so it is off.
SETTINGS = {
    "embedding": Settings(metric="cosine", k=8, alpha=1.0, sqrt=False, flip=False),
    "pixel": Settings(metric="cosine", k=5, alpha=1.0, sqrt=False, flip=True),   # alpha: flat for pixels
}


def settings_for(source: str) -> Settings:
    return SETTINGS["pixel" if source == "pixel" else "embedding"]


# -- method names --------------------------------------------------------------------------------
def split_name(name: str) -> tuple[str, bool, bool]:
    """'effnet-cosine+dba+qe' -> ('effnet-cosine', dba, qe). A plain name comes back unchanged."""
    base, plus, rest = name.partition("+")
    if not plus:
        return name, False, False
    tags = rest.split("+")
    return base, "dba" in tags, "qe" in tags


def method_names(source: str, metric: str, hnsw: bool = False) -> list[str]:
    """The re-ranked method names one source offers (exact, or through Chroma with hnsw=True)."""
    if hnsw:
        return [f"{source}-hnsw-{metric}{s}" for s in HNSW_SUFFIXES] if metric == "cosine" else []
    return [f"{source}-{metric}{s}" for s in SUFFIXES]


def describe(s: Settings) -> str:
    """What a re-ranked method's space is, in words (the methods list and the app)."""
    steps = [x for x, on in (("flip-averaged", s.flip), ("square-rooted", s.sqrt)) if on]
    space = f"{' '.join(steps)} {'centred ' if s.metric == 'corr' else ''}vectors".strip() if steps or \
        s.metric == "corr" else "the stored vectors"
    return f"k={s.k}, alpha={s.alpha:g}, on {space}"


# -- the maths -----------------------------------------------------------------------------------
def to_space(vectors: np.ndarray, settings: Settings) -> np.ndarray:
    """Vectors (N, D) of any dtype -> float32 unit rows of the re-ranking space."""
    x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if settings.sqrt:
        x = np.sign(x) * np.sqrt(np.abs(x))
    if settings.metric == "corr":
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def mirror_pixels(rows: np.ndarray, size: int) -> np.ndarray:
    """Pixel rows (N, size*size*3) of the left-right mirrored thumbnails."""
    rows = np.asarray(rows)
    return rows.reshape(len(rows), size, size, 3)[:, :, ::-1, :].reshape(len(rows), -1)


def space_rows(vectors: np.ndarray, settings: Settings, pixel_size: int | None = None) -> np.ndarray:
    """Raw vectors (pixels uint8 or embeddings) -> unit rows of the re-ranking space; with flip,
    each pixel row is averaged with its mirror image first (pixel_size says how to mirror)."""
    x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if settings.flip:
        if not pixel_size:
            raise ValueError("flip-averaging is offered for pixel vectors only (give pixel_size)")
        x = (x + mirror_pixels(x, pixel_size)) / 2
    return to_space(x, settings)


def _weights(sims: np.ndarray, alpha: float) -> np.ndarray:
    """sim^alpha on non-negative similarities (a negative neighbour adds nothing)."""
    return np.power(np.maximum(sims, 0.0), alpha, dtype=np.float32)


def _top(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows' top-k columns by similarity (unordered; sums do not care) and their similarities."""
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
        np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy()
    return idx, np.take_along_axis(sims, idx, axis=1)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dba(library: np.ndarray, k: int, alpha: float, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Database-side augmentation of unit rows: each row becomes the sim^alpha-weighted sum of itself
    (similarity 1) and its k nearest other rows, re-normalised. O(N^2 D), in row chunks."""
    library = np.asarray(library, dtype=np.float32)
    n = len(library)
    out = np.empty_like(library)
    for start in tqdm(range(0, n, chunk_rows), desc="DBA", unit="chunk", disable=n <= 4 * chunk_rows, leave=False):
        block = library[start:start + chunk_rows]
        sims = block @ library.T
        rows = np.arange(len(block))
        sims[rows, start + rows] = -np.inf          # itself is added below with weight 1
        idx, s = _top(sims, min(k, n - 1)) if n > 1 else (np.zeros((len(block), 0), int), np.zeros((len(block), 0)))
        w = _weights(s, alpha)
        out[start:start + len(block)] = block + np.einsum("qk,qkd->qd", w, library[idx])
    return _normalise(out)


def expand(queries: np.ndarray, library: np.ndarray, k: int, alpha: float,
           exclude: Sequence[set[int]] | None = None,
           neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """alpha-QE: each unit query row plus its k nearest library rows weighted by sim^alpha, re-normalised.
    `exclude` holds library rows a query may not use (itself, when it is in the library);
    `neighbours` = (rows, sims) found elsewhere (Chroma) instead of the exact scan."""
    queries = np.asarray(queries, dtype=np.float32)
    if neighbours is None:
        sims = queries @ library.T
        for i, skip in enumerate(exclude or []):
            if skip:
                sims[i, list(skip)] = -np.inf
        idx, s = _top(sims, k)
    else:
        idx, s = neighbours
    found = np.isfinite(s)
    w = _weights(np.where(found, s, 0.0), alpha) * found   # a missing neighbour weighs nothing
    return _normalise(queries + np.einsum("qk,qkd->qd", w, library[idx]))


@dataclass
class LibrarySide:
    """What re-ranking needs of one source's library: the space rows and, optionally, their DBA."""

    base: np.ndarray          # (N, D) float32 unit rows of the re-ranking space
    dba: np.ndarray | None    # (N, D) float32 unit rows, DBA applied


def library_side(vectors: np.ndarray, settings: Settings, pixel_size: int | None = None,
                 with_dba: bool = True) -> LibrarySide:
    """The library side of re-ranking, computed from the library's vectors alone (the k-fold
    evaluation calls this on the library without the query fold: nothing can leak)."""
    base = space_rows(vectors, settings, pixel_size)
    return LibrarySide(base, dba(base, settings.k, settings.alpha) if with_dba else None)


def rerank_scores(queries: np.ndarray, side: LibrarySide, settings: Settings, use_dba: bool, use_qe: bool,
                  exclude: Sequence[set[int]] | None = None) -> np.ndarray:
    """(Q, N) similarities of space-transformed query rows against the (augmented) library, after QE."""
    lib = side.dba if use_dba else side.base
    if lib is None:
        raise ValueError("this library side was computed without DBA")
    q = expand(queries, lib, settings.k, settings.alpha, exclude) if use_qe else queries
    return q @ lib.T


# -- the library side on disk ---------------------------------------------------------------------
def record_files(record: dict[str, Any] | None) -> list[str]:
    """Every index file a manifest's rerank record names (so stale-file cleanup keeps them)."""
    return [src["dba_file"] for src in ((record or {}).get("sources") or {}).values() if src.get("dba_file")]


def load_array(index_dir: Path, name: str | None) -> np.ndarray | None:
    if not name or not (Path(index_dir) / name).is_file():
        return None
    return np.load(Path(index_dir) / name, mmap_mode="r")


# -- index time: the library side, recomputed from the current library at every build -------------
def dba_plan(rows: int, dim: int, mode: str = "auto", budget: int | None = None) -> str | None:
    """Why a source of rows x dim vectors gets no re-ranking under `mode`, or None when it gets it."""
    if mode not in MODES:
        raise ValueError(f"rerank mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return "--rerank off"
    need = rows * dim * 4
    limit = DBA_AUTO_MAX_BYTES if budget is None else budget
    if mode == "auto" and need > limit:
        return (f"its float32 re-ranking rows would take {need / 2**20:,.0f} MiB ({rows:,} x {dim:,}), over "
                f"the {limit / 2**20:,.0f} MiB that --rerank auto allows; --rerank on computes them anyway")
    return None


def build_library_side(index_dir: Path, manifest: Any, token: str, chroma_url: str | None = None,
                       mode: str = "auto") -> dict[str, Any]:
    """DBA vectors of every source (pixels, and the embedder's), written beside the plain vectors,
    and, when the index has Chroma collections, synced into their own DBA collections. DBA depends
    on every image's neighbours, so after an incremental add or delete it is recomputed from the
    whole current library (a matrix product per chunk: seconds for thousands of images). A source
    over the `mode`'s budget (dba_plan) gets no re-ranked methods; the record says why."""
    index_dir = Path(index_dir)
    sources = [("pixel", manifest.pixels_file)]
    if manifest.embedder:
        sources.append((manifest.embedder["name"], manifest.embedder["file"]))
    record: dict[str, Any] = {"sources": {}, "skipped": {}, "mode": mode,
                              "chosen_by": "k-fold table on the sample library (docs/evaluation.md)"}
    for source, fname in sources:
        s = settings_for(source)
        vectors = np.load(index_dir / fname, mmap_mode="r")
        rows, dim = vectors.shape
        why = dba_plan(rows, dim, mode)
        if why:
            record["skipped"][source] = why
            log.info("re-ranking: none for %s: %s", source, why)
            continue
        side = library_side(vectors, s, manifest.pixel_size if source == "pixel" else None)
        assert side.dba is not None   # library_side computes DBA unless told not to
        name = f"dba-{source}.{token}.npy"
        atomic.save_npy(index_dir / name, side.dba)
        record["sources"][source] = {**s.to_json(), "dba_file": name}
        log.info("re-ranking: DBA for %s over %d images (%s)", source, len(vectors), describe(s))
        if source != "pixel" and manifest.chroma:
            record["chroma_prefix"] = sync_dba_chroma(index_dir, manifest, chroma_url, side.dba)
    if manifest.chroma and "chroma_prefix" not in record:
        drop_dba_chroma(index_dir, manifest, chroma_url)
    return record


def drop_dba_chroma(index_dir: Path, manifest: Any, chroma_url: str | None) -> None:
    """Delete the DBA collections an earlier build made, when this build re-ranks no embeddings."""
    from .vectorstore import VectorStore
    VectorStore.drop(**_dba_location(index_dir, manifest.chroma, chroma_url),
                     prefix=manifest.chroma["prefix"] + DBA_PREFIX_SUFFIX)


def _dba_location(index_dir: Path, chroma: dict[str, Any], url: str | None) -> dict[str, Any]:
    """Where the DBA collections live: beside the index's own (a given server, its recorded one, or
    the embedded folder)."""
    url = url or chroma.get("url")
    return {"path": None if url else Path(index_dir) / chroma["path"], "url": url}


def _dba_store(index_dir: Path, chroma: dict[str, Any], url: str | None, prefix: str):
    from .vectorstore import VectorStore
    return VectorStore.open(**_dba_location(index_dir, chroma, url), prefix=prefix)


def sync_dba_chroma(index_dir: Path, manifest: Any, chroma_url: str | None, dba_rows: np.ndarray) -> str:
    """Make the DBA collections hold exactly the current DBA rows: upsert rows whose vector changed
    (by a digest kept in the metadata; an incremental add changes its neighbours' rows too), delete
    rows of removed images. Returns the collections' prefix."""
    prefix = manifest.chroma["prefix"] + DBA_PREFIX_SUFFIX
    store = _dba_store(index_dir, manifest.chroma, chroma_url, prefix)
    held = store.metadatas()
    paths = [it["path"] for it in manifest.items]
    digests = [row_digest(r) for r in dba_rows]
    stale = sorted(set(held) - set(paths))
    rows = [i for i, (p, d) in enumerate(zip(paths, digests)) if held.get(p, {}).get("dba") != d]
    if stale:
        store.delete(stale)
    if rows:
        store.upsert([paths[i] for i in rows], dba_rows[rows],
                     [{"path": paths[i], "label": manifest.items[i]["label"], "dba": digests[i]} for i in rows])
    log.info("chroma DBA: %d upserted, %d deleted", len(rows), len(stale))
    return prefix


# -- query time -----------------------------------------------------------------------------------
class Reranker:
    """The re-ranked methods of one opened index: library sides loaded once (lazily), then QE and
    ranking per query. Thread-safe for concurrent queries."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.record = index.manifest.rerank or {}
        self._sides: dict[str, LibrarySide] = {}
        self._store = None
        self._lock = threading.Lock()

    def offers(self, source: str) -> bool:
        return source in (self.record.get("sources") or {})

    def settings(self, source: str) -> Settings:
        if not self.offers(source):
            return settings_for(source)
        return Settings.from_json(self.record["sources"][source])

    def pixel_size(self, source: str) -> int | None:
        return self.index.manifest.pixel_size if source == "pixel" else None

    def side(self, source: str) -> LibrarySide:
        """The space rows (from the plain vectors) and the stored DBA rows of a source."""
        with self._lock:
            if source not in self._sides:
                s = self.settings(source)
                plain = self.index.pixels.data if source == "pixel" else self.index.embeddings.data
                name = self.record["sources"][source]["dba_file"]
                dba_rows = load_array(self.index.index_dir, name)
                if dba_rows is None:
                    raise IndexError_(f"the re-ranking (DBA) file of {source} in {self.index.index_dir} is missing; "
                                      "rerun build_index.py index")
                self.index.manifest.check_dba(Path(self.index.index_dir) / name, dba_rows, plain.shape[1])
                self._sides[source] = LibrarySide(space_rows(plain, s, self.pixel_size(source)),
                                                  np.asarray(dba_rows, dtype=np.float32))
            return self._sides[source]

    @property
    def store(self):
        with self._lock:
            if self._store is None:
                prefix = self.record.get("chroma_prefix")
                if not prefix or not self.index.manifest.chroma:
                    raise IndexError_("this index has no Chroma DBA collections; rebuild it with --model")
                store = _dba_store(self.index.index_dir, self.index.manifest.chroma, self.index._chroma_url, prefix)
                if any(c != len(self.index.rels) for c in store.count().values()):
                    raise IndexError_(f"the Chroma DBA collections hold {store.count()} vectors, the manifest "
                                      f"{len(self.index.rels)}; rerun build_index.py index to repair them")
                self._store = store
            return self._store

    def rank(self, vectors: np.ndarray, method: Any, k: int,
             exclude: Sequence[set[int]]) -> list[list[tuple[int, float]]]:
        """Top-k (row, cosine in the re-ranking space) per raw query vector (pixels or embedding)."""
        s = self.settings(method.source)
        q = space_rows(vectors, s, self.pixel_size(method.source))
        side = self.side(method.source)
        if method.hnsw:
            return self._rank_hnsw(q, side, s, k, exclude)
        return top_k_rows(rerank_scores(q, side, s, method.dba, method.qe, exclude), k, True, exclude)

    def _hnsw_hits(self, q: np.ndarray, n: int, exclude: Sequence[set[int]]) -> list[list[tuple[int, float]]]:
        extra = max((len(x) for x in exclude), default=0)
        ids, dists = self.store.query(q, min(len(self.index.rels), n + extra), "cosine")
        rows = self.index._row_by_rel
        out = []
        for q_ids, q_d, skip in zip(ids, dists, exclude):
            hits = [(rows[i], 1.0 - float(d)) for i, d in zip(q_ids, q_d) if i in rows and rows[i] not in skip]
            out.append(hits[:n])
        return out

    def _rank_hnsw(self, q: np.ndarray, side: LibrarySide, s: Settings, k: int,
                   exclude: Sequence[set[int]]) -> list[list[tuple[int, float]]]:
        """DBA+QE through Chroma: the DBA collection's top s.k neighbours, the expanded query from
        their DBA rows (held in memory), then the DBA collection asked again."""
        first = self._hnsw_hits(q, s.k, exclude)
        idx = np.zeros((len(q), s.k), dtype=np.int64)
        sims = np.full((len(q), s.k), -np.inf, dtype=np.float32)
        for i, hits in enumerate(first):
            for j, (row, sim) in enumerate(hits):
                idx[i, j], sims[i, j] = row, sim
        assert side.dba is not None   # side() always loads the stored DBA rows
        expanded = expand(q, side.dba, s.k, s.alpha, neighbours=(idx, sims))
        return self._hnsw_hits(expanded, k, exclude)
