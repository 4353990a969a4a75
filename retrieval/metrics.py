"""The four similarity metrics, written once and vectorised over a whole matrix of library rows.

The same code ranks pixel vectors (uint8) and embeddings (float32):

* L1      sum |x - q|                                   lower is better
* L2      mean (x - q)^2  (the seed's definition)       lower is better
* cosine  x.q / (|x| |q| + eps)                         higher is better
* corr    (x-mx).(q-mq) / (|x-mx| |q-mq| + eps)         higher is better

Per-row sums and sums of squares are computed once when a matrix is prepared, so L2, cosine and
correlation cost one matrix product per query batch, and L1 one streamed pass. Pixels stay exact
without float64 copies of the library (docs/benchmarks.md has the measurements):

* uint8 dot products run in float32 BLAS on the query split into 4-bit halves (q = 16 hi + lo) and
  on column blocks of EXACT_BLOCK: every partial sum is an integer below 2**24, so float32 holds it
  exactly and the result equals the float64 one bit for bit, with half the memory traffic.
* uint8 L1 uses |x - q| = x + q - 2 min(x, q): one min pass over cache-sized row chunks widened to
  uint16, summed 4 lanes at a time as uint64 words (no lane can overflow in LANE_WORDS words).
* Large libraries are split by rows over a thread pool (numpy releases the GIL in these loops).

Memory stays bounded: a float copy of the library is cached only when it fits `cache_bytes`;
otherwise rows are converted chunk by chunk per query. float32 embeddings are used in place.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

EPS = float(np.finfo(float).eps)  # the seed's guard against division by zero
DEFAULT_CACHE_BYTES = 1 << 30
DEFAULT_CHUNK_BYTES = 4 << 20      # rows per step: fits in cache, large enough to amortise numpy calls
EXACT_BLOCK = 4096                 # 4096 * 255 * 15 < 2**24: a float32 partial sum stays exact
LANE_WORDS = 256                   # 256 * 255 < 2**16: a 16-bit lane summed over 256 words cannot carry
PARALLEL_MIN_BYTES = 8 << 20       # below this a pool costs more than it saves


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


def cpu_threads() -> int:
    """CPUs this process may run on (a container's quota, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(cpu_threads(), thread_name_prefix="metrics")
        return _POOL


def _lane_totals(words: np.ndarray) -> np.ndarray:
    """Sum the four 16-bit lanes of each uint64 word, then over the last axis: int64 per row."""
    m = np.uint64(0xFFFF)
    total = (words & m) + ((words >> np.uint64(16)) & m) + ((words >> np.uint64(32)) & m) + (words >> np.uint64(48))
    return total.sum(axis=-1).astype(np.int64)


class PreparedMatrix:
    """A library matrix (N, D) with the per-row statistics every metric needs, computed once."""

    def __init__(self, data: np.ndarray, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, threads: int | None = None) -> None:
        data = data.reshape(len(data), -1)
        self.data = data
        self.n, self.d = data.shape
        self.threads = max(1, threads or cpu_threads())
        self._chunk_bytes = chunk_bytes
        self.pixels = data.dtype == np.uint8
        # Compute dtype of the matrix products: float32 for pixels (exact, see the module notes) and
        # for float32 embeddings (used in place, never copied); float64 for anything else.
        self.dtype = np.float32 if (self.pixels or data.dtype == np.float32) else np.float64
        # A converted copy is made on the first matrix product that needs it (L1 never does), once.
        self._cached: np.ndarray | None = data if data.dtype == self.dtype else None
        self._cache_wanted = self._cached is None and self.n * self.d * np.dtype(self.dtype).itemsize <= cache_bytes
        self._cache_lock = threading.Lock()
        sums = np.empty(self.n)
        sumsq = np.empty(self.n)
        for start, chunk in self._chunks(np.float64):
            sums[start:start + len(chunk)] = chunk.sum(axis=1)
            sumsq[start:start + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
        self.sums = sums
        self.sumsq = sumsq
        self.norms = np.sqrt(sumsq)
        self.means = sums / self.d
        self.centred_norms = np.sqrt(np.maximum(sumsq - sums * self.means, 0.0))
        # uint8 L1 layout: rows padded with zeros to nb blocks of k uint64 words (4 uint16 lanes each).
        words = -(-self.d // 4)
        nb = -(-words // LANE_WORDS)
        self._lanes = (nb, -(-words // nb))

    # -- row iteration -------------------------------------------------------------------------
    def _chunks(self, dtype=None, start: int = 0, stop: int | None = None,
                whole: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (offset, rows) over [start, stop) in `dtype` (default: the compute dtype),
        converting at most one chunk at a time; whole=True yields a cached matrix in one piece."""
        dtype = np.dtype(dtype or self.dtype)
        stop = self.n if stop is None else stop
        if whole and self._cache_wanted and dtype == self.dtype:
            with self._cache_lock:
                if self._cached is None:
                    self._cached = self.data.astype(self.dtype)
        src = self._cached if self._cached is not None and self._cached.dtype == dtype else self.data
        if whole and src.dtype == dtype:
            yield start, src[start:stop]
            return
        step = max(1, self._chunk_bytes // max(1, self.d * dtype.itemsize))
        for s in range(start, stop, step):
            yield s, src[s:min(s + step, stop)].astype(dtype, copy=False)

    def _parallel(self, work: Callable[[int, int], None], bytes_per_row: int) -> None:
        """Run work(start, stop) over row ranges, on the pool when the library is large enough."""
        parts = min(self.threads, self.n, max(1, self.n * bytes_per_row // PARALLEL_MIN_BYTES))
        if parts <= 1:
            work(0, self.n)
            return
        bounds = np.linspace(0, self.n, parts + 1).astype(int)
        for f in [_pool().submit(work, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
            f.result()

    # -- kernels -------------------------------------------------------------------------------
    def _dots(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) float64 dot products of each query with every row."""
        if self.pixels and queries.dtype == np.uint8:
            return self._dots_uint8(queries)
        dtype = np.float64 if self.pixels else self.dtype   # float queries against pixels: no shortcut
        out = np.empty((len(queries), self.n))
        qt = np.ascontiguousarray(queries.T, dtype=dtype)
        for start, chunk in self._chunks(dtype, whole=True):
            out[:, start:start + len(chunk)] = (chunk @ qt).T
        return out

    def _dots_uint8(self, queries: np.ndarray) -> np.ndarray:
        """Exact uint8 dot products in float32: q = 16 hi + lo with 4-bit halves, in column blocks
        of EXACT_BLOCK, so every partial sum is an integer < 2**24 (exact in float32)."""
        nq = len(queries)
        halves = np.concatenate([queries >> 4, queries & 15]).T.astype(np.float32)   # (D, 2Q)
        acc = np.zeros((2 * nq, self.n))
        for start, chunk in self._chunks(whole=True):
            for c0 in range(0, self.d, EXACT_BLOCK):
                part = chunk[:, c0:c0 + EXACT_BLOCK] @ halves[c0:c0 + EXACT_BLOCK]
                acc[:, start:start + len(chunk)] += part.T
        return 16.0 * acc[:nq] + acc[nq:]

    def _l1(self, queries: np.ndarray) -> np.ndarray:
        out = np.empty((len(queries), self.n))
        if self.pixels and queries.dtype == np.uint8:
            return self._l1_uint8(queries, out)
        dtype = np.float64 if self.pixels else self.dtype   # pixel sums exceed float32's exact range
        q = queries.astype(dtype)

        def work(start: int, stop: int) -> None:
            for s, chunk in self._chunks(dtype, start, stop):
                for i, row in enumerate(q):
                    out[i, s:s + len(chunk)] = np.abs(chunk - row).sum(axis=1)

        self._parallel(work, self.d * np.dtype(dtype).itemsize)
        return out

    def _l1_uint8(self, queries: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Exact integer L1 = sum(x) + sum(q) - 2 sum(min(x, q)), one pass over the library.

        Each cache-sized chunk of rows is widened to uint16 (zero padding: min(0, 0) adds nothing),
        min-ed with the query, then read as uint64 words of four 16-bit lanes and summed in blocks
        of at most LANE_WORDS words, where no lane can carry into the next.
        """
        nb, k = self._lanes
        width = 4 * nb * k
        q16 = np.zeros((len(queries), width), np.uint16)
        q16[:, :self.d] = queries
        q_sums = queries.sum(axis=1, dtype=np.int64).astype(np.float64)

        def work(start: int, stop: int) -> None:
            step = max(1, self._chunk_bytes // (2 * width))
            wide = np.zeros((min(step, stop - start), width), np.uint16)
            mins = np.empty_like(wide) if len(queries) > 1 else wide
            for s in range(start, stop, step):
                chunk = self.data[s:min(s + step, stop)]
                r = len(chunk)
                wide[:r, :self.d] = chunk
                for i, q in enumerate(q16):
                    m = np.minimum(wide[:r], q, out=mins[:r])
                    min_sums = _lane_totals(m.view(np.uint64).reshape(r, nb, k).sum(axis=2))
                    out[i, s:s + r] = self.sums[s:s + r] + q_sums[i] - 2.0 * min_sums

        self._parallel(work, 2 * width)
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
    if k < len(key):
        # Ties at the k-th score: argpartition keeps an arbitrary subset; keep the lowest rows, so
        # the result is defined (and equal to the pruned L1 search's, see L1Pruner).
        v = key[part].max()
        if not np.isnan(v):
            less = np.flatnonzero(key < v)
            part = np.concatenate([less, np.flatnonzero(key == v)[:k - len(less)]])
    return part[np.lexsort((part, key[part]))]


def top_k_rows(scores: np.ndarray, k: int, higher_is_better: bool,
               exclude: Sequence[set[int]]) -> list[list[tuple[int, float]]]:
    """Top-k (row, score) for each query's row of scores, leaving out that query's `exclude` rows."""
    out = []
    for row, skip in zip(scores, exclude):
        mask = None
        if skip:
            mask = np.zeros(len(row), dtype=bool)
            mask[list(skip)] = True
        out.append([(int(i), float(row[i])) for i in top_k(row, k, higher_is_better, mask)])
    return out


# -- exact L1 top-k with lower bounds (large pixel sizes) ---------------------------------------
PRUNE_MIN_SIDE = 64          # below this a full pass is a few ms already (32x32: ~2 ms)
PRUNE_SIDES = (14, 56)       # pooled grids, coarse then fine: 448 px -> 32x32 then 8x8 blocks
PRUNE_CHUNK = 16             # candidates per step once the k-th best distance is known


def _block_sums(images: np.ndarray, factor: int) -> np.ndarray:
    """(n, s, s, c) uint8 -> (n, ceil(s/f) * ceil(s/f) * c) int32 sums over f x f blocks (the last
    block of a side is shorter when f does not divide s)."""
    s = images.shape[1]
    starts = np.arange(0, s, factor)
    rows = np.add.reduceat(images, starts, axis=1, dtype=np.int32)
    return np.add.reduceat(rows, starts, axis=2, dtype=np.int32).reshape(len(images), -1)


def _l1_exact_rows(data: np.ndarray, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact int64 L1 of `q` against data[rows], one row at a time (no copy of the library):
    |x - q| = max - min in uint8, summed in uint32 (1024*1024*3*255 < 2**32)."""
    lo, hi = np.empty_like(q), np.empty_like(q)
    out = np.empty(len(rows), np.int64)
    for j, r in enumerate(rows):
        x = data[r]
        np.minimum(x, q, out=lo)
        np.maximum(x, q, out=hi)
        out[j] = int(np.add.reduce(np.subtract(hi, lo, out=hi), dtype=np.uint32))
    return out


class L1Pruner:
    """Exact top-k by L1 over uint8 image rows, reading few full rows.

    Why it is exact: for any partition of the pixels into blocks, |sum_B x - sum_B q| <= sum_B |x - q|,
    so the L1 distance between block sums never exceeds the full L1 distance; and a finer partition
    (that refines a coarser one) gives a bound at least as tight. Rows are visited in order of the
    coarse bound; a row is read at full resolution only when its coarse and fine bounds are both at
    most the k-th best exact distance found so far, and the scan stops at the first row whose coarse
    bound exceeds it. A row skipped this way has exact distance > the final k-th best, so it could not
    be in the top k, nor tie with it: the result (ties broken by row, as `top_k` does) is the one a
    full scan gives. The pooled copies (block sums at each PRUNE_SIDES grid, int32) are built once,
    on first use.
    """

    def __init__(self, matrix: PreparedMatrix, side: int, channels: int = 3) -> None:
        if not matrix.pixels or matrix.d != side * side * channels:
            raise ValueError(f"L1Pruner needs uint8 rows of {side}x{side}x{channels} pixels")
        self.matrix, self.side, self.channels = matrix, side, channels
        self.factors = sorted({max(1, side // s) for s in PRUNE_SIDES} - {1}, reverse=True)
        self._pooled: list[np.ndarray] | None = None
        self._lock = threading.Lock()
        self.last_stats: dict[str, int] = {}

    @staticmethod
    def wanted(side: int) -> bool:
        return side >= PRUNE_MIN_SIDE

    def _images(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(len(data), self.side, self.side, self.channels)

    def pooled(self) -> list[np.ndarray]:
        """Block sums of every row at each factor, coarse first (computed once, in row chunks)."""
        if self._pooled is None:
            with self._lock:
                if self._pooled is None:
                    m = self.matrix
                    step = max(1, DEFAULT_CHUNK_BYTES * 4 // max(1, m.d))
                    parts: list[list[np.ndarray]] = [[] for _ in self.factors]
                    for s in range(0, m.n, step):
                        imgs = self._images(m.data[s:s + step])
                        for level, f in enumerate(self.factors):
                            parts[level].append(_block_sums(imgs, f))
                    self._pooled = [np.concatenate(p) if p else np.zeros((0, 0), np.int32) for p in parts]
        return self._pooled

    def top_k(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, float64 L1 scores), best first: the same as top_k over the full scan."""
        q = np.ascontiguousarray(query.reshape(-1), dtype=np.uint8)
        pooled = self.pooled()
        q_pooled = [_block_sums(self._images(q[None]), f)[0] for f in self.factors]
        coarse = np.abs(pooled[0] - q_pooled[0]).sum(axis=1, dtype=np.int64)
        allowed = np.ones(self.matrix.n, bool) if exclude is None else ~exclude
        order = np.flatnonzero(allowed)[np.argsort(coarse[allowed], kind="stable")]
        k = min(k, len(order))
        rows: list[np.ndarray] = []
        dists: list[np.ndarray] = []
        kth = np.iinfo(np.int64).max
        pos = bounded = 0
        while pos < len(order) and coarse[order[pos]] <= kth:
            step = k if not rows else PRUNE_CHUNK
            cand = order[pos:pos + step]
            pos += len(cand)
            cand = cand[coarse[cand] <= kth]
            for level in range(1, len(pooled)):
                if len(cand) and kth < np.iinfo(np.int64).max:
                    bounded += len(cand)
                    lb = np.abs(pooled[level][cand] - q_pooled[level]).sum(axis=1, dtype=np.int64)
                    cand = cand[lb <= kth]
            if len(cand):
                rows.append(cand)
                dists.append(_l1_exact_rows(self.matrix.data, cand, q))
                all_d = np.concatenate(dists)
                if len(all_d) >= k:
                    kth = int(np.partition(all_d, k - 1)[k - 1])
        if not rows:
            return np.empty(0, np.int64), np.empty(0)
        r, d = np.concatenate(rows), np.concatenate(dists)
        best = np.lexsort((r, d))[:k]
        self.last_stats = {"rows": self.matrix.n, "visited": pos, "fine_bounds": bounded, "full_rows": len(r)}
        return r[best], d[best].astype(np.float64)
