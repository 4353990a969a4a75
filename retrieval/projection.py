"""A 2-D map of the library, per vector source (pixels, deep features), fitted at index time.

Why t-SNE, and why openTSNE: a map for students must keep each image's neighbours next to it (that
is what "similar" means in the search), which t-SNE does and PCA does not; openTSNE (BSD-3, kept up,
wheels for every platform) runs FFT-accelerated t-SNE in minutes at 60,000 images and places new
points next to a fixed map. It is fitted on a 50-d PCA copy of the vectors the search compares
(deep vectors scaled to unit length first, as cosine compares them), with a fixed seed, and stored
in the index folder like the other derived arrays: a rebuild refits a source's map only when its
vectors change, and reuses it otherwise.

A query is placed WITHOUT refitting: at the coordinate-wise median of the map positions of its
nearest library images in the full space, as openTSNE's own transform initialises new points
(before the optimisation that we skip, so placing costs one search). The nearest images are those
the search itself ranks (`LookalikeIndex.rank` with the source's default method: pixel L1, deep
cosine), so `Placed.top_rows` are the search's actual top k. A library image is placed on its own point.

The number a student reads on the map, the neighbour agreement: for each image, the share of its 5
nearest library neighbours (itself left out) in the full space, by the same metric, that share its
class; the mean over images (over a fixed sample of them in a large library). The same share among
the 5 nearest points on the map says how faithful the picture is.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import atomic
from .errors import IndexError_, LookalikeError, Remedy
from .images import QUERY_SIDE, ImageSource, load_image
from .manifest import Manifest, array_checksum
from .methods import PIXEL, PIXEL_DEFAULT, default_for
from .metrics import PreparedMatrix, cpu_threads, top_k
from .records import MapSource, MapsRecord

if TYPE_CHECKING:
    from .search import LookalikeIndex

log = logging.getLogger(__name__)

NEIGHBOURS = 5            # the agreement's neighbours per image
MIN_IMAGES = 10           # below this a map shows nothing t-SNE can arrange (perplexity < n/3)
PCA_DIMS = 50
PERPLEXITY = 30.0
SEED = 0
PLACE_NEIGHBOURS = 10     # the nearest rows whose median places a query
AGREEMENT_SAMPLE = 2000   # above this many images, the agreement counts a fixed sample of them
FFT_FROM = 10_000         # Barnes-Hut below (fast for small maps), FFT interpolation from here
BLOCK_BYTES = 64 << 20    # score rows per step in the agreement: (rows, N) float64 at most this


def fit_settings() -> str:
    """How maps are fitted; a change (another openTSNE, other settings) refits them at the next build."""
    try:
        version = metadata.version("openTSNE")
    except metadata.PackageNotFoundError:
        version = "missing"
    return f"openTSNE {version}, PCA {PCA_DIMS}, perplexity {PERPLEXITY:g} (below n/3), seed {SEED}"


@dataclass(frozen=True)
class LibraryMap:
    source: str            # "pixel" or the embedder's source ("effnet", "clip")
    title: str             # "Pixels (32x32)" / "Deep features (effnet)"
    xy: np.ndarray         # (N, 2) float32 in index row order
    agreement: float | None   # share of each image's 5 nearest neighbours (full space) sharing its class
    map_agreement: float | None = None   # the same share among the 5 nearest points on the map
    measured_on: int = 0                 # images whose neighbours were counted (all, or a fixed sample)


@dataclass(frozen=True)
class Placed:               # a query placed on one map
    source: str
    xy: np.ndarray          # (2,)
    top_rows: list[int]     # its top-k library rows in that space


# -- the maths, on plain arrays ----------------------------------------------------------------
def search_metric(source: str) -> str:
    """The metric the map's neighbours are counted by: the source's default search."""
    return PIXEL_DEFAULT.metric if source == PIXEL else default_for(source).metric


def map_input(vectors: np.ndarray, source: str, dims: int = PCA_DIMS, chunk: int = 8192) -> np.ndarray:
    """(N, <=dims) float32: the vectors (pixels in 0..1, deep ones at unit length) centred and
    projected on their top principal components, by a seeded randomized SVD read in row chunks
    (no float copy of a 60,000-row library)."""
    n, d = vectors.shape
    dims = min(dims, n, d)

    def rows(s: int) -> np.ndarray:
        x = np.asarray(vectors[s:s + chunk], dtype=np.float32)
        if source == PIXEL:
            return x / 255.0
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    starts = range(0, n, chunk)
    mean = sum((rows(s).sum(axis=0, dtype=np.float64) for s in starts), np.zeros(d)) / n
    mean32 = mean.astype(np.float32)
    width = min(dims + 10, n, d)
    basis = np.random.default_rng(SEED).standard_normal((d, width)).astype(np.float32)
    for _ in range(3):   # range finder with two power iterations: Y = X B, then B = X^T Q
        y = np.concatenate([(rows(s) - mean32) @ basis for s in starts])
        q, _ = np.linalg.qr(y)
        basis = sum(((rows(s) - mean32).T @ q[s:s + chunk] for s in starts), np.zeros((d, width), np.float32))
        basis, _ = np.linalg.qr(basis)
    y = np.concatenate([(rows(s) - mean32) @ basis for s in starts])
    u, sv, _ = np.linalg.svd(y, full_matrices=False)
    return (u[:, :dims] * sv[:dims]).astype(np.float32)


def fit_map(reduced: np.ndarray, progress: bool = False) -> np.ndarray:
    """(N, 2) float32 t-SNE positions of the rows, seeded (the same rows give the same map)."""
    from openTSNE import TSNE   # imports scikit-learn: only when a map is fitted
    n = len(reduced)
    perplexity = min(PERPLEXITY, (n - 1) / 3 - 0.01)
    bar = _progress(n) if progress else None
    # One thread below FFT_FROM: Barnes-Hut on a few hundred points takes ~1 s on one thread, but its
    # threads wait on each other, 7x slower on a busy 2-core machine (measured, bench.map_cost).
    tsne = TSNE(perplexity=perplexity, n_jobs=min(cpu_threads(), 8) if n >= FFT_FROM else 1, random_state=SEED,
                negative_gradient_method="fft" if n >= FFT_FROM else "bh",
                callbacks=bar, callbacks_every_iters=25)
    xy = np.asarray(tsne.fit(reduced), dtype=np.float32)
    if bar is not None:
        bar.close()
    return xy


class _progress:
    """A tqdm bar over openTSNE's iterations (called back every 25 of the 750)."""

    def __init__(self, n: int) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=750, desc=f"map of {n:,} images", unit="iter", leave=False)

    def __call__(self, iteration: int, error: float, embedding: object) -> bool:
        self.bar.update(25)
        return False   # never stop early

    def close(self) -> None:
        self.bar.close()


