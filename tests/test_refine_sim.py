"""The simulated-feedback protocol (retrieval.refine_sim) on a tiny library: residual APs in [0, 1],
the residual really without the images shown, and no refinement scoring like the baseline."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_effnet_index
from retrieval.kfold import build_pool, stratified_folds
from retrieval.refine import Weights
from retrieval.refine_sim import Fusion, Variant, classifier_scores, simulate
from retrieval.search import LookalikeIndex

SHOWN = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, index_dir = tiny_effnet_index(tmp_path_factory.mktemp("refine-sim"))
    index = LookalikeIndex.open(index_dir)
    pool = build_pool(index)
    folds = stratified_folds(pool.labels, k=5, seed=0)
    settings = {src: index.rerank_settings(src) for src in index.sources()}
    return index, pool, folds, settings


def _residual_ap(pool, q: int, lib: np.ndarray, shown: set[int]) -> float:
    """AP of plain effnet cosine for pool row q over the library rows `lib` minus `shown`, by hand."""
    rows = [r for r in lib if r not in shown and pool.shas[r] != pool.shas[q]]
    v = pool.vectors["effnet"]
    sims = [float(v[r] @ v[q] / (np.linalg.norm(v[r]) * np.linalg.norm(v[q]))) for r in rows]
    order = [rows[i] for i in sorted(range(len(rows)), key=lambda i: (-sims[i], i))]
    hits = [pool.labels[r] == pool.labels[q] for r in order]
    precisions = [sum(hits[:i + 1]) / (i + 1) for i, h in enumerate(hits) if h]
    return sum(precisions) / max(1, sum(hits))


def test_residual_excludes_shown_images_and_scores_stay_in_range(setup):
    index, pool, folds, settings = setup
    plain = index.parse_method("effnet-cosine")
    best = index.parse_method("effnet-cosine+dba+qe")
    variants = [Variant("none", plain, plain, None), Variant("plain", plain, plain, Weights(1.0, 1.0, 0.5)),
                Variant("re-ranked", plain, best, Weights(1.0, 1.0, 0.5))]
    out = simulate(pool, folds, variants, settings, rounds=2, shown=SHOWN)
    for o in out.values():
        for r in range(2):
            for aps in (o.refined[r], o.baseline[r]):
                assert aps.shape == (len(pool.labels),) and ((aps >= 0) & (aps <= 1)).all()
    for o in out.values():
        for q in range(len(pool.labels)):
            lib = np.flatnonzero(folds != folds[q])
            first, both = o.shown[0][q], o.shown[1][q]
            assert len(first) == SHOWN and len(both) == 2 * SHOWN and first < both
            assert all(folds[r] != folds[q] for r in both)   # only other folds are shown
            for r in range(2):   # the baseline is plain cosine on exactly the residual
                assert o.baseline[r][q] == pytest.approx(_residual_ap(pool, q, lib, o.shown[r][q]))
    none = out["none"]
    for r in range(2):   # without refinement the refined ranking is the baseline's
        assert none.refined[r] == pytest.approx(none.baseline[r])
    assert out["plain"].baseline[0] == pytest.approx(none.baseline[0])   # same first ranking, same residual
    assert not np.allclose(out["plain"].refined[0], none.refined[0])      # the marks changed the ranking


def test_classifier_ranks_library_rows_on_the_side_of_the_right_marks():
    rng = np.random.default_rng(0)
    lib = np.concatenate([rng.normal([2.0, 0, 0], 0.3, (6, 3)), rng.normal([-2.0, 0, 0], 0.3, (6, 3))])
    scores = classifier_scores(np.array([2.0, 0, 0]), lib, np.array([0, 1]), np.array([6, 7]), Fusion())
    assert scores.shape == (12,)
    assert scores[:6].min() > scores[6:].max()   # the unmarked rows 2-5 and 8-11 fall on their class's side


def test_fusion_without_weight_ranks_like_rocchio_and_with_weight_changes_the_ranking(setup):
    index, pool, folds, settings = setup
    best = index.parse_method("effnet-cosine+dba+qe")
    w = Weights(1.0, 1.0, 0.5)
    variants = [Variant("rocchio", best, best, w), Variant("fused0", best, best, w, Fusion(weight=0.0, background=2)),
                Variant("fused", best, best, w, Fusion(weight=4.0, background=2))]
    out = simulate(pool, folds, variants, settings, rounds=2, shown=SHOWN)
    roc, zero, fused = out["rocchio"], out["fused0"], out["fused"]
    for r in range(2):
        assert zero.refined[r] == pytest.approx(roc.refined[r])   # z-scoring alone keeps the order
        assert zero.shown[r] == roc.shown[r]
    assert fused.baseline[0] == pytest.approx(roc.baseline[0])    # same first ranking, same residual
    assert ((fused.refined[0] >= 0) & (fused.refined[0] <= 1)).all()
    assert not np.allclose(fused.refined[0], roc.refined[0])      # the classifier moved the ranking
