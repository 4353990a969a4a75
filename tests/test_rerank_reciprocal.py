"""The library-side transform (centring, PCA) and k-reciprocal re-ranking (retrieval.rerank.transform,
.reciprocal): no leak between k-fold folds, the inverted index equals the exact sums, small libraries,
damaged files refused with the rebuild message while the plain methods answer, and Chroma's DBA
collections re-synced when a rebuild changes the basis."""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import make_tiny_library
from retrieval.errors import IndexError_, Remedy
from retrieval.indexing import build_index
from retrieval.kfold import Pool, kfold_library_side, plateau_cell, stratified_folds
from retrieval.manifest import Manifest
from retrieval.methods import Method
from retrieval.rerank import Settings, library_side
from retrieval.rerank.reciprocal import Graph, Inverted, build_graph, jaccard_exact, jaccard_inverted, query_vector, scores
from retrieval.rerank import maths
from retrieval.rerank.transform import CENTRE_MIN_ROWS, basis_size, fit
from retrieval.search import LookalikeIndex

KR = Settings(k=5, alpha=1.0, centre=True, pca=8, k1=6, k2=3, lam=0.3)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_transform_and_graph_of_a_fold_come_from_the_other_folds_only():
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c", "d"] * 20)
    vectors = rng.normal(size=(80, 24)).astype(np.float32)
    pool = Pool(labels, [str(i) for i in range(80)], [str(i) for i in range(80)], {"effnet": vectors}, 8)
    folds = stratified_folds(labels, 5, 0)
    for fold in range(5):
        got = kfold_library_side(pool, "effnet", folds, fold, KR, with_kr=True)
        want = library_side(vectors[folds != fold], KR, with_kr=True)   # the library without the fold
        assert got.transform is not None and got.transform.basis is not None and got.graph is not None
        np.testing.assert_array_equal(got.transform.to_array(), want.transform.to_array())
        for a, b in zip(got.graph.to_arrays(), want.graph.to_arrays()):
            np.testing.assert_array_equal(a, b)
        changed = vectors.copy()   # the fold's own vectors reach neither the transform nor the graph
        changed[folds == fold] = rng.normal(size=((folds == fold).sum(), 24)) * 5
        other = kfold_library_side(Pool(labels, pool.rels, pool.shas, {"effnet": changed}, 8), "effnet", folds,
                                   fold, KR, with_kr=True)
        np.testing.assert_array_equal(other.transform.to_array(), got.transform.to_array())
        np.testing.assert_array_equal(other.graph.to_arrays()[1], got.graph.to_arrays()[1])


def test_the_inverted_index_gives_the_exact_sums_and_ranking():
    rng = np.random.default_rng(1)
    lib = _unit(rng, 300, 16)
    g = build_graph(lib, 20, 6)
    inv = Inverted.of(g)
    sims = _unit(rng, 12, 16) @ lib.T
    for s in sims:
        cols, vals = query_vector(s, g, 20, 6)
        assert abs(vals.sum() - 1) < 1e-5
        np.testing.assert_allclose(jaccard_inverted(cols, vals, g, inv), jaccard_exact(cols, vals, g, inv), atol=1e-6)
    fast, exact = scores(sims, g, inv, 20, 6, 0.3), scores(sims, g, inv, 20, 6, 0.3, exact=True)
    for a, b in zip(fast, exact):
        assert set(np.argsort(-a)[:100]) == set(np.argsort(-b)[:100])
    # lambda 1 is the original cosine: k-reciprocal re-ranking then changes nothing
    np.testing.assert_allclose(scores(sims, g, inv, 20, 6, 1.0), sims, atol=1e-6)


def test_a_stored_graph_round_trips_and_a_damaged_one_is_refused():
    g = build_graph(_unit(np.random.default_rng(2), 40, 8), 6, 3)
    ints, floats = g.to_arrays()
    back = Graph.from_arrays(ints, floats)
    for a, b in zip(back.to_arrays(), (ints, floats)):
        np.testing.assert_array_equal(a, b)
    bad = ints.copy()
    bad[-1] = 10 ** 6   # a column outside the library
    with pytest.raises(ValueError):
        Graph.from_arrays(bad, floats)
    with pytest.raises(ValueError):
        Graph.from_arrays(ints[:-3], floats)


