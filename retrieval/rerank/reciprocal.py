"""k-reciprocal re-ranking (Zhong et al., "Re-ranking person re-identification with k-reciprocal
encoding", CVPR 2017), run after DBA + alpha-QE, split into a library side and a query side.

Library side (index time, `build_graph`): each row's k1 nearest rows from a blocked exact kNN (row
chunks, never an N x N matrix); its k1-reciprocal set R (the rows that have it among their own k1
nearest too), expanded by the half-k sets of its members that mostly lie inside R; the weights
exp(-(1 - cos)) over that set, normalised (the vector V), then averaged over the row's k2 nearest
(local query expansion). Stored: V (sparse), each row's half-k set and its k1-th neighbour's
similarity (to test whether a query would be among a row's k1 nearest).

Query side (`scores`): the query's R from its k1 nearest rows and those thresholds, the same
expansion and weights, then the Jaccard distance between V's, mixed with the original distance:
d = (1 - lam) * d_jaccard + lam * (1 - cos); the score is 1 - d. Two ways to get the Jaccard
overlaps: `jaccard_exact` reads every stored row, `jaccard_inverted` only the rows sharing a column
with the query (an inverted index): the same sums, a few ms at 60,000 rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_CELLS = 1 << 24   # similarities per kNN block (rows x library): 64 MiB of float32


@dataclass(frozen=True)
class Graph:
    """The library side of k-reciprocal re-ranking, as CSR arrays (row pointers, columns, values)."""

    kth: np.ndarray        # (N,) float32: each row's similarity to its k1-th nearest other row
    half_ptr: np.ndarray   # (N+1,) int64: each row's half-k reciprocal set (itself included)
    half_idx: np.ndarray   # int64 columns
    v_ptr: np.ndarray      # (N+1,) int64: V, after local query expansion
    v_idx: np.ndarray      # int64 columns
    v_val: np.ndarray      # float32 weights (each row sums to 1)

    @property
    def rows(self) -> int:
        return len(self.kth)

    def half(self, j: int) -> np.ndarray:
        return self.half_idx[self.half_ptr[j]:self.half_ptr[j + 1]]

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(int64, float32) flat arrays for the index: [N, halves, nnz, pointers..., columns...], [kth, V]."""
        ints = np.concatenate([[self.rows, len(self.half_idx), len(self.v_idx)], self.half_ptr, self.half_idx,
                               self.v_ptr, self.v_idx]).astype(np.int64)
        return ints, np.concatenate([self.kth, self.v_val]).astype(np.float32)

    @classmethod
    def from_arrays(cls, ints: np.ndarray, floats: np.ndarray) -> "Graph":
        """The graph of two stored arrays; ValueError when they are not a consistent graph."""
        ints, floats = np.asarray(ints), np.asarray(floats)
        if ints.ndim != 1 or floats.ndim != 1 or len(ints) < 3:
            raise ValueError("the arrays are not flat")
        n, h, nnz = (int(v) for v in ints[:3])
        if min(n, h, nnz) < 0 or len(ints) != 3 + 2 * (n + 1) + h + nnz or len(floats) != n + nnz:
            raise ValueError("their lengths do not agree")
        parts = np.split(ints[3:], np.cumsum([n + 1, h, n + 1]))
        half_ptr, half_idx, v_ptr, v_idx = parts
        for ptr, idx in ((half_ptr, half_idx), (v_ptr, v_idx)):
            if ptr[0] != 0 or ptr[-1] != len(idx) or np.any(np.diff(ptr) < 0) or \
                    (len(idx) and (idx.min() < 0 or idx.max() >= n)):
                raise ValueError("a row pointer or column is out of range")
        if not np.isfinite(floats).all():
            raise ValueError("a weight is not finite")
        return cls(floats[:n], half_ptr, half_idx, v_ptr, v_idx, floats[n:])


