"""The ranking seam (retrieval.ranking): Chroma ids to rows with exclusions (shared by plain and
re-ranked HNSW), the pruned exact ranker against the full scan, and loads that happen once."""
from __future__ import annotations

import threading
import time

import numpy as np

from retrieval.methods import Method
from retrieval.metrics import L1Pruner, PreparedMatrix, top_k_rows
from retrieval.ranking import ExactRanker, HnswRanker, Lazy, chroma_hits


class FakeStore:
    """Chroma's query answer for a fixed id order: the nearest ids and their distances."""

    def __init__(self, ids: list[str], dists: list[float]) -> None:
        self.ids, self.dists = ids, dists
        self.asked: list[int] = []

    def query(self, vectors: np.ndarray, k: int, space: str) -> tuple[list[list[str]], np.ndarray]:
        self.asked.append(k)
        return [self.ids[:k] for _ in vectors], np.array([self.dists[:k] for _ in vectors], dtype=np.float32)


def test_chroma_hits_map_ids_skip_excluded_rows_and_trim():
    row_of = {"a": 0, "b": 1, "c": 2, "d": 3}
    store = FakeStore(["c", "gone", "a", "d", "b"], [0.1, 0.2, 0.3, 0.4, 0.5])
    got = chroma_hits(store, np.zeros((2, 3)), "cosine", 2, [{2}, set()], row_of)  # type: ignore[arg-type]
    assert store.asked == [3]                         # k plus the most rows any query leaves out, at most the rows
    rounded = [[(r, round(score, 6)) for r, score in hits] for hits in got]
    assert rounded == [[(0, 0.7)], [(2, 0.9), (0, 0.7)]]   # cosine: 1 - distance; ids not in the index skipped
    got = chroma_hits(store, np.zeros((1, 3)), "l2", 3, [set()], row_of)  # type: ignore[arg-type]
    assert [(r, round(s, 6)) for r, s in got[0]] == [(2, 0.1), (0, 0.3)]   # l2: the distance itself
    ranker = HnswRanker(Lazy(lambda: store), row_of)  # type: ignore[arg-type,return-value]
    (hit,), = ranker.rank(np.zeros((1, 3)), Method("effnet", "cosine", hnsw=True), 1, [{0}])
    assert hit[0] == 2 and round(hit[1], 6) == 0.9


def test_pruned_exact_ranker_equals_the_full_scan():
    side = 64
    data = np.random.default_rng(0).integers(0, 256, size=(40, side * side * 3), dtype=np.uint8)
    matrix = PreparedMatrix(data)
    ranker = ExactRanker(matrix, Lazy(lambda: L1Pruner(matrix, side)))
    queries = np.concatenate([data[:2], np.random.default_rng(1).integers(0, 256, size=(1, data.shape[1]),
                                                                          dtype=np.uint8)])
    exclude = [{0, 5}, set(), {1}]
    l1 = Method("pixel", "l1")
    want = top_k_rows(matrix.scores(queries, "l1").reshape(3, -1), 6, False, exclude)
    assert ranker.rank(queries, l1, 6, exclude) == want
    assert ranker.pruner is not None and ranker.pruner.get().last_stats["full_rows"] < 3 * len(data)
    plain = ExactRanker(matrix)
    assert plain.rank(queries, l1, 6, exclude) == want                    # no pruner: the full scan
    assert plain.rank(queries, Method("pixel", "cosine"), 3, exclude) == \
        top_k_rows(matrix.scores(queries, "cosine").reshape(3, -1), 3, True, exclude)


def test_lazy_loads_once_for_concurrent_first_users():
    calls = []

    def load() -> list[int]:
        calls.append(1)
        time.sleep(0.05)   # long enough for the other threads to arrive while it loads
        return [len(calls)]

    lazy = Lazy(load)
    assert not lazy.loaded
    got: list[list[int]] = []
    threads = [threading.Thread(target=lambda: got.append(lazy.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and lazy.loaded and all(g is got[0] for g in got)