def test_small_libraries_fall_back_to_centring_or_a_smaller_basis():
    rng = np.random.default_rng(3)
    assert basis_size(255, 128, 1280) == 0 and basis_size(256, 128, 1280) == 128
    assert basis_size(1000, 128, 64) == 64 and basis_size(1000, 0, 1280) == 0
    tiny = rng.normal(size=(CENTRE_MIN_ROWS - 1, 32))
    assert not fit(tiny, 8).mean.any() and fit(tiny, 8).basis is None   # too few to centre on: identity
    few = fit(rng.normal(size=(10, 32)), 8)
    assert few.basis is None and few.width == 32 and few.mean.any()    # centring only
    some = fit(rng.normal(size=(40, 32)), 8)
    assert some.basis is not None and some.width == 8
    np.testing.assert_allclose(some.basis @ some.basis.T, np.eye(8), atol=1e-4)
    for n in (1, 2, 3):   # a graph over fewer rows than k1 still answers
        side = library_side(rng.normal(size=(n, 32)), KR, with_kr=True)
        assert side.graph is not None and side.graph.rows == n
        q = rng.normal(size=(2, side.base.shape[1])).astype(np.float32)
        assert np.isfinite(scores(q @ side.dba.T, side.graph, Inverted.of(side.graph), KR.k1, KR.k2, KR.lam)).all()


def test_plateau_cell_prefers_a_flat_neighbourhood_to_a_lone_peak():
    grid = {(a, b): 0.5 for a in range(4) for b in range(3)}
    grid[(0, 0)] = 0.9                       # a peak whose neighbours are 0.5
    grid.update({(2, 1): 0.7, (1, 1): 0.69, (3, 1): 0.69, (2, 0): 0.7, (2, 2): 0.7})
    cell, worst = plateau_cell(grid)
    assert cell == (2, 1) and worst == pytest.approx(0.69)


@pytest.fixture(scope="module")
def kr_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("kr")
    data = make_tiny_library(root / "data", n_train=4, n_test=1)
    build_index(data, root / "index", model="effnet", evaluate=False)
    return root


def test_the_index_offers_kr_and_answers_it(kr_index):
    idx = LookalikeIndex.open(kr_index / "index")
    assert "effnet-cosine+dba+qe+kr" in idx.methods and "pixel-cosine+dba+qe+kr" not in idx.methods
    rec = idx.manifest.rerank.sources["effnet"]
    assert rec.space_file and rec.graph_files and set(rec.files()) <= set(idx.manifest.checksums)
    query = next((kr_index / "data" / "test").rglob("*.jpg"))
    hits, _ = idx.search(query, "effnet-cosine+dba+qe+kr", k=len(idx.rels))
    assert len(hits) == len(idx.rels) and hits[0].label == query.parent.name


@pytest.mark.parametrize("which", ["space", "graph"])
@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_damaged_transform_or_graph_gives_the_rebuild_message_and_plain_methods_answer(kr_index, tmp_path,
                                                                                         which, damage):
    copy = tmp_path / "index"
    shutil.copytree(kr_index / "index", copy)
    rec = Manifest.read(copy).rerank.sources["effnet"]
    path = copy / (rec.space_file if which == "space" else rec.graph_files[1])
    if damage == "missing":
        path.unlink()
    else:
        arr = np.load(path)
        arr[0] += 0.5
        np.save(path, arr)
    idx = LookalikeIndex.open(copy, data_dir=kr_index / "data")
    query = next((kr_index / "data" / "test").rglob("*.jpg"))
    broken = ["effnet-cosine+dba+qe+kr"] + (["effnet-cosine+dba+qe"] if which == "space" else [])
    for method in broken:
        with pytest.raises(IndexError_, match="rebuild the index") as err:
            idx.search(query, method, k=3)
        assert err.value.remedy is Remedy.REBUILD_INDEX
    for method in ("effnet-cosine", "pixel-l1", "effnet-hnsw-cosine") + (("effnet-cosine+dba+qe",) if which == "graph" else ()):
        assert len(idx.search(query, method, k=3)[0]) == 3


