"""HNSW settings: ef_search grows with the collection, and the build records what Chroma holds."""
from __future__ import annotations

import json

from retrieval import vectorstore
from retrieval.vectorstore import HNSW, VectorStore, ef_search_for


def test_ef_search_grows_with_the_collection_within_bounds():
    sizes = [1, 100, 10_000, 100_000, 300_000, 1_000_000, 10**8]
    efs = [ef_search_for(n) for n in sizes]
    assert efs == sorted(efs)
    assert efs[0] == vectorstore.EF_SEARCH_MIN and efs[-1] == vectorstore.EF_SEARCH_MAX
    assert ef_search_for(100_000) == vectorstore.EF_SEARCH_AT_100K
    assert ef_search_for(1_000_000) > ef_search_for(100_000)


def test_build_records_the_hnsw_settings(tiny_library, tmp_path, monkeypatch):
    from retrieval.indexing import build_index
    monkeypatch.setattr(vectorstore, "EF_SEARCH_MIN", 120)   # a value Chroma's default (100) is not
    build_index(tiny_library, tmp_path / "idx", model="effnet", evaluate=False)
    chroma = json.loads((tmp_path / "idx" / "manifest.json").read_text())["chroma"]
    assert chroma["hnsw"] == {"max_neighbors": HNSW["max_neighbors"], "ef_construction": HNSW["ef_construction"],
                              "ef_search": 120}
    store = VectorStore.open(path=tmp_path / "idx" / "chroma", prefix=chroma["prefix"])
    assert store.hnsw_settings() == chroma["hnsw"]   # what the collections hold, in every space
    for col in store.collections.values():
        assert col.configuration["hnsw"]["ef_search"] == 120
