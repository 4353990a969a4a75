"""The vector store stays equal to the index after every kind of rebuild (issue 19, class 7).

Fails before round 3: the Chroma sync compared only each row's content hash and model spec, so an
index built in fp32 and rebuilt in bf16 (or the reverse) re-embedded every image but left Chroma's
vectors as they were ("chroma: 0 upserted"): HNSW then answered from the old precision's vectors.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import make_tiny_library
from retrieval.indexing import build_index
from retrieval.manifest import Manifest
from retrieval.search import LookalikeIndex
from retrieval.vectorstore import VectorStore


@pytest.fixture(params=["embedded", "server"])
def chroma_url(request):
    return request.getfixturevalue("chroma_server") if request.param == "server" else None


def _store(index_dir, chroma_url) -> VectorStore:
    manifest = Manifest.read(index_dir)
    return VectorStore.open(path=None if chroma_url else index_dir / "chroma", url=chroma_url,
                            prefix=manifest.chroma.prefix)


def _check_store_equals_index(index_dir, chroma_url, data) -> int:
    """Chroma holds exactly the index's vectors (both spaces), and HNSW's top 10 equals exact
    search's top 10 for every query (the test split and every fifth library image). Returns the
    number of queries checked."""
    manifest = Manifest.read(index_dir)
    vectors = np.load(index_dir / manifest.embedder.file)
    paths = [it["path"] for it in manifest.items]
    store = _store(index_dir, chroma_url)
    for space, col in store.collections.items():
        got = col.get(ids=paths, include=["embeddings"])
        held = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        assert set(held) == set(paths), space
        diff = float(np.abs(np.stack([held[p] for p in paths]) - vectors).max())
        assert diff < 1e-6, f"{space}: Chroma holds other vectors than the index (max difference {diff:.2g})"
    index = LookalikeIndex.open(index_dir, chroma_url=chroma_url)
    queries = sorted((data / "test").rglob("*.jpg")) + [data / p for p in paths[::5]]
    for query in queries:
        for metric in ("cosine", "l2"):
            exact, _ = index.search(query, f"effnet-{metric}", k=10, exclude_self=False)
            hnsw, _ = index.search(query, f"effnet-hnsw-{metric}", k=10, exclude_self=False)
            assert [h.rel for h in hnsw] == [h.rel for h in exact], (query.name, metric)
    return len(queries)


def test_a_precision_change_rewrites_chroma(tmp_path, chroma_url, caplog):
    """fp32 -> bf16 -> fp32: each rebuild re-embeds every row and rewrites Chroma; HNSW then
    equals exact search for every query. A rebuild that changes nothing writes nothing."""
    data = make_tiny_library(tmp_path / "data", n_train=10, n_test=2)
    index_dir = tmp_path / "index"
    checked = []
    for precision in ("fp32", "bf16", "fp32"):
        with caplog.at_level(logging.INFO, logger="retrieval.indexing"):
            caplog.clear()
            summary = build_index(data, index_dir, model="effnet", precision=precision, chroma_url=chroma_url,
                                  evaluate=False)
        assert summary["embedded"] == 30
        assert Manifest.read(index_dir).embedder.precision == precision
        assert "chroma: 30 upserted" in caplog.text
        checked.append(_check_store_equals_index(index_dir, chroma_url, data))
    with caplog.at_level(logging.INFO, logger="retrieval.indexing"):
        caplog.clear()
        assert build_index(data, index_dir, model="effnet", precision="fp32", chroma_url=chroma_url,
                           evaluate=False)["embedded"] == 0
    assert "chroma: 0 upserted, 0 deleted" in caplog.text
    print(f"queries checked per build (fp32, bf16, fp32): {checked}, HNSW top-10 == exact top-10 in each")
    if chroma_url:
        _store(index_dir, chroma_url).reset()