def test_hnsw_equals_exact_after_a_rebuild_that_changes_the_basis(tmp_path, monkeypatch):
    """A first build under 2 x 16 images (centring only: 1280 values per DBA row), then one over it
    (a PCA-16 basis): the DBA collections are rewritten, and HNSW answers as exact."""
    monkeypatch.setitem(maths.SETTINGS, "effnet", replace(maths.SETTINGS["effnet"], pca=16))
    data = make_tiny_library(tmp_path / "data", n_train=3, n_test=1,
                             classes={f"c{i}": (20 * i, 255 - 20 * i, 100) for i in range(9)})
    index = tmp_path / "index"
    build_index(data, index, model="effnet", evaluate=False)
    before = LookalikeIndex.open(index).reranker.side("effnet").dba.shape[1]
    make_tiny_library(tmp_path / "more", n_train=4, n_test=0, seed=5,
                      classes={f"c{i}": (20 * i, 255 - 20 * i, 100) for i in range(9)})
    for f in (tmp_path / "more" / "train").rglob("*.jpg"):
        shutil.copy(f, data / "train" / f.parent.name / f"more_{f.name}")
    build_index(data, index, model="effnet", evaluate=False)
    idx = LookalikeIndex.open(index)
    assert idx.reranker.side("effnet").dba.shape[1] == 16 and before == 1280
    exact, approx = Method.parse("effnet-cosine+dba+qe"), Method.parse("effnet-hnsw-cosine+dba+qe")
    for query in sorted((data / "test").rglob("*.jpg")):
        want = [h.rel for h in idx.search(query, exact, k=10)[0]]
        assert [h.rel for h in idx.search(query, approx, k=10)[0]] == want


def test_the_graph_counts_in_the_budget_and_pca_narrows_the_rows():
    from retrieval.rerank import dba_plan, rerank_bytes
    effnet, clip = maths.settings_for("effnet"), maths.settings_for("clip")
    assert rerank_bytes(1000, 1280, replace(effnet, k1=0)) == 1000 * 128 * 4    # PCA-128 rows only
    graph = 1000 * effnet.k2 * (effnet.k1 + 1) * 12
    assert rerank_bytes(1000, 1280, effnet) == 1000 * 128 * 4 + graph
    assert rerank_bytes(1000, 512, clip) == 1000 * 512 * 4 + graph               # CLIP: no transform
    budget = 1000 * 128 * 4 + graph // 2   # the rows fit, the graph does not: DBA and QE only (the build's fallback)
    assert dba_plan(1000, 1280, "auto", budget, effnet) and dba_plan(1000, 1280, "auto", budget, replace(effnet, k1=0)) is None


def test_the_grammar_takes_kr_after_dba_and_qe_only():
    m = Method.parse("effnet-cosine+dba+qe+kr")
    assert (m.dba, m.qe, m.kr, m.reranked, str(m.plain())) == (True, True, True, True, "effnet-cosine")
    for bad in ("effnet-cosine+kr", "effnet-cosine+dba+kr", "effnet-cosine+kr+dba+qe", "effnet-cosine+dba+qe+kr+kr"):
        with pytest.raises(Exception, match=r"\+dba\+qe\+kr"):
            Method.parse(bad)
    from retrieval.methods import offered
    names = [str(x) for x in offered("clip", hnsw=True, reranked={"pixel": "cosine", "clip": "cosine"},
                                     hnsw_reranked=True, reciprocal=frozenset({"clip"}))]
    assert "clip-cosine+dba+qe+kr" in names and "pixel-cosine+dba+qe+kr" not in names
    assert names.index("clip-cosine+dba+qe+kr") == names.index("clip-cosine+dba+qe") + 1
