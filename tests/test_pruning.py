"""pixel-l1 with lower-bound pruning (metrics.L1Pruner) ranks exactly like the full scan, ties included."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.metrics import L1Pruner, PreparedMatrix, _block_sums, top_k


def full_scan(matrix: PreparedMatrix, q: np.ndarray, k: int, mask=None):
    scores = matrix.scores(q, "l1")
    idx = top_k(scores, k, False, mask)
    return idx, scores[idx]


def check_same(matrix, pruner, queries, k, masks=None):
    for i, q in enumerate(queries):
        mask = None if masks is None else masks[i]
        want_idx, want_scores = full_scan(matrix, q, k, mask)
        got_idx, got_scores = pruner.top_k(q, k, mask)
        np.testing.assert_array_equal(got_idx, want_idx)
        np.testing.assert_array_equal(got_scores, want_scores)


def test_block_sums_bound_the_full_distance():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 1, 70, 70, 3), dtype=np.uint8)
    full = np.abs(a.astype(int) - b.astype(int)).sum()
    bounds = [np.abs(_block_sums(a, f).astype(int) - _block_sums(b, f)).sum() for f in (35, 10, 3, 1)]
    assert bounds == sorted(bounds) and bounds[-1] == full   # finer blocks: tighter, down to the pixels
    assert _block_sums(a, 3).sum() == a.astype(int).sum()    # 70 is not a multiple of 3: the edge blocks count


@pytest.mark.parametrize("side, k", [(64, 1), (64, 5), (96, 10), (112, 100)])
def test_random_library_same_as_full_scan(side, k):
    rng = np.random.default_rng(side + k)
    n = 150
    base = rng.integers(0, 256, (8, side, side, 3), dtype=np.uint8)
    # Images near a few bases (so that bounds matter), plus exact duplicates (ties).
    noise = rng.integers(-20, 21, (n, side, side, 3))
    data = np.clip(base[rng.integers(0, 8, n)].astype(int) + noise, 0, 255).astype(np.uint8)
    data[10:20] = data[5]
    matrix = PreparedMatrix(data.reshape(n, -1))
    pruner = L1Pruner(matrix, side)
    queries = np.concatenate([data[[5, 7, 30]], rng.integers(0, 256, (3, side, side, 3), dtype=np.uint8)])
    check_same(matrix, pruner, queries.reshape(len(queries), -1), k)
    masks = [np.isin(np.arange(n), [5, 10, 11]) for _ in queries]   # excluded rows are never returned
    check_same(matrix, pruner, queries.reshape(len(queries), -1), k, masks)


def test_flat_images_tie_everywhere():
    """Many rows at exactly the same distance: the order among them is by row, as in the full scan."""
    side, n = 64, 60
    values = np.repeat(np.arange(0, 60, 10), 10).astype(np.uint8)   # 6 levels x 10 identical images
    data = np.broadcast_to(values[:, None], (n, side * side * 3)).copy()
    matrix = PreparedMatrix(data)
    pruner = L1Pruner(matrix, side)
    q = np.full(side * side * 3, 25, np.uint8)    # equidistant from levels 20 and 30
    for k in (1, 5, 15, 25, 60):
        check_same(matrix, pruner, [q], k)


def test_pruning_reads_few_full_rows():
    """On smooth images (like resized photos; unlike white noise, whose block sums all look alike)
    the bounds are tight and few rows are read at full resolution."""
    rng = np.random.default_rng(3)
    side, n = 64, 200
    coarse = rng.integers(0, 256, (n, 8, 8, 3))
    smooth = np.kron(coarse, np.ones((1, 8, 8, 1), int)) + rng.integers(-10, 11, (n, side, side, 3))
    data = np.clip(smooth, 0, 255).astype(np.uint8).reshape(n, -1)
    matrix = PreparedMatrix(data)
    pruner = L1Pruner(matrix, side)
    check_same(matrix, pruner, [data[3], data[100]], 5)
    assert pruner.last_stats["full_rows"] < n // 4


def test_refuses_the_wrong_shape():
    with pytest.raises(ValueError, match="64x64x3"):
        L1Pruner(PreparedMatrix(np.zeros((3, 10), np.uint8)), 64)


def test_real_library_index_ranks_like_the_full_scan(sample_data, tmp_path):
    """The sample library at 128 px through LookalikeIndex: pruned pixel-l1 equals the full scan for
    every test image, with the query's own row left out as search() does."""
    from retrieval.indexing import build_index
    from retrieval.search import LookalikeIndex
    build_index(sample_data, tmp_path / "idx", pixel_size=128, model="none", evaluate=False)
    index = LookalikeIndex.open(tmp_path / "idx")
    assert index.l1_pruner is not None
    m = index.parse_method("pixel-l1")
    test_images = sorted((sample_data / "test").rglob("*.*"))[:25]
    from retrieval.images import load_image
    vecs = index.query_vectors([load_image(p) for p in test_images], "pixel")
    lib_rows = [5, 17, 200]
    vecs = np.concatenate([vecs, index.pixels.data[lib_rows]])
    skips = [set() for _ in test_images] + [{r} for r in lib_rows]
    pruned = index.rank(vecs, m, 10, skips)
    for v, skip, got in zip(vecs, skips, pruned):
        mask = np.isin(np.arange(len(index.rels)), list(skip))
        idx, scores = full_scan(index.pixels, v, 10, mask)
        assert got == [(int(i), float(s)) for i, s in zip(idx, scores)]
