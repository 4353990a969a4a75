"""Refinement measured with simulated users, on the k-fold protocol (retrieval.kfold).

Every pooled image queries the other folds. It is ranked first by `Variant.first` (the unrefined
method); an oracle marks the top `shown` right or wrong by class; the query is refined with those
marks (retrieval.refine.rocchio) and ranked by `Variant.refine`. Round 2 shows the next `shown`
of the refined ranking and refines again with every mark so far. Each round is scored on the
residual collection, the library minus every image shown so far, against the same residual ranked
by the unrefined first method (the paired baseline). The library side of re-ranking (transform,
DBA, the k-reciprocal graph) is computed per fold from the other folds only, as the k-fold
evaluation does, and the expansion and k-reciprocal step never use an image marked wrong.

A `Variant` with `Fusion` also fits a linear classifier per query (logistic regression in the
re-ranking space after DBA: positives the query and the right marks, negatives the wrong marks and
the first ranking's last `background` images) and adds its z-scored decision value, times `weight`,
to the z-scored refined scores. Measured beside Rocchio (bench.feedback); it is not refine_search's
model, as it did not beat Rocchio clearly (+0.057 against +0.050 after one round, seed 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sklearn.linear_model import LogisticRegression

from .kfold import Pool, aps_from_scores, fold_scores, kfold_library_side
from .methods import Method
from .refine import DEFAULT_WEIGHTS, Weights, refined_vector
from .rerank import LibrarySide, Settings, space_rows

SHOWN = 10   # results the simulated user sees and marks per round


@dataclass(frozen=True)
class Fusion:
    """The classifier fused with the refined scores: its weight, its inverse regularisation C and
    how many of the first ranking's last images join the wrong marks as negatives."""

    weight: float = 0.25   # plateau of weight x C (0.25-2 x 10, 100) on seed 0: +0.057 after one round
    c: float = 10.0
    background: int = 50


@dataclass(frozen=True)
class Variant:
    """One way of refining: the method of the first ranking (and of the baseline), the method the
    refined query is ranked by, and Rocchio's weights (None: no refinement, the next results of the
    unrefined ranking are shown)."""

    name: str
    first: Method
    refine: Method
    weights: Weights | None = DEFAULT_WEIGHTS
    fusion: Fusion | None = None


@dataclass
class Outcome:
    """Per round (index 0: round 1), each pooled image's AP on its residual collection, refined and
    the paired baseline; `shown[r][i]`: the pool rows shown to image i up to round r+1."""

    refined: list[np.ndarray] = field(default_factory=list)
    baseline: list[np.ndarray] = field(default_factory=list)
    shown: list[list[set[int]]] = field(default_factory=list)


def _top_unshown(scores: np.ndarray, skip: np.ndarray, n: int) -> np.ndarray:
    """(Q, n) columns of the best scores not skipped, best first (ties by column, as top_k does)."""
    key = np.where(skip, np.inf, -scores)
    return np.argsort(key, axis=1, kind="stable")[:, :n]


class _FoldSides:
    """Each (source, dba, kr) library side of one fold, computed once from the other folds."""

    def __init__(self, pool: Pool, folds: np.ndarray, fold: int, settings: dict[str, Settings]) -> None:
        self.pool, self.folds, self.fold, self.settings = pool, folds, fold, settings
        self._sides: dict[tuple[str, bool, bool], LibrarySide] = {}

    def side(self, m: Method) -> LibrarySide | None:
        """The fold's library side of a re-ranked method (None for a plain one)."""
        if not m.reranked:
            return None
        key = (m.source, m.dba or m.kr, m.kr)
        if key not in self._sides:
            self._sides[key] = kfold_library_side(self.pool, m.source, self.folds, self.fold,
                                                  self.settings[m.source], key[1], key[2])
        return self._sides[key]

    def scores(self, m: Method, queries: np.ndarray, exclude: list[set[int]] | None = None) -> np.ndarray:
        return fold_scores(self.pool, m, self.settings.get(m.source), self.folds != self.fold, queries,
                           self.side(m), exclude)


def _refined_queries(pool: Pool, v: Variant, q_rows: np.ndarray, lib_rows: np.ndarray,
                     shown: np.ndarray, sides: _FoldSides) -> tuple[np.ndarray, list[set[int]]]:
    """Each query refined with the oracle's marks on its `shown` columns (Q, n): the raw refined
    vectors and, per query, the columns marked wrong."""
    assert v.weights is not None
    vec = pool.vectors[v.refine.source]
    side = sides.side(v.refine)
    how = (sides.settings.get(v.refine.source), side.transform if side else None, pool.pixel_size)
    right = pool.labels[lib_rows][shown] == pool.labels[q_rows][:, None]
    out, wrong_cols = [], []
    for i, qi in enumerate(q_rows):
        cols_r, cols_w = shown[i][right[i]], shown[i][~right[i]]
        out.append(refined_vector(vec[qi], vec[lib_rows[cols_r]], vec[lib_rows[cols_w]], v.refine, v.weights, *how))
        wrong_cols.append(set(cols_w.tolist()))
    return np.stack(out), wrong_cols


