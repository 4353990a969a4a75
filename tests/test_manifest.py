"""retrieval.manifest and retrieval.records: the manifest's records are typed, validated once when
the manifest is read, and written back in the very JSON layout the build wrote (so older indexes open
unchanged); a damaged record is refused with what is wrong and the remedy, never a KeyError later."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.errors import IndexError_, Remedy
from retrieval.manifest import Manifest
from retrieval.paths import MANIFEST
from retrieval.records import ChromaRecord, EmbedderRecord, RerankRecord


def _raw(index) -> dict:
    return json.loads((index / MANIFEST).read_text("utf-8"))


def test_records_are_typed_and_written_back_unchanged(effnet_tiny):
    raw = _raw(effnet_tiny.index)
    m = Manifest.read(effnet_tiny.index)
    assert isinstance(m.embedder, EmbedderRecord) and isinstance(m.chroma, ChromaRecord)
    assert isinstance(m.rerank, RerankRecord)
    assert m.embedder.name == "effnet" and m.embedder.dim == 1280 and not m.embedder.has_text
    assert m.chroma.mode == "embedded" and m.chroma.prefix == raw["chroma"]["prefix"]
    assert set(m.rerank.sources) == {"pixel", "effnet"}
    assert json.loads(json.dumps(m.to_json())) == raw   # the same layout, key for key
    assert m.files() == [m.pixels_file, m.embedder.file, *m.rerank.files(), *m.maps.files()]
    assert all((effnet_tiny.index / f).is_file() for f in m.files())


def test_a_manifest_without_optional_fields_reads_with_their_defaults(effnet_tiny):
    raw = _raw(effnet_tiny.index)
    for key in ("source", "precision", "precision_choice", "has_text"):
        raw["embedder"].pop(key, None)
    for key in ("hnsw", "syncing"):
        raw["chroma"].pop(key, None)
    raw["rerank"] = None
    (effnet_tiny.index / MANIFEST).write_text(json.dumps(raw))
    m = Manifest.read(effnet_tiny.index)
    assert m.embedder is not None and m.embedder.source == m.embedder.spec and m.embedder.precision == "fp32"
    assert m.chroma is not None and m.chroma.hnsw is None and not m.chroma.syncing and m.rerank is None


@pytest.mark.parametrize("record, change, words", [
    ("embedder", {"dim": "512"}, "dim"),
    ("embedder", {"name": None}, "lacks name"),
    ("embedder", {"precision": "int4"}, "precision"),
    ("chroma", {"prefix": 7}, "lacks prefix"),
    ("chroma", {"mode": "cloud"}, "mode"),
    ("chroma", {"hnsw": {"ef_search": "lots"}}, "hnsw"),
    ("rerank", {"sources": []}, "sources"),
    ("rerank", {"sources": {"pixel": {"k": 5}}}, "dba_file"),
    ("rerank", {"sources": {"pixel": {"k": "5", "dba_file": "dba-pixel.npy"}}}, "settings"),
])
def test_a_damaged_record_is_refused_when_read_with_the_remedy(effnet_tiny, record, change, words):
    raw = _raw(effnet_tiny.index)
    raw[record] = {**raw[record], **change}
    (effnet_tiny.index / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(IndexError_, match=words) as err:
        Manifest.read(effnet_tiny.index)
    assert "damaged" in str(err.value) and err.value.remedy is Remedy.REBUILD_INDEX


def test_a_record_that_is_not_an_object_is_refused(effnet_tiny):
    raw = _raw(effnet_tiny.index)
    raw["chroma"] = "chroma"
    (effnet_tiny.index / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(IndexError_, match="not an object"):
        Manifest.read(effnet_tiny.index)


def test_a_missing_index_says_to_build_one(tmp_path):
    with pytest.raises(IndexError_, match="no index") as err:
        Manifest.read(tmp_path)
    assert err.value.remedy is Remedy.BUILD_INDEX and "--" not in str(err.value)


def test_chroma_record_places():
    embedded, server = ChromaRecord.at(None, "p"), ChromaRecord.at("http://127.0.0.1:8000", "p")
    assert embedded.location(Path("/i")) == (Path("/i/chroma"), None)
    assert server.location(Path("/i")) == (None, "http://127.0.0.1:8000")
    assert embedded.marked_syncing().same_place(embedded) and not server.same_place(embedded)
    assert embedded.marked_syncing().to_json()["syncing"] is True and "syncing" not in embedded.to_json()
