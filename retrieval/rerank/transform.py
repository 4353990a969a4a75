"""The library-side transform of the re-ranking space: centring on the library mean, then PCA.

Like DBA it is a statistic of the whole library, so it is fitted at every build from the current
library (and, in the k-fold evaluation, from the other folds only) and stored in the index; every
query is moved through the same transform. On the sample library it lifts the offline backbone's
re-ranked mAP from 0.699 to 0.726 (docs/evaluation.md); CLIP keeps the plain space by default
(`Settings.centre`, `Settings.pca` are per embedder, retrieval.rerank.maths.SETTINGS).

Small libraries (measured: docs/evaluation.md, "Small libraries"): a basis of d directions is
fitted only from at least `PCA_MIN_PER_DIM` x d images (below that PCA gained at most 0.004 over
centring alone and lost 0.04 on a 36-image library), so smaller libraries are centred only; below
`CENTRE_MIN_ROWS` images the mean is too much the images themselves and nothing is transformed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CENTRE_MIN_ROWS = 8       # fewer library images: no transform at all (the stored mean is zero)
PCA_MIN_PER_DIM = 2       # a basis of d directions is fitted from at least 2 d images, else centring only
CHUNK_ROWS = 4096         # rows per product while accumulating the covariance


@dataclass(frozen=True)
class Transform:
    """x -> (x - mean) @ basis.T: `mean` (D,), `basis` (d, D) orthonormal rows, or None (centring only)."""

    mean: np.ndarray
    basis: np.ndarray | None

    @property
    def width(self) -> int:
        """Values per transformed row."""
        return len(self.mean) if self.basis is None else len(self.basis)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) float rows -> (N, width) float32 rows (not normalised)."""
        x = np.asarray(x, dtype=np.float32) - self.mean
        return x if self.basis is None else x @ self.basis.T

    def to_array(self) -> np.ndarray:
        """One float32 array for the index: row 0 the mean, the next rows the basis."""
        rows = [self.mean[None, :]] + ([self.basis] if self.basis is not None else [])
        return np.concatenate(rows).astype(np.float32)

    @classmethod
    def from_array(cls, arr: np.ndarray) -> "Transform":
        arr = np.asarray(arr, dtype=np.float32)
        return cls(arr[0], arr[1:] if len(arr) > 1 else None)


def basis_size(rows: int, dims: int, width: int) -> int:
    """How many directions a library of `rows` images of `width` values gets when `dims` are asked
    for: min(dims, width), or 0 (centring only) with fewer than PCA_MIN_PER_DIM rows per direction."""
    d = min(dims, width)
    return d if d > 0 and rows >= PCA_MIN_PER_DIM * d else 0


def fit(x: np.ndarray, dims: int) -> Transform:
    """The library mean and its top principal directions. Each direction's sign is fixed (its
    largest component positive), so two fits of the same library store the same basis."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) < CENTRE_MIN_ROWS:
        return Transform(np.zeros(x.shape[1], np.float32), None)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    d = basis_size(len(x), dims, x.shape[1])
    if d == 0:
        return Transform(mean, None)
    top = _gram_directions(x, mean, d) if len(x) < x.shape[1] else _covariance_directions(x, mean, d)
    signs = np.sign(top[np.arange(d), np.argmax(np.abs(top), axis=1)])
    return Transform(mean, (top * signs[:, None]).astype(np.float32))


def _covariance_directions(x: np.ndarray, mean: np.ndarray, d: int) -> np.ndarray:
    """(d, D) from the D x D covariance, accumulated in row chunks (never N x N)."""
    cov = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for start in range(0, len(x), CHUNK_ROWS):
        block = (x[start:start + CHUNK_ROWS] - mean).astype(np.float64)
        cov += block.T @ block
    values, vectors = np.linalg.eigh(cov)
    return vectors[:, np.argsort(-values)[:d]].T


def _gram_directions(x: np.ndarray, mean: np.ndarray, d: int) -> np.ndarray:
    """(d, D) from the N x N Gram matrix when there are fewer rows than values (N < D: cheaper,
    the same directions)."""
    xc = (x - mean).astype(np.float64)
    values, vectors = np.linalg.eigh(xc @ xc.T)
    order = np.argsort(-values)[:d]
    top = (xc.T @ vectors[:, order]).T
    return top / np.maximum(np.linalg.norm(top, axis=1, keepdims=True), 1e-12)
