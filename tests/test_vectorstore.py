"""VectorStore against real Chroma: embedded (PersistentClient) and a real `chroma run` server."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from retrieval.errors import IndexError_
from retrieval.vectorstore import SPACES, VectorStore

from chroma_support import free_port, start_server, stop_server

DIM = 16


@pytest.fixture(params=["embedded", "server"])
def open_store(request, tmp_path):
    """Factory: open (or reopen) a store with a prefix unique to this test, in either mode."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "server":
        url = request.getfixturevalue("chroma_server")
        return lambda prefix=prefix: VectorStore.open(url=url, prefix=prefix)
    return lambda prefix=prefix: VectorStore.open(path=tmp_path / "chroma", prefix=prefix)


def _unit(n: int, d: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _meta(i: int) -> dict:
    return {"label": f"class{i % 3}", "path": f"train/class{i % 3}/{i}.jpg", "sha256": f"h{i}"}


def test_round_trip_distances_and_metadata(open_store):
    store = open_store()
    x = 2.0 * _unit(50)   # not unit: l2 and cosine then differ
    ids = [f"img{i}" for i in range(50)]
    store.upsert(ids, x, [_meta(i) for i in range(50)])
    assert store.count() == {"l2": 50, "cosine": 50}
    assert store.ids() == set(ids)
    assert store.metadatas()["img7"] == _meta(7)

    q = x[[3, 11]] + 0.01
    for space in SPACES:
        got_ids, dists = store.query(q, 5, space)
        assert [r[0] for r in got_ids] == ["img3", "img11"]
        assert dists.shape == (2, 5) and dists.dtype == np.float32
        rows = np.array([[ids.index(i) for i in r] for r in got_ids])
        if space == "cosine":   # Chroma's cosine is 1 - cos
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            xn = x / np.linalg.norm(x, axis=1, keepdims=True)
            expect = 1 - np.einsum("qd,qkd->qk", qn, xn[rows])
        else:                   # and its l2 is the squared Euclidean distance
            expect = ((q[:, None, :] - x[rows]) ** 2).sum(-1)
        np.testing.assert_allclose(dists, expect, atol=1e-4)
        assert np.all(np.diff(dists, axis=1) >= -1e-6)


def test_upsert_replaces_and_reopen_persists(open_store):
    store = open_store()
    x = _unit(10)
    store.upsert([f"a{i}" for i in range(10)], x, [_meta(i) for i in range(10)])
    store.upsert(["a0"], x[[9]] * -1, [{"label": "new", "path": "p", "sha256": "h"}])
    assert store.count() == {"l2": 10, "cosine": 10}
    assert store.metadatas()["a0"]["label"] == "new"
    again = open_store()   # a new client on the same path / server sees the same rows
    assert again.count() == {"l2": 10, "cosine": 10}
    ids, _ = again.query(-x[[9]], 1, "cosine")
    assert ids == [["a0"]]


def test_delete_removes_from_every_space(open_store):
    store = open_store()
    x = _unit(40)
    ids = [f"d{i}" for i in range(40)]
    store.upsert(ids, x, [_meta(i) for i in range(40)])
    gone = ids[:10]
    store.delete(gone + ["never-added"])
    assert store.count() == {"l2": 30, "cosine": 30}
    assert store.ids() == set(ids[10:])
    for space in SPACES:
        found, _ = store.query(x, 40, space)   # k is capped at the 30 held
        assert all(len(r) == 30 for r in found)
        assert not set(gone) & {i for r in found for i in r}


def test_writes_are_batched_to_max_batch_size(open_store, monkeypatch):
    import chromadb.api.client
    from chromadb.api.models.Collection import Collection

    monkeypatch.setattr(chromadb.api.client.Client, "get_max_batch_size", lambda self: 7)
    calls: list[tuple[str, int]] = []
    for op in ("upsert", "delete"):
        real = getattr(Collection, op)

        def spy(self, *a, _real=real, _op=op, **kw):
            calls.append((_op, len(kw["ids"])))
            return _real(self, *a, **kw)
        monkeypatch.setattr(Collection, op, spy)

    store = open_store()
    assert store.max_batch == 7
    store.upsert([f"b{i}" for i in range(30)], _unit(30), [_meta(i) for i in range(30)])
    ups = [n for op, n in calls if op == "upsert"]
    assert max(ups) <= 7 and sum(ups) == 30 * len(SPACES) and len(ups) == 5 * len(SPACES)
    store.delete([f"b{i}" for i in range(20)])
    dels = [n for op, n in calls if op == "delete"]
    assert max(dels) <= 7 and sum(dels) == 20 * len(SPACES)
    assert store.count() == {"l2": 10, "cosine": 10}


def test_more_rows_than_one_chroma_batch(open_store):
    store = open_store()
    n = store.max_batch + 100   # one plain upsert of this many would be refused by Chroma
    store.upsert([str(i) for i in range(n)], _unit(n, 4), None)
    assert store.count() == {"l2": n, "cosine": n}
    assert len(store.ids()) == n


def test_half_written_rows_show_up_for_repair(open_store):
    """A build killed between the two spaces leaves an id in one collection only: metadatas() maps
    it to {} so a sync rewrites it, and ids() still lists it so it can be deleted."""
    store = open_store()
    store.upsert(["both"], _unit(1), [_meta(1)])
    store.collections["l2"].upsert(ids=["only-l2"], embeddings=_unit(1, seed=2), metadatas=[_meta(2)])
    held = store.metadatas()
    assert held["both"] == _meta(1) and held["only-l2"] == {}
    assert store.ids() == {"both", "only-l2"}
    assert store.count() == {"l2": 2, "cosine": 1}


def test_reset_only_touches_its_prefix(open_store):
    store, other = open_store(), open_store(prefix=f"o{uuid.uuid4().hex[:10]}")
    store.upsert(["x"], _unit(1), None)
    other.upsert(["y"], _unit(1), None)
    store.reset()
    assert store.count() == {"l2": 0, "cosine": 0}
    assert store.query(_unit(1), 5, "cosine") == ([[]], pytest.approx(np.zeros((1, 0))))
    assert other.count() == {"l2": 1, "cosine": 1}


def test_existing_collection_with_wrong_space_is_refused(tmp_path):
    client = VectorStore.open(path=tmp_path / "db", prefix="other").client
    client.create_collection("p-cosine", configuration={"hnsw": {"space": "ip"}}, embedding_function=None)
    with pytest.raises(IndexError_, match="space 'ip'"):
        VectorStore.open(path=tmp_path / "db", prefix="p")


def test_unreachable_server_says_how_to_start_one():
    import argparse

    from retrieval.cli import remedy_hint
    from retrieval.errors import Remedy
    with pytest.raises(IndexError_, match="start a Chroma server on 127.0.0.1 port") as err:
        VectorStore.open(url=f"http://127.0.0.1:{free_port()}")
    assert err.value.remedy is Remedy.START_CHROMA
    assert "chroma run" in (remedy_hint(err.value, argparse.Namespace()) or "")   # the command line's words


def test_server_going_away_mid_run(tmp_path):
    proc, url = start_server(tmp_path)
    try:
        store = VectorStore.open(url=url)
        store.upsert(["a"], _unit(1), None)
    finally:
        stop_server(proc)
    with pytest.raises(IndexError_, match="stopped answering"):
        store.count()


def test_unusable_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(IndexError_, match="writable directory"):
        VectorStore.open(path=blocker / "chroma")


def test_hnsw_recall_against_exact_cosine(tmp_path):
    """With retrieval.vectorstore.HNSW, recall@10 of HNSW vs exact cosine is >= 0.99 on 2000
    random unit 512-d vectors (random high-dimensional data is the hard case for HNSW)."""
    x, q = _unit(2000, 512, seed=1), _unit(100, 512, seed=2)
    store = VectorStore.open(path=tmp_path / "db")
    store.upsert([str(i) for i in range(len(x))], x, None)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    for space in SPACES:   # on unit vectors l2 ranks exactly like cosine
        ids, _ = store.query(q, 10, space)
        recall = np.mean([len({int(i) for i in got} & set(want)) / 10 for got, want in zip(ids, exact)])
        assert recall >= 0.99, (space, recall)