def _z(scores: np.ndarray) -> np.ndarray:
    """Each row standardised over its finite entries; excluded (-inf) entries stay at the bottom."""
    x = np.where(np.isfinite(scores), scores, np.nan)
    z = (x - np.nanmean(x, axis=1, keepdims=True)) / np.maximum(np.nanstd(x, axis=1, keepdims=True), 1e-12)
    return np.nan_to_num(z, nan=-1e6)


def classifier_scores(query: np.ndarray, lib: np.ndarray, right: np.ndarray, wrong: np.ndarray,
                      fusion: Fusion) -> np.ndarray:
    """(L,) decision values over the library rows `lib` (re-ranking space) of a logistic regression
    fitted on the query row and the rows `right` (positives) against the rows `wrong` (negatives)."""
    x = np.concatenate([query[None], lib[right], lib[wrong]])
    y = np.r_[np.ones(1 + len(right)), np.zeros(len(wrong))]
    clf = LogisticRegression(C=fusion.c, class_weight="balanced", max_iter=500).fit(x, y)
    return lib @ clf.coef_[0]


def _fused(pool: Pool, v: Variant, q_rows: np.ndarray, lib_rows: np.ndarray, seen: np.ndarray,
           first: np.ndarray, refined: np.ndarray, sides: _FoldSides) -> np.ndarray:
    """The refined scores fused with each query's classifier (v.fusion) on the marks in `seen`."""
    assert v.fusion is not None and v.refine.reranked, "the classifier runs in a re-ranking space"
    side = sides.side(v.refine)
    assert side is not None and side.dba is not None
    rows = space_rows(pool.vectors[v.refine.source][q_rows], sides.settings[v.refine.source],
                      pool.pixel_size if v.refine.pixel else None, side.transform)
    right = pool.labels[lib_rows][seen] == pool.labels[q_rows][:, None]
    last = np.argsort(first, axis=1, kind="stable")[:, :v.fusion.background]
    out = np.empty_like(refined, dtype=np.float64)
    for i in range(len(q_rows)):
        wrong = np.union1d(seen[i][~right[i]], np.setdiff1d(last[i], seen[i]))
        out[i] = classifier_scores(rows[i], side.dba, seen[i][right[i]], wrong, v.fusion)
    return _z(refined) + v.fusion.weight * _z(out)


def _fold(pool: Pool, folds: np.ndarray, fold: int, sides: _FoldSides, v: Variant, rounds: int,
          shown_per_round: int) -> tuple[list[np.ndarray], list[np.ndarray], list[list[set[int]]]]:
    """One fold's queries through `rounds` rounds: (refined APs, baseline APs, shown pool rows) per round."""
    q_rows, lib_rows = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
    shas = np.array(pool.shas)
    dup = shas[q_rows][:, None] == shas[lib_rows][None, :]
    first = sides.scores(v.first, pool.vectors[v.first.source][q_rows])
    q_labels, lib_labels = pool.labels[q_rows], pool.labels[lib_rows]
    skip, current = dup.copy(), first
    seen = np.zeros((len(q_rows), 0), dtype=np.int64)
    refined, baseline, shown_rows = [], [], []
    for _ in range(rounds):
        new = _top_unshown(current, skip, shown_per_round)
        seen = np.concatenate([seen, new], axis=1)
        np.put_along_axis(skip, new, True, axis=1)
        if v.weights is not None:
            vectors, wrong = _refined_queries(pool, v, q_rows, lib_rows, seen, sides)
            exclude = [w | set(np.flatnonzero(d).tolist()) for w, d in zip(wrong, dup)]
            current = sides.scores(v.refine, vectors, exclude)
            if v.fusion is not None:
                current = _fused(pool, v, q_rows, lib_rows, seen, first, current, sides)
        refined.append(aps_from_scores(current, q_labels, lib_labels, skip, ())[0])
        baseline.append(aps_from_scores(first, q_labels, lib_labels, skip, ())[0])
        shown_rows.append([set(lib_rows[s].tolist()) for s in seen])
    return refined, baseline, shown_rows


def simulate(pool: Pool, folds: np.ndarray, variants: list[Variant], settings: dict[str, Settings],
             rounds: int = 2, shown: int = SHOWN) -> dict[str, Outcome]:
    """Every variant through `rounds` rounds of simulated feedback, per pooled image. `settings`:
    each re-ranked source's settings (LookalikeIndex.rerank_settings)."""
    n = len(pool.labels)
    out = {v.name: Outcome([np.zeros(n) for _ in range(rounds)], [np.zeros(n) for _ in range(rounds)],
                           [[set() for _ in range(n)] for _ in range(rounds)]) for v in variants}
    for f in np.unique(folds):
        sides = _FoldSides(pool, folds, int(f), settings)
        q_rows = np.flatnonzero(folds == f)
        for v in variants:
            refined, baseline, shown_rows = _fold(pool, folds, int(f), sides, v, rounds, shown)
            for r in range(rounds):
                out[v.name].refined[r][q_rows] = refined[r]
                out[v.name].baseline[r][q_rows] = baseline[r]
                for i, qi in enumerate(q_rows):
                    out[v.name].shown[r][qi] = shown_rows[r][i]
    return out