def sample_rows(n: int, limit: int = AGREEMENT_SAMPLE) -> np.ndarray:
    """The rows whose neighbours the agreement counts: all, or a fixed random sample of `limit`."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, size=limit, replace=False))


def nearest(matrix: PreparedMatrix, metric: str, rows: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """(len(rows), k) each row's k nearest other rows by `metric`, best first, ties by row (the
    search's own order); scores in blocks, never an N x N matrix."""
    higher = metric in ("cosine", "corr")
    step = max(1, BLOCK_BYTES // (8 * max(1, matrix.n)))
    out = np.empty((len(rows), min(k, matrix.n - 1)), np.int64)
    for s in range(0, len(rows), step):
        block = rows[s:s + step]
        scores = matrix.scores(np.asarray(matrix.data[block]), metric)
        for j, (row, sc) in enumerate(zip(block, scores)):
            mask = np.zeros(matrix.n, bool)
            mask[row] = True
            out[s + j] = top_k(sc, out.shape[1], higher, mask)
    return out


def agreement(neighbours: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean share of each row's neighbours sharing its class; None without two classes."""
    labelled = labels[rows] != ""   # an unlabelled image has no class to share
    if not has_classes(labels) or neighbours.size == 0 or not labelled.any():
        return None
    same = labels[neighbours] == labels[rows][:, None]
    return float(same[labelled].mean())


def has_classes(labels: Sequence[str] | np.ndarray) -> bool:
    return len({str(x) for x in labels if x}) >= 2


def map_neighbours(xy: np.ndarray, rows: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each row's k nearest other points on the map (Euclidean), in blocks."""
    return nearest(PreparedMatrix(np.ascontiguousarray(xy, dtype=np.float32)), "l2", rows, k)


def labels_checksum(labels: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(map(str, labels))).encode()).hexdigest()


# -- index time ---------------------------------------------------------------------------------
def build_maps(index_dir: Path, manifest: Manifest, old: Manifest | None, token: str, pixels: np.ndarray,
               embeddings: np.ndarray | None) -> MapsRecord:
    """Each source's map for the new index (map-<source>.<token>.npy, agreement in the record).
    A source whose vectors (and the fit settings) are unchanged keeps the old index's map; its
    agreement is counted again only when the labels changed. Under MIN_IMAGES images: no maps."""
    n = len(manifest.items)
    vectors = {PIXEL: pixels}
    if manifest.embedder is not None and embeddings is not None:
        vectors[manifest.embedder.name] = embeddings
    if n < MIN_IMAGES:
        why = f"the library has {n} image{'' if n == 1 else 's'}; a map needs at least {MIN_IMAGES}"
        return MapsRecord(skipped={source: why for source in vectors})
    labels = np.array(manifest.labels)
    settings, label_sum = fit_settings(), labels_checksum(manifest.labels)
    out: dict[str, MapSource] = {}
    for source, data in vectors.items():
        vector_sum = array_checksum(data)
        before = old.maps.sources.get(source) if old is not None and old.maps is not None else None
        if before is not None and (before.vectors, before.settings) != (vector_sum, settings):
            before = None
        xy = _old_xy(index_dir, old, before, n) if before is not None else None
        if xy is None:
            log.info("map of the %s vectors: t-SNE on %d images", source, n)
            xy, before = fit_map(map_input(data, source), progress=n >= FFT_FROM), None
        if before is not None and before.labels == label_sum:
            shares = (before.agreement, before.map_agreement, before.measured_on)
        else:
            shares = measure(source, data, xy, labels)
        file = f"map-{source}.{token}.npy"
        atomic.save_npy(index_dir / file, xy)
        out[source] = MapSource(file, vector_sum, settings, label_sum, *shares)
        log.info("map of the %s vectors: %s", source, describe(out[source]))
    return MapsRecord(out)


def measure(source: str, data: np.ndarray, xy: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None, int]:
    """(agreement in the full space, on the map, images counted); (None, None, 0) without classes."""
    rows = sample_rows(len(data))
    if not has_classes(labels):
        return None, None, 0
    full = agreement(nearest(PreparedMatrix(data), search_metric(source), rows), rows, labels)
    return full, agreement(map_neighbours(xy, rows), rows, labels), len(rows)


def describe(src: MapSource | LibraryMap) -> str:
    """The agreement in words, for logs and the command line."""
    if src.agreement is None:
        return "no classes, so no neighbour agreement"
    return (f"{NEIGHBOURS}-NN share the class: {src.agreement:.1%} in the full space, "
            f"{src.map_agreement or 0:.1%} on the map ({src.measured_on:,} images counted)")


def _old_xy(index_dir: Path, old: Manifest | None, before: MapSource, n: int) -> np.ndarray | None:
    """The old index's map positions when they load and pass their checks, else None (refit)."""
    assert old is not None
    try:
        return _checked_xy(index_dir, old, before, n)
    except IndexError_ as exc:
        log.warning("refitting the map: %s", exc)
        return None


def _checked_xy(index_dir: Path, manifest: Manifest, src: MapSource, n: int) -> np.ndarray:
    """A stored map's (n, 2) float32 positions, refused with a clear message when missing or damaged."""
    path = Path(index_dir) / src.file
    try:
        xy = np.load(path)
    except (OSError, ValueError) as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise IndexError_(f"the map file {src.file} is {reason}; rebuild the index", remedy=Remedy.REBUILD_INDEX) from None
    if xy.shape != (n, 2) or xy.dtype != np.float32:
        raise IndexError_(f"the map file {src.file} is damaged: it holds {xy.dtype} {tuple(xy.shape)}, not {n} "
                          "positions; rebuild the index", remedy=Remedy.REBUILD_INDEX)
    manifest.check_stored(path, xy, "map")   # finite, and the build-time checksum
    return xy


# -- query time ---------------------------------------------------------------------------------
def title(source: str, manifest: Manifest) -> str:
    if source == PIXEL:
        return f"Pixels ({manifest.pixel_size}x{manifest.pixel_size})"
    return f"Deep features ({source})"


def load_maps(index: LookalikeIndex) -> list[LibraryMap]:
    """The index's maps, pixels first, then deep; a clear error when it has none (an index built
    before maps, a library too small) or a map file is missing or damaged."""
    record, manifest = index.manifest.maps, index.manifest
    if record is None:
        raise IndexError_("this index has no map of the library (it was built before maps were added); "
                          "rebuild the index", remedy=Remedy.REBUILD_INDEX)
    out = []
    for source in index.sources():
        src = record.sources.get(source)
        if src is None:
            if source in record.skipped:
                continue
            raise IndexError_(f"this index lists no map of its {source} vectors; rebuild the index",
                              remedy=Remedy.REBUILD_INDEX)
        xy = _checked_xy(index.index_dir, manifest, src, len(index.rels))
        out.append(LibraryMap(source, title(source, manifest), xy, src.agreement, src.map_agreement, src.measured_on))
    if not out:
        why = "; ".join(sorted(set(record.skipped.values()))) or "the build made none"
        raise LookalikeError(f"this index has no map of the library: {why}")
    return out


def locate(index: LookalikeIndex, query: ImageSource, k: int = 5, *, name: str | None = None) -> list[Placed]:
    """The query on each map, and its top k there. Decodes the query once and embeds it once per
    source; ranks it as the search does (the source's default method, the query itself left out
    when it is a library image) and places it from those rows, never refitting (module notes)."""
    from .search import check_k
    k = check_k(k)
    maps = load_maps(index)
    image = load_image(query, name=name, reduce_to=QUERY_SIDE)
    own = index.self_rows(query)
    out = []
    for m in maps:
        method = PIXEL_DEFAULT if m.source == PIXEL else default_for(m.source)
        ranked = index.rank(index.query_vectors([image], m.source), method, max(k, PLACE_NEIGHBOURS), [own])[0]
        rows = [row for row, _ in ranked]
        out.append(Placed(m.source, place(m.xy, rows, own), rows[:k]))
    return out


def place(xy: np.ndarray, nearest_rows: Sequence[int], own: set[int]) -> np.ndarray:
    """(2,) float32: a library image's own point, else the median of its nearest rows' points."""
    if own:
        return np.array(xy[min(own)], dtype=np.float32)
    return np.median(xy[list(nearest_rows[:PLACE_NEIGHBOURS])], axis=0).astype(np.float32)
