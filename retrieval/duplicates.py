"""Near-duplicates: resized, recompressed, lightly cropped or brightened copies of one photo.

Exact copies come first: rows with the same content hash (the index records each file's sha256)
are one group of byte-identical files whatever the threshold, and rows with identical feature
values are collapsed too; only one representative of each takes part in the pair search. So a
library of 5,000 copies of one photo gives one group of 5,000 exact copies, not a refusal.

Two images are near-duplicates when the cosine similarity of their feature vectors reaches a
threshold; groups are the connected components of those pairs (union-find), so a photo, its
half-size copy and its brightened copy form one group even if one pair falls just short.

Features, in order of preference (nothing is decoded again: both come from the index):
- the index's stored embeddings (`effnet`, `clip`), L2-normalised;
- else a perceptual hash (pHash) of the stored pixel thumbnails: the 8x8 lowest frequencies of
  the 32x32 grey image's DCT, each bit above or below their median. Its similarity is
  1 - Hamming distance / 64. A plain pHash misses cropped copies (a 10% crop kept a median of 52
  of 64 bits on the synthetic set), so each image is also hashed zoomed in on its central 85% and
  92%, and two images match when any zoom of one matches the other (`ZOOMS`).
Default thresholds were measured (bench/duplicates.py, docs/own-photos.md); CLIP's could not be
measured here (no pretrained weights offline) and is a documented guess.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from .errors import LookalikeError, Remedy

if TYPE_CHECKING:   # search imports torch lazily, but keep this module light
    from .search import LookalikeIndex

log = logging.getLogger(__name__)

HASH_SIDE = 32      # pHash works on a 32x32 grey image ...
HASH_LOW = 8        # ... and keeps its 8x8 lowest DCT frequencies: 64 bits
ZOOMS = (0.85, 0.92)  # central parts also hashed, so that lightly cropped copies still match
# Measured on the synthetic set of bench/duplicates.py (see docs/own-photos.md for the table);
# "clip" is not measured (no pretrained CLIP weights can be fetched here).
DEFAULT_THRESHOLDS = {"effnet": 0.84, "phash": 0.90, "clip": 0.95}
MAX_PAIRS = 5_000_000   # more pairs than this means the threshold is far too low for near-duplicates


@dataclass(frozen=True)
class Group:
    """One group of near-duplicates: row numbers (sorted) and the range of their pair similarities.
    `exact` lists the sets of byte-identical rows inside it (same content hash), when hashes were given."""

    rows: tuple[int, ...]
    min_similarity: float
    max_similarity: float
    exact: tuple[tuple[int, ...], ...] = ()

    @property
    def all_exact(self) -> bool:
        """Every row is a byte-identical copy of the others."""
        return len(self.exact) == 1 and len(self.exact[0]) == len(self.rows)


@dataclass
class DuplicateReport:
    kind: str                 # "effnet", "clip", ... (stored embeddings) or "phash"
    threshold: float
    groups: list[Group]
    rels: list[str]           # library-relative path of each row
    # The feature matrices the groups came from (base, then zoomed variants for the pHash), kept so
    # that a member's similarity to its group's kept image is on the same scale as the threshold.
    vectors: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)
    as_hash: bool = False

    def similarity(self, a: int, b: int) -> float:
        """The similarity of rows a and b, as the grouping measured it (cosine, or 1 - hamming/64
        with the zoomed variants for the pHash)."""
        if not self.vectors:
            raise ValueError("this report was made without its feature vectors")
        s = float(block_similarity(self.vectors, [a], [b])[0, 0])
        return round(min((s + 1) / 2 if self.as_hash else s, 1.0), 4)

    def to_json(self) -> dict[str, Any]:
        return {"features": self.kind, "threshold": self.threshold,
                "groups": [{"files": [self.rels[i] for i in g.rows], "min_similarity": g.min_similarity,
                            "max_similarity": g.max_similarity, "exact_copies": g.all_exact,
                            "same_bytes": [[self.rels[i] for i in e] for e in g.exact]} for g in self.groups]}


def normalised(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    return np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)).astype(np.float32)


def phash_bits(grey: np.ndarray) -> np.ndarray:
    """pHash of grey images (n, 32, 32) as a bool matrix (n, 64), vectorised over the batch."""
    d = _dct_matrix(HASH_SIDE)
    low = (d @ np.asarray(grey, dtype=np.float32) @ d.T)[:, :HASH_LOW, :HASH_LOW].reshape(len(grey), -1)
    # The median leaves out the DC term (the mean brightness), as in the usual pHash.
    return low > np.median(low[:, 1:], axis=1, keepdims=True)


def grey_thumbnails(pixels: np.ndarray, size: int) -> np.ndarray:
    """Stored RGB pixel rows (n, size*size*3) -> grey (n, 32, 32) float32 (ITU-R 601 luma)."""
    rgb = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), size, size, 3)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if size == HASH_SIDE:
        return grey
    return np.stack([np.asarray(Image.fromarray(g).resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR))
                     for g in grey]).astype(np.float32)


def _zoom_matrix(f: float, n: int = HASH_SIDE) -> np.ndarray:
    """Bilinear resampling of the central fraction `f` of n pixels back to n pixels, as a matrix:
    zooming a batch of images is then M @ G @ M.T, vectorised."""
    margin = n * (1 - f) / 2
    x = margin + (np.arange(n) + 0.5) * (n - 2 * margin) / n - 0.5
    lo = np.clip(np.floor(x).astype(int), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    w = (x - np.floor(x)).astype(np.float32)
    m = np.zeros((n, n), dtype=np.float32)
    m[np.arange(n), lo] += 1 - w
    m[np.arange(n), hi] += w
    return m


def zoomed(grey: np.ndarray, f: float) -> np.ndarray:
    m = _zoom_matrix(f, grey.shape[-1])
    return m @ np.asarray(grey, dtype=np.float32) @ m.T


def phash_features(grey: np.ndarray) -> list[np.ndarray]:
    """The hash vectors of grey thumbnails (n, 32, 32): as they are, then each zoom of `ZOOMS`."""
    return [hash_vectors(phash_bits(grey))] + [hash_vectors(phash_bits(zoomed(grey, f))) for f in ZOOMS]


def phash_of_images(images: Sequence[Image.Image]) -> list[np.ndarray]:
    """phash_features of decoded images (the same 32x32 squash as the index's pixel thumbnails)."""
    from .images import resize_pixels
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey = np.stack([resize_pixels(im, HASH_SIDE).astype(np.float32) @ luma for im in images]) if images \
        else np.zeros((0, HASH_SIDE, HASH_SIDE), np.float32)
    return phash_features(grey)


def hash_vectors(bits: np.ndarray) -> np.ndarray:
    """Bits as +-1/8 vectors: their dot product is 1 - 2*hamming/64, so cosine code serves hashes."""
    return np.where(bits, 1.0, -1.0).astype(np.float32) / np.sqrt(bits.shape[1])


def block_similarity(feats: Sequence[np.ndarray], rows: Any, cols: Any = slice(None)) -> np.ndarray:
    """Cosine of rows x cols of the first feature matrix; with more (zoomed variants), the best of
    base-base, variant-base and base-variant, so a zoomed copy of either side can match."""
    base = feats[0]
    sims = base[rows] @ base[cols].T
    for extra in feats[1:]:
        sims = np.maximum(sims, np.maximum(extra[rows] @ base[cols].T, base[rows] @ extra[cols].T))
    return sims


def similar_pairs(feats: Sequence[np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) for every pair i < j of rows with cosine >= threshold (see block_similarity),
    in row chunks so that memory stays at about 64 MB per matrix whatever the library size."""
    n = len(feats[0])
    chunk = max(1, (1 << 24) // max(n, 1))
    out_i, out_j, out_s = [], [], []
    found = 0
    for start in range(0, n, chunk):
        sims = block_similarity(feats, slice(start, start + chunk))
        rows, cols = np.nonzero(sims >= threshold)
        keep = cols > rows + start
        rows, cols = rows[keep], cols[keep]
        out_i.append(rows + start)
        out_j.append(cols)
        out_s.append(sims[rows, cols])
        found += len(rows)
        if found > MAX_PAIRS:
            raise LookalikeError(f"over {MAX_PAIRS:,} pairs reach the threshold {threshold}: that is far too "
                                 "low for near-duplicates; raise the threshold (e.g. to the default)")
    def cat(parts: list[np.ndarray], dt: type) -> np.ndarray:
        return np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return cat(out_i, np.int64), cat(out_j, np.int64), cat(out_s, np.float32)


def components(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components of size >= 2 of the graph with edges (i, j): union-find, path halving."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(find(x), []).append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def representatives(feats: Sequence[np.ndarray], keys: Sequence[str] | None = None) -> tuple[list[int], np.ndarray]:
    """Collapse rows that are certainly the same before any pair search: first the same content
    hash (`keys`: byte-identical files), then the same feature values in every matrix (their
    similarity to anything is the same, and 1 between them). Returns (representative rows, the
    class of each row as an index into them). 5,000 copies of one photo become one row, not 12.5
    million pairs."""
    first: dict[Any, int] = {}
    rep_of = np.empty(len(feats[0]), dtype=np.int64)
    for row in range(len(feats[0])):
        key = keys[row] if keys is not None else None
        rep = first.setdefault(("k", key), row) if key is not None else row
        if rep == row:   # a new content: collapse by identical features too
            rep = first.setdefault(("f", b"".join(np.ascontiguousarray(f[row]).tobytes() for f in feats)), row)
        rep_of[row] = rep_of[rep] if rep != row else row
    reps = sorted(set(rep_of.tolist()))
    index = {r: n for n, r in enumerate(reps)}
    return reps, np.array([index[r] for r in rep_of.tolist()], dtype=np.int64)


def group_vectors(unit: np.ndarray | Sequence[np.ndarray], threshold: float, *,
                  as_hash: bool = False, keys: Sequence[str] | None = None) -> list[Group]:
    """Near-duplicate groups of unit vectors (or [base, zoomed variants...]); with `as_hash`,
    similarities are 1 - hamming/bits. With `keys` (content hashes, one per row), byte-identical
    rows are grouped first and reported as such (`Group.exact`); the threshold then applies to one
    representative of each (see `representatives`)."""
    feats = [unit] if isinstance(unit, np.ndarray) else list(unit)
    reps, cls = representatives(feats, keys)
    rep_feats = [f[reps] for f in feats]
    i, j, _ = similar_pairs(rep_feats, threshold if not as_hash else 2 * threshold - 1)
    members: list[list[int]] = [[] for _ in reps]
    for row, c in enumerate(cls.tolist()):
        members[c].append(row)
    linked = components(len(reps), i, j)
    in_component = {c for comp in linked for c in comp}
    linked += [[c] for c in range(len(reps)) if c not in in_component and len(members[c]) > 1]
    out = []
    for comp in linked:
        out.append(_group(rep_feats, comp, members, keys, as_hash))
    return sorted(out, key=lambda g: g.rows[0])


def _group(rep_feats: Sequence[np.ndarray], comp: list[int], members: list[list[int]],
           keys: Sequence[str] | None, as_hash: bool) -> Group:
    """One Group from a component of representative rows, expanded to every row they stand for."""
    rows = tuple(sorted(r for c in comp for r in members[c]))
    lo = hi = 1.0
    if len(comp) > 1:
        sub = block_similarity(rep_feats, comp, comp)
        pair = sub[np.triu_indices(len(comp), 1)]
        if as_hash:
            pair = (pair + 1) / 2
        lo, hi = float(pair.min()), float(pair.max())
        if any(len(members[c]) > 1 for c in comp):
            hi = 1.0
    exact: list[tuple[int, ...]] = []
    if keys is not None:
        by_key: dict[str, list[int]] = {}
        for r in rows:
            by_key.setdefault(keys[r], []).append(r)
        exact = sorted(tuple(g) for g in by_key.values() if len(g) > 1)
    return Group(rows, round(min(lo, 1.0), 4), round(min(hi, 1.0), 4), tuple(exact))


def default_threshold(kind: str) -> float:
    """The measured default threshold of a feature kind ("effnet", "phash"; CLIP's and any other
    model's is the documented guess)."""
    return DEFAULT_THRESHOLDS.get(kind, DEFAULT_THRESHOLDS["clip"])


def feature_kind(index: LookalikeIndex) -> str:
    """The features `find_duplicates` uses by default on this index: its embeddings' name, else "phash"."""
    emb = index.manifest.embedder
    return emb.name if emb else "phash"


def keeper(names: Sequence[str], areas: Sequence[int]) -> int:
    """Which member of a group is kept (its position): the largest in pixels, then the first by
    name. The one rule, for the cleaner and the quarantine alike: the largest copy loses least."""
    return min(range(len(names)), key=lambda n: (-areas[n], names[n]))


def check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold <= 1:
        raise LookalikeError(f"the threshold is a similarity from 0 (exclusive) to 1, got {threshold!r}")
    return float(threshold)


def features_of_index(index: LookalikeIndex, features: str = "auto") -> tuple[str, list[np.ndarray], bool]:
    """(kind, feature matrices, as_hash) of an opened LookalikeIndex: its embeddings, or the pHash
    (with zoomed variants) of its pixels."""
    emb = index.manifest.embedder
    if features not in ("auto", "embeddings", "phash"):
        raise LookalikeError(f"features must be auto, embeddings or phash, not {features!r}")
    if features == "embeddings" and not emb:
        raise LookalikeError("this index has no embeddings (pixel-only); use pHash features, or rebuild the index "
                             "with a model", remedy=Remedy.BUILD_WITH_MODEL)
    if emb and features != "phash":
        return emb.name, [normalised(index.matrix(emb.name).data)], False
    size = index.manifest.pixel_size
    return "phash", phash_features(grey_thumbnails(index.pixels.data, size)), True


def find_duplicates(index: LookalikeIndex, threshold: float | None = None, features: str = "auto") -> DuplicateReport:
    """Near-duplicate groups of an opened index, from what it stores (no image is decoded)."""
    kind, unit, as_hash = features_of_index(index, features)
    t = check_threshold(default_threshold(kind) if threshold is None else threshold)
    keys = [it["sha256"] for it in index.manifest.items]   # byte-identical files first, then the threshold
    groups = group_vectors(unit, t, as_hash=as_hash, keys=keys)
    copies = sum(len(e) for g in groups for e in g.exact)
    log.info("%d groups of near-duplicates among %d images (%s, threshold %.3f); %d of them exact copies",
             len(groups), len(index.rels), kind, t, copies)
    return DuplicateReport(kind, t, groups, list(index.rels), vectors=list(unit), as_hash=as_hash)


def pair_scores(predicted: Sequence[Sequence[int]], truth: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Pairwise precision and recall of predicted groups against true groups (clustering metrics:
    a pair counts when both rows are in one group)."""
    def pairs(groups: Sequence[Sequence[int]]) -> set[tuple[int, int]]:
        return {(a, b) for g in groups for x, a in enumerate(sorted(g)) for b in sorted(g)[x + 1:]}
    p, t = pairs(predicted), pairs(truth)
    hit = len(p & t)
    return (hit / len(p) if p else 1.0), (hit / len(t) if t else 1.0)