def knn(lib: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each unit row's k nearest other rows (N, k), nearest first, and their cosines (blocked)."""
    n = len(lib)
    k = min(k, n - 1)
    idx = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    step = max(1, CHUNK_CELLS // max(n, 1))
    for start in range(0, n, step):
        s = lib[start:start + step] @ lib.T
        rows = np.arange(len(s))
        s[rows, start + rows] = -np.inf
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(-s, axis=1)[:, :k]
        top_s = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        idx[start:start + len(s)] = np.take_along_axis(top, order, axis=1)
        sims[start:start + len(s)] = np.take_along_axis(top_s, order, axis=1)
    return idx, sims


def _reciprocal(idx: np.ndarray, sims: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row's k-reciprocal set (itself first): its k nearest that have it within their k nearest
    (its similarity reaches their k-th neighbour's)."""
    kth = sims[:, k - 1]
    keep = sims[:, :k] >= kth[idx[:, :k]]
    return [np.concatenate([[i], idx[i, :k][keep[i]]]) for i in range(len(idx))]


def expand_set(members: np.ndarray, halves: list[np.ndarray]) -> np.ndarray:
    """R plus every half-k set of its members that has more than 2/3 of its rows inside R."""
    if not halves:
        return members
    lens = np.array([len(h) for h in halves])
    flat = np.concatenate(halves)
    inside = np.add.reduceat(np.isin(flat, members).astype(np.int64), np.cumsum(lens) - lens)
    extra = [h for h, n_in, n in zip(halves, inside, lens) if n_in > 2 / 3 * n]
    return np.unique(np.concatenate([members, *extra]))


def _weights(cos: np.ndarray) -> np.ndarray:
    w = np.exp(-(1.0 - cos.astype(np.float64)))
    return (w / max(w.sum(), 1e-12)).astype(np.float32)


def _mean_rows(cols: list[np.ndarray], vals: list[np.ndarray], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The average of n_rows sparse rows (columns, values): summed per column, divided by n_rows."""
    c = np.concatenate(cols)
    u, inv = np.unique(c, return_inverse=True)
    return u, (np.bincount(inv, weights=np.concatenate(vals)) / n_rows).astype(np.float32)


def build_graph(lib: np.ndarray, k1: int, k2: int) -> Graph:
    """The library side of k-reciprocal re-ranking for unit rows `lib` (see the module docstring)."""
    lib = np.asarray(lib, dtype=np.float32)
    n = len(lib)
    k1 = min(k1, n - 1)
    if k1 < 1:   # one row: it is its own set
        one = np.arange(n + 1, dtype=np.int64)
        return Graph(np.full(n, -np.inf, np.float32), one, np.arange(n), one, np.arange(n), np.ones(n, np.float32))
    idx, sims = knn(lib, k1)
    kh = max(1, int(round(k1 / 2)))
    r_full, r_half = _reciprocal(idx, sims, k1), _reciprocal(idx, sims, kh)
    v_cols, v_vals = [], []
    for i in range(n):
        star = expand_set(r_full[i], [r_half[j] for j in r_full[i]])
        v_cols.append(star)
        v_vals.append(_weights(lib[star] @ lib[i]))
    cols, vals = [], []
    for i in range(n):   # local query expansion: the mean V of the row and its k2 - 1 nearest
        near = [i, *idx[i, :max(0, k2 - 1)]]
        c, v = _mean_rows([v_cols[j] for j in near], [v_vals[j] for j in near], len(near))
        cols.append(c)
        vals.append(v)
    return Graph(sims[:, k1 - 1].copy(), _ptr(r_half), np.concatenate(r_half), _ptr(cols),
                 np.concatenate(cols), np.concatenate(vals))


def _ptr(rows: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)


@dataclass
class Inverted:
    """V by column (the transpose of the graph's V), built once per opened library."""

    col_ptr: np.ndarray
    col_rows: np.ndarray
    col_vals: np.ndarray
    row_of: np.ndarray   # the row of each stored entry (for the exact sums)
    row_sums: np.ndarray   # each row's total weight (1, up to rounding)

    @classmethod
    def of(cls, g: Graph) -> "Inverted":
        row_of = np.repeat(np.arange(g.rows), np.diff(g.v_ptr))
        order = np.argsort(g.v_idx, kind="stable")
        counts = np.bincount(g.v_idx, minlength=g.rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), row_of[order].astype(np.int32),
                   g.v_val[order], row_of,
                   np.bincount(row_of, weights=g.v_val, minlength=g.rows))


def jaccard_exact(cols: np.ndarray, vals: np.ndarray, g: Graph, inv: Inverted) -> np.ndarray:
    """sum over columns of min(query, row), for every row, reading every stored entry."""
    dense = np.zeros(g.rows, dtype=np.float32)
    dense[cols] = vals
    return np.bincount(inv.row_of, weights=np.minimum(dense[g.v_idx], g.v_val), minlength=g.rows)


def jaccard_inverted(cols: np.ndarray, vals: np.ndarray, g: Graph, inv: Inverted) -> np.ndarray:
    """The same sums from the rows that share a column with the query only (the inverted index)."""
    starts = inv.col_ptr[cols]
    lens = inv.col_ptr[cols + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(g.rows)
    pos = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
    mins = np.minimum(np.repeat(vals, lens), inv.col_vals[pos])
    return np.bincount(inv.col_rows[pos], weights=mins, minlength=g.rows)


def query_vector(sims: np.ndarray, g: Graph, k1: int, k2: int) -> tuple[np.ndarray, np.ndarray]:
    """A query's V (columns, weights) from its cosines to every library row (-inf: a row it may not use)."""
    k1 = min(k1, int(np.isfinite(sims).sum()))
    if k1 < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = np.argpartition(-sims, k1 - 1)[:k1]
    top = top[np.argsort(-sims[top], kind="stable")]
    members = top[sims[top] >= g.kth[top]]
    star = expand_set(members, [g.half(j) for j in members]) if len(members) else members
    cols, vals = [star], [_weights(sims[star])]
    for j in top[:max(0, k2 - 1)]:
        cols.append(g.v_idx[g.v_ptr[j]:g.v_ptr[j + 1]])
        vals.append(g.v_val[g.v_ptr[j]:g.v_ptr[j + 1]])
    return _mean_rows(cols, vals, len(cols))


def scores(sims: np.ndarray, g: Graph, inv: Inverted, k1: int, k2: int, lam: float,
           exact: bool = False) -> np.ndarray:
    """(Q, N) scores 1 - d of queries whose cosines to the library are `sims` (-inf: excluded rows)."""
    out = np.zeros(sims.shape, dtype=np.float32)
    for i, s in enumerate(sims):
        cols, vals = query_vector(s, g, k1, k2)
        overlap = (jaccard_exact if exact else jaccard_inverted)(cols, vals, g, inv)
        union = np.maximum(vals.sum() + inv.row_sums - overlap, 1e-12)
        d = (1 - lam) * (1 - overlap / union) + lam * (1 - np.where(np.isfinite(s), s, -1.0))
        out[i] = 1 - d
    return out
