"""The vectorised metrics agree with the textbook formulas, on random data and on real images."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from retrieval.images import load_image, resize_pixels
from retrieval.metrics import EPS, METRICS, PreparedMatrix, top_k
from retrieval.search import LookalikeIndex


def full_ranking(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """All indices, best first; ties broken by library order so results are reproducible."""
    key = -scores if higher_is_better else scores
    return np.argsort(key, kind="stable")


# Textbook definitions: the reference the vectorised metrics must equal.
REFERENCE: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "l1": lambda a, b: float(np.sum(np.abs(a - b))),
    "l2": lambda a, b: float(np.mean((a - b) ** 2)),
    "cosine": lambda a, b: float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + EPS)),
    "corr": lambda a, b: float(np.dot(a - a.mean(), b - b.mean())
                               / (np.linalg.norm(a - a.mean()) * np.linalg.norm(b - b.mean()) + EPS)),
}



def reference_scores(data: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """A plain loop over the library with the textbook formula, in float64."""
    return np.array([REFERENCE[metric](row.astype(np.float64), q.astype(np.float64)) for row in data])


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    scale = np.max(np.abs(ref))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("metric", list(METRICS))
def test_uint8_pixels_match_textbook(metric):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(40, 24 * 24 * 3), dtype=np.uint8)
    q = rng.integers(0, 256, size=24 * 24 * 3, dtype=np.uint8)
    assert_close(PreparedMatrix(data).scores(q, metric), reference_scores(data, q, metric))


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("cache_bytes", [0, 1 << 30], ids=["chunked", "cached"])
def test_float_embeddings_match_textbook(metric, cache_bytes):
    rng = np.random.default_rng(2)
    data = rng.normal(size=(300, 64)).astype(np.float32) + 0.3
    q = rng.normal(size=64).astype(np.float32) + 0.3
    m = PreparedMatrix(data, cache_bytes=cache_bytes, chunk_bytes=4096)
    ours = m.scores(q, metric)
    ref = reference_scores(data, q, metric)
    if m.dtype == np.float32:  # the large-library path trades the last digits for no copy
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.max(np.abs(ref)))
    else:
        assert_close(ours, ref)


def test_batched_queries_equal_single_queries():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(50, 300), dtype=np.uint8)
    qs = rng.integers(0, 256, size=(7, 300), dtype=np.uint8)
    m = PreparedMatrix(data, chunk_bytes=300 * 8 * 9)  # force several chunks
    for metric in METRICS:
        batch = m.scores(qs, metric)
        assert batch.shape == (7, 50)
        for i, q in enumerate(qs):
            np.testing.assert_allclose(batch[i], m.scores(q, metric), rtol=1e-12)


def test_known_values_from_the_seed_quiz():
    data = np.array([[4.0, 5.0, 6.0]])
    m = PreparedMatrix(data)
    q = np.array([1.0, 2.0, 3.0])
    assert m.scores(q, "l1")[0] == pytest.approx(9.0)
    assert m.scores(q, "l2")[0] == pytest.approx(9.0)  # mean of squared differences
    m2 = PreparedMatrix(np.array([[1.0, 1.0, 0.0]]))
    assert m2.scores(np.array([1.0, 0.0, 1.0]), "cosine")[0] == pytest.approx(0.5)
    m3 = PreparedMatrix(np.array([[1.0, 2.0]]))
    assert m3.scores(np.array([2.0, 4.0]), "corr")[0] == pytest.approx(1.0)


def test_sort_orders():
    assert not METRICS["l1"].higher_is_better and not METRICS["l2"].higher_is_better
    assert METRICS["cosine"].higher_is_better and METRICS["corr"].higher_is_better
    scores = np.array([0.3, 0.9, 0.1, 0.5])
    assert list(top_k(scores, 2, True)) == [1, 3]
    assert list(top_k(scores, 2, False)) == [2, 0]
    assert list(full_ranking(scores, False)) == [2, 0, 3, 1]
    exclude = np.array([False, True, False, False])
    assert list(top_k(scores, 10, True, exclude)) == [3, 0, 2]


def test_ties_break_by_library_order():
    scores = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    assert list(top_k(scores, 3, True)) == [0, 2, 4]
    assert list(full_ranking(scores, True)) == [0, 2, 4, 1, 3]


@pytest.mark.parametrize("metric", list(METRICS))
def test_real_images_ranking_matches_a_plain_loop(sample_data, sample_pixel_index, metric):
    """Cross-check: one query's full ranking from the index equals a plain-loop textbook ranking."""
    index = LookalikeIndex.open(sample_pixel_index)
    size = index.manifest.pixel_size
    query = sorted((sample_data / "test").rglob("*.jpg"))[0]
    q = resize_pixels(load_image(query), size).reshape(-1)
    library = np.stack([resize_pixels(load_image(p), size).reshape(-1) for p in index.paths])
    ref = reference_scores(library, q, metric)
    ours = index.pixels.scores(q, metric)
    assert_close(ours, ref)
    hib = METRICS[metric].higher_is_better
    loop_order = sorted(range(len(ref)), key=lambda i: (-ref[i] if hib else ref[i], i))
    m = index.parse_method(f"pixel-{metric}")
    ranked = [i for i, _ in index.rank(q[None], m, len(ref))[0]]
    assert ranked[:10] == loop_order[:10]


@pytest.mark.parametrize("d", [3, 1026, 2 * 4096 + 7])
def test_uint8_fast_paths_are_exact_at_the_extremes(monkeypatch, d):
    """The float32 split products and the uint16-lane L1 equal integer arithmetic exactly, also with
    all-255 rows (the largest partial sums), widths that are not multiples of 4 or of a block, and
    the library split over threads."""
    import retrieval.metrics as metrics

    monkeypatch.setattr(metrics, "PARALLEL_MIN_BYTES", 1)   # force the thread pool even when small
    rng = np.random.default_rng(4)
    data = rng.choice(np.array([0, 1, 254, 255], np.uint8), size=(37, d))
    data[0] = 255
    data[1] = 0
    qs = np.stack([np.full(d, 255, np.uint8), np.zeros(d, np.uint8), rng.integers(0, 256, d, dtype=np.uint8)])
    m = PreparedMatrix(data, threads=3, chunk_bytes=4 * d)
    ints, q_ints = data.astype(np.int64), qs.astype(np.int64)
    np.testing.assert_array_equal(m.scores(qs, "l1"), np.abs(ints[None] - q_ints[:, None]).sum(axis=2))
    np.testing.assert_array_equal(m._dots(qs), q_ints @ ints.T)
    np.testing.assert_array_equal(m.scores(qs, "l2"), ((ints[None] - q_ints[:, None]) ** 2).sum(axis=2) / d)


def test_float_queries_against_pixels_take_the_float64_path():
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, size=(20, 300), dtype=np.uint8)
    q = rng.integers(0, 256, size=300).astype(np.float64) + 0.5
    m = PreparedMatrix(data)
    for metric in METRICS:
        assert_close(m.scores(q, metric), reference_scores(data, q, metric))
