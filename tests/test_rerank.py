"""Re-ranking (retrieval.rerank): the maths against a plain loop, the index-time library side under
incremental add/delete, and the re-ranked methods through LookalikeIndex, exact and through Chroma."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import make_tiny_library
from retrieval.errors import IndexError_, LookalikeError, Remedy
from retrieval.indexing import build_index
from retrieval.library import scan_split
from retrieval.methods import Method
from retrieval.records import RerankRecord, RerankSource
from retrieval.rerank import (Reranker, Settings, dba, dba_plan, expand, library_side, mirror_pixels, rerank_scores,
                              space_rows, to_space)
from retrieval.search import LookalikeIndex


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_dba_equals_the_definition():
    lib = unit_rows(40, 16)
    k, alpha = 5, 0.5
    out = dba(lib, k, alpha, chunk_rows=7)   # several chunks
    for i in range(len(lib)):
        sims = lib @ lib[i]
        sims[i] = -np.inf
        nn = np.argsort(-sims)[:k]
        want = lib[i] + sum(max(sims[j], 0) ** alpha * lib[j] for j in nn)
        np.testing.assert_allclose(out[i], want / np.linalg.norm(want), atol=1e-5)


def test_expand_weights_neighbours_and_honours_exclusions():
    lib = unit_rows(30, 8, seed=1)
    q = lib[:2] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got = expand(q, lib, 3, 1.0, exclude=[{0}, set()])
    sims = q[0] @ lib.T
    sims[0] = -np.inf
    nn = np.argsort(-sims)[:3]
    want = q[0] + sum(sims[j] * lib[j] for j in nn)
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-5)
    assert not np.allclose(got[0], got[1])


def test_space_and_flip():
    pix = np.random.default_rng(0).integers(0, 256, size=(3, 4 * 4 * 3), dtype=np.uint8)
    twice = mirror_pixels(mirror_pixels(pix, 4), 4)
    np.testing.assert_array_equal(twice, pix)
    s = Settings(metric="cosine", flip=True)
    side = library_side(pix, s, pixel_size=4, with_dba=False)
    np.testing.assert_allclose(side.base, library_side(mirror_pixels(pix, 4), s, pixel_size=4, with_dba=False).base,
                               atol=1e-6)   # a flip-averaged row is the same for an image and its mirror
    x = to_space(np.array([[4.0, -9.0]]), Settings(sqrt=True))
    np.testing.assert_allclose(x, [[2 / np.sqrt(13), -3 / np.sqrt(13)]], atol=1e-6)   # signed square root


def _dba_of(index_dir, source="pixel"):
    idx = LookalikeIndex.open(index_dir)
    rec = idx.manifest.rerank.sources[source]
    return idx, np.load(index_dir / rec.dba_file)


def test_incremental_add_and_delete_recompute_dba_from_the_current_library(tmp_path):
    data = make_tiny_library(tmp_path / "data")
    index = tmp_path / "index"
    build_index(data, index, model="none")
    idx, before = _dba_of(index)
    assert {"pixel-cosine+qe", "pixel-cosine+dba", "pixel-cosine+dba+qe"} <= set(idx.methods)
    # add three images and delete one, then rebuild incrementally
    extra = make_tiny_library(tmp_path / "more", classes={"red": (200, 40, 40)}, n_train=3, seed=5)
    for f in (extra / "train" / "red").iterdir():
        shutil.copy(f, data / "train" / "red" / f"new_{f.name}")
    (data / "train" / "green" / "train_0.jpg").unlink()
    summary = build_index(data, index, model="none")
    assert summary["pixels_reused"] == len(before) - 1
    idx, after = _dba_of(index)
    assert len(after) == len(before) + 2
    fresh = tmp_path / "fresh"
    build_index(data, fresh, model="none")   # the same library built from scratch
    _, want = _dba_of(fresh)
    np.testing.assert_allclose(after, want, atol=1e-6)
    s = idx.rerank_settings("pixel")
    np.testing.assert_allclose(after, library_side(idx.pixels.data, s, idx.manifest.pixel_size).dba, atol=1e-6)
    assert len(list(index.glob("dba-pixel.*.npy"))) == 1          # the old DBA file was removed


def test_reranked_pixel_search_and_bad_names(tmp_path):
    data = make_tiny_library(tmp_path / "data")
    build_index(data, tmp_path / "index", model="none")
    idx = LookalikeIndex.open(tmp_path / "index")
    query = scan_split(data, "test")[0]
    for method in ("pixel-cosine+qe", "pixel-cosine+dba", "pixel-cosine+dba+qe"):
        hits, _ = idx.search(query.path(data), method, k=4)
        assert len(hits) == 4 and all(-1.0 <= h.score <= 1.0 + 1e-6 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert hits[0].label == query.label
    lib_img = idx.paths[0]
    hits, _ = idx.search(lib_img, "pixel-cosine+dba+qe", k=len(idx.rels))
    assert 0 not in {idx.rels.index(h.rel) for h in hits}          # the query is left out of its own results
    for bad in ("pixel-cosine+foo", "pixel-l1+qe", "pixel-hnsw-cosine+dba+qe"):
        with pytest.raises(LookalikeError, match="unknown method"):
            idx.search(query.path(data), bad)


def test_effnet_reranked_exact_and_through_chroma_agree(sample_effnet_index, sample_data):
    idx = LookalikeIndex.open(sample_effnet_index)
    assert {"effnet-cosine+qe", "effnet-cosine+dba+qe", "effnet-hnsw-cosine+dba+qe"} <= set(idx.methods)
    assert idx.manifest.rerank.sources["effnet"].settings.k in (3, 5, 8, 12)
    overlap = []
    for q in scan_split(sample_data, "test")[:10]:
        exact, _ = idx.search(q.path(sample_data), "effnet-cosine+dba+qe", k=10)
        approx, _ = idx.search(q.path(sample_data), "effnet-hnsw-cosine+dba+qe", k=10)
        overlap.append(len({h.rel for h in exact} & {h.rel for h in approx}) / 10)
    assert np.mean(overlap) >= 0.95


def test_dba_plan_says_why_in_plain_words():
    assert dba_plan(3, 3, "off") == "re-ranking is switched off for this build"
    why = dba_plan(1000, 3072, "auto", budget=1000 * 3072 * 4 - 1)
    assert why and "1,000 x 3,072" in why and "automatic re-ranking allows" in why and "--" not in why
    assert dba_plan(1000, 3072, "auto", budget=1000 * 3072 * 4) is None and dba_plan(10**6, 10**4, "on") is None


def test_reranker_from_explicit_inputs(tmp_path):
    """The query-time Reranker needs no index object: the record, the plain vectors, the DBA file."""
    size = 4
    pixels = np.random.default_rng(3).integers(0, 256, size=(20, size * size * 3), dtype=np.uint8)
    s = Settings(metric="cosine", k=3, alpha=1.0, flip=True)
    side = library_side(pixels, s, pixel_size=size)
    assert side.dba is not None
    np.save(tmp_path / "dba-pixel.npy", side.dba)
    checked = []
    record = RerankRecord({"pixel": RerankSource(s, "dba-pixel.npy")})
    reranker = Reranker(record, {"pixel": pixels}, pixel_size=size, index_dir=tmp_path,
                        check_dba=lambda path, rows, width: checked.append((path.name, rows.shape, width)))
    assert reranker.offers("pixel") and not reranker.offers("effnet") and reranker.settings("pixel") == s
    queries = pixels[:2]
    exclude = [{0}, set()]
    method = Method.parse("pixel-cosine+dba+qe")
    got = reranker.rank(queries, method, 5, exclude)
    want = rerank_scores(space_rows(queries, s, size), side, s, True, True, exclude)
    for q, rows in enumerate(got):
        assert [r for r, _ in rows] == [int(i) for i in np.argsort(-want[q], kind="stable") if i not in exclude[q]][:5]
    assert checked == [("dba-pixel.npy", (20, 48), 48)]            # the file was checked once, when first loaded
    with pytest.raises(IndexError_, match="no Chroma DBA collections") as err:
        reranker.rank(queries, Method("pixel", "cosine", hnsw=True, dba=True, qe=True), 5, exclude)
    assert err.value.remedy is Remedy.BUILD_WITH_MODEL
    (tmp_path / "dba-pixel.npy").unlink()
    fresh = Reranker(record, {"pixel": pixels}, pixel_size=size, index_dir=tmp_path, check_dba=lambda *a: None)
    with pytest.raises(IndexError_, match="is missing") as err:
        fresh.prepare(method)
    assert err.value.remedy is Remedy.REPAIR_INDEX
