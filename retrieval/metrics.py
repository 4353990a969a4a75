"""The four similarity metrics, written once and vectorised over a whole matrix of library rows.

The same code ranks pixel vectors (uint8) and embeddings (float32):

* L1      sum |x - q|                                   lower is better
* L2      mean (x - q)^2  (the seed's definition)       lower is better
* cosine  x.q / (|x| |q| + eps)                         higher is better
* corr    (x-mx).(q-mq) / (|x-mx| |q-mq| + eps)         higher is better

Per-row sums and sums of squares are computed once when a matrix is prepared, so L2, cosine and
correlation cost one matrix product per query batch; L1 is streamed in row chunks. Integer data is
computed in float64, where every dot product of uint8 vectors is exact, so the matrix-product forms
agree with the textbook formulas to rounding. Memory stays bounded: a float copy of the library is
cached only when it fits `cache_bytes`; otherwise rows are converted chunk by chunk per query.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

EPS = float(np.finfo(float).eps)  # the seed's guard against division by zero
DEFAULT_CACHE_BYTES = 512 * 2**20
DEFAULT_CHUNK_BYTES = 2 * 2**20  # converted rows per step: small enough to stay in cache


@dataclass(frozen=True)
class Metric:
    """A metric's name, its sort order and a one-line explanation for users."""

    name: str
    higher_is_better: bool
    formula: str

    @property
    def order(self) -> str:
        return "higher is more similar" if self.higher_is_better else "lower is more similar"


METRICS: dict[str, Metric] = {
    "l1": Metric("l1", False, "sum of absolute differences"),
    "l2": Metric("l2", False, "mean of squared differences"),
    "cosine": Metric("cosine", True, "cosine of the angle between the vectors"),
    "corr": Metric("corr", True, "Pearson correlation of the values"),
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}") from None


