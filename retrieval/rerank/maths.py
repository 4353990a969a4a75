"""The maths of re-ranking, on plain arrays: the re-ranking space, DBA, alpha-QE and the scores.

Nothing here reads an index, a manifest or Chroma (retrieval.rerank.build and .query do), so the
k-fold evaluation runs the same functions on a library without its query fold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from . import reciprocal
from .transform import Transform, fit

KS = (3, 5, 8, 12)              # the k grid of the tuning table
ALPHAS = (0.0, 0.5, 1.0, 3.0)   # the alpha grid
CHUNK_ROWS = 1024               # library rows per matrix product when computing DBA


@dataclass(frozen=True)
class Settings:
    """How one vector source is re-ranked. `metric` is the similarity QE and DBA use (cosine for
    embeddings; pixels may prefer correlation); `flip` and `sqrt` are the cheap refinements;
    `centre` and `pca` the library-side transform (retrieval.rerank.transform; pca 0: none);
    `k1`, `k2`, `lam` the k-reciprocal re-ranking after DBA + QE (retrieval.rerank.reciprocal;
    k1 0: not offered). The defaults of the later fields are what an index built before them did."""

    metric: str = "cosine"
    k: int = 8
    alpha: float = 0.5
    sqrt: bool = False
    flip: bool = False
    centre: bool = False
    pca: int = 0
    k1: int = 0
    k2: int = 6
    lam: float = 0.3

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Settings":
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


# The k-fold table's choice on the sample library; the measurements: docs/evaluation.md
# ("Choosing k and α", "Refinements"). "embedding" is every embedder without its own entry (CLIP:
# no transform, measured on the offline backbone only), "pixel" the resized pixels.
SETTINGS = {
    "embedding": Settings(metric="cosine", k=8, alpha=1.0, k1=40, k2=6, lam=0.3),
    "effnet": Settings(metric="cosine", k=8, alpha=1.0, centre=True, pca=128, k1=40, k2=6, lam=0.3),
    "pixel": Settings(metric="cosine", k=5, alpha=1.0, sqrt=False, flip=True),
}


def settings_for(source: str) -> Settings:
    return SETTINGS.get(source) or SETTINGS["pixel" if source == "pixel" else "embedding"]


def describe(s: Settings) -> str:
    """What a re-ranked method's space is, in words (the methods list and the app)."""
    steps = [x for x, on in (("flip-averaged", s.flip), ("square-rooted", s.sqrt),
                             ("library-centred", s.centre and not s.pca), (f"PCA-{s.pca}", s.pca > 0)) if on]
    space = f"{' '.join(steps)} {'centred ' if s.metric == 'corr' else ''}vectors".strip() if steps or \
        s.metric == "corr" else "the stored vectors"
    kr = f", k-reciprocal k1={s.k1}, k2={s.k2}, lambda={s.lam:g}" if s.k1 else ""
    return f"k={s.k}, alpha={s.alpha:g}, on {space}{kr}"


def to_space(vectors: np.ndarray, settings: Settings, transform: Transform | None = None) -> np.ndarray:
    """Vectors (N, D) of any dtype -> float32 unit rows of the re-ranking space (through the
    library-side `transform` when the settings ask for one)."""
    x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if settings.sqrt:
        x = np.sign(x) * np.sqrt(np.abs(x))
    if transform is not None:
        x = transform.apply(x)
    if settings.metric == "corr":
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def mirror_pixels(rows: np.ndarray, size: int) -> np.ndarray:
    """Pixel rows (N, size*size*3) of the left-right mirrored thumbnails."""
    rows = np.asarray(rows)
    return rows.reshape(len(rows), size, size, 3)[:, :, ::-1, :].reshape(len(rows), -1)


def space_rows(vectors: np.ndarray, settings: Settings, pixel_size: int | None = None,
               transform: Transform | None = None) -> np.ndarray:
    """Raw vectors (pixels uint8 or embeddings) -> unit rows of the re-ranking space; with flip,
    each pixel row is averaged with its mirror image first (pixel_size says how to mirror)."""
    x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if settings.flip:
        if not pixel_size:
            raise ValueError("flip-averaging is offered for pixel vectors only (give pixel_size)")
        x = (x + mirror_pixels(x, pixel_size)) / 2
    return to_space(x, settings, transform)


def fit_transform(vectors: np.ndarray, settings: Settings, pixel_size: int | None = None) -> Transform | None:
    """The library-side transform the settings ask for, fitted on these library vectors (None: none)."""
    if not (settings.centre or settings.pca):
        return None
    x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if settings.flip and pixel_size:
        x = (x + mirror_pixels(x, pixel_size)) / 2
    if settings.sqrt:
        x = np.sign(x) * np.sqrt(np.abs(x))
    return fit(x, settings.pca)


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
    """What re-ranking needs of one source's library: the space rows and, optionally, their DBA,
    the library-side transform (queries go through it too) and the k-reciprocal graph."""

    base: np.ndarray          # (N, d) float32 unit rows of the re-ranking space
    dba: np.ndarray | None    # (N, d) float32 unit rows, DBA applied
    transform: Transform | None = None
    graph: reciprocal.Graph | None = None


def library_side(vectors: np.ndarray, settings: Settings, pixel_size: int | None = None,
                 with_dba: bool = True, with_kr: bool = False) -> LibrarySide:
    """The library side of re-ranking, computed from the library's vectors alone (the k-fold
    evaluation calls this on the library without the query fold: nothing can leak)."""
    transform = fit_transform(vectors, settings, pixel_size)
    base = space_rows(vectors, settings, pixel_size, transform)
    augmented = dba(base, settings.k, settings.alpha) if with_dba or with_kr else None
    graph = None
    if with_kr:
        assert augmented is not None
        graph = reciprocal.build_graph(augmented, settings.k1, settings.k2)
    return LibrarySide(base, augmented, transform, graph)


def rerank_scores(queries: np.ndarray, side: LibrarySide, settings: Settings, use_dba: bool, use_qe: bool,
                  exclude: Sequence[set[int]] | None = None, use_kr: bool = False,
                  inverted: reciprocal.Inverted | None = None) -> np.ndarray:
    """(Q, N) similarities of space-transformed query rows against the (augmented) library, after
    QE; with `use_kr`, the k-reciprocal scores on top (`inverted`: the graph by column, when kept)."""
    lib = side.dba if use_dba else side.base
    if lib is None:
        raise ValueError("this library side was computed without DBA")
    q = expand(queries, lib, settings.k, settings.alpha, exclude) if use_qe else queries
    sims = q @ lib.T
    if not use_kr:
        return sims
    if side.graph is None:
        raise ValueError("this library side was computed without its k-reciprocal graph")
    for i, skip in enumerate(exclude or []):
        if skip:
            sims[i, list(skip)] = -np.inf
    inv = inverted or reciprocal.Inverted.of(side.graph)
    return reciprocal.scores(sims, side.graph, inv, settings.k1, settings.k2, settings.lam)