class PreparedMatrix:
    """A library matrix (N, D) with the per-row statistics every metric needs, computed once."""

    def __init__(self, data: np.ndarray, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        data = data.reshape(len(data), -1)
        self.data = data
        self.n, self.d = data.shape
        exact_int = np.issubdtype(data.dtype, np.integer)
        fits = self.n * self.d * 8 <= cache_bytes
        # Integers and small float libraries: float64 (exact for uint8). Large float32 libraries:
        # float32 in place, so a million embeddings are never copied per query.
        self.dtype = np.float64 if (exact_int or fits) else np.float32
        self._rows_per_chunk = max(1, chunk_bytes // max(1, self.d * np.dtype(self.dtype).itemsize))
        self._cached: np.ndarray | None = None
        if self.dtype == data.dtype:
            self._cached = data
        elif self.n * self.d * np.dtype(self.dtype).itemsize <= cache_bytes:
            self._cached = data.astype(self.dtype)
        sums = np.empty(self.n)
        sumsq = np.empty(self.n)
        for start, chunk in self._chunks():
            c64 = chunk.astype(np.float64, copy=False)
            sums[start:start + len(chunk)] = c64.sum(axis=1)
            sumsq[start:start + len(chunk)] = np.einsum("ij,ij->i", c64, c64)
        self.sumsq = sumsq
        self.norms = np.sqrt(sumsq)
        self.means = sums / self.d
        self.centred_norms = np.sqrt(np.maximum(sumsq - sums * self.means, 0.0))

    def _chunks(self):
        """Yield (start, rows) in the compute dtype, converting at most one chunk at a time."""
        if self._cached is not None:  # one BLAS call over the whole cached matrix
            yield 0, self._cached
            return
        step = self._rows_per_chunk
        for start in range(0, self.n, step):
            yield start, self.data[start:start + step].astype(self.dtype)

    def _dots(self, queries: np.ndarray) -> np.ndarray:
        out = np.empty((len(queries), self.n))
        qt = np.ascontiguousarray(queries.T, dtype=self.dtype)
        for start, chunk in self._chunks():
            out[:, start:start + len(chunk)] = (chunk @ qt).T
        return out

    def _l1(self, queries: np.ndarray) -> np.ndarray:
        out = np.empty((len(queries), self.n))
        if self.data.dtype == np.uint8 and queries.dtype == np.uint8:
            return self._l1_uint8(queries, out)
        q = queries.astype(self.dtype, copy=False)
        for start, chunk in self._chunks():
            for i, row in enumerate(q):
                out[i, start:start + len(chunk)] = np.abs(chunk - row).sum(axis=1)
        return out

    def _l1_uint8(self, queries: np.ndarray, out: np.ndarray) -> np.ndarray:
        """|a - b| = max(a, b) - min(a, b) stays in uint8: exact, no float copy of the library.

        Rows are processed in cache-sized chunks into reused buffers, and each row is summed in
        blocks of 256 bytes into uint16 (256 * 255 < 2**16) before the final uint64 sum.
        """
        step = max(1, (1 << 20) // self.d)
        hi = np.empty((min(step, self.n), self.d), dtype=np.uint8)
        lo = np.empty_like(hi)
        body = self.d - self.d % 256
        for start in range(0, self.n, step):
            chunk = self.data[start:start + step]
            h, l = hi[:len(chunk)], lo[:len(chunk)]
            for i, row in enumerate(queries):
                np.maximum(chunk, row, out=h)
                np.minimum(chunk, row, out=l)
                np.subtract(h, l, out=h)
                total = h[:, :body].reshape(len(chunk), -1, 256).sum(axis=2, dtype=np.uint16).sum(axis=1, dtype=np.uint64)
                total += h[:, body:].sum(axis=1, dtype=np.uint64)
                out[i, start:start + len(chunk)] = total
        return out

    def scores(self, queries: np.ndarray, metric: str) -> np.ndarray:
        """Scores of each query (Q, D) or (D,) against every row: shape (Q, N), float64."""
        single = queries.size == self.d
        q = queries.reshape(-1, self.d)
        get_metric(metric)
        if metric == "l1":
            out = self._l1(q)
        else:
            q64 = q.astype(np.float64)
            q_sumsq = np.einsum("ij,ij->i", q64, q64)[:, None]
            dots = self._dots(q)
            if metric == "l2":
                out = np.maximum(self.sumsq[None, :] - 2.0 * dots + q_sumsq, 0.0) / self.d
            elif metric == "cosine":
                out = dots / (np.sqrt(q_sumsq) * self.norms[None, :] + EPS)
            else:  # corr
                q_sum = q64.sum(axis=1)[:, None]
                q_mean = q_sum / self.d
                q_cnorm = np.sqrt(np.maximum(q_sumsq - q_sum * q_mean, 0.0))
                centred_dots = dots - self.d * q_mean * self.means[None, :]
                out = centred_dots / (q_cnorm * self.centred_norms[None, :] + EPS)
        return out[0] if single else out


def top_k(scores: np.ndarray, k: int, higher_is_better: bool,
          exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the best k scores, best first (argpartition, then a stable sort of the k)."""
    key = np.array(-scores if higher_is_better else scores, dtype=np.float64)
    if exclude is not None and exclude.any():
        key[exclude] = np.inf
        k = min(k, int((~exclude).sum()))
    k = min(k, len(key))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(key, k - 1)[:k] if k < len(key) else np.arange(len(key))
    return part[np.lexsort((part, key[part]))]


def full_ranking(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """All indices, best first; ties broken by library order so results are reproducible."""
    key = -scores if higher_is_better else scores
    return np.argsort(key, kind="stable")


# Textbook definitions, kept only as a reference for tests and documentation.
REFERENCE: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "l1": lambda a, b: float(np.sum(np.abs(a - b))),
    "l2": lambda a, b: float(np.mean((a - b) ** 2)),
    "cosine": lambda a, b: float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + EPS)),
    "corr": lambda a, b: float(np.dot(a - a.mean(), b - b.mean())
                               / (np.linalg.norm(a - a.mean()) * np.linalg.norm(b - b.mean()) + EPS)),
}
