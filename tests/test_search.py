"""LookalikeIndex's public API (retrieval.search): opening and its refusals, the methods an index
offers, excluding the query itself, text refusals, prepare() and hits(). The refusals carry a
Remedy and say what to do in plain words, without command-line flags."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_library, tiny_effnet_index
from retrieval.compose import Term
from retrieval.embedders import Embedder
from retrieval.errors import IndexError_, LookalikeError, ModelError, Remedy
from retrieval.images import load_image
from retrieval.indexing import build_index
from retrieval.manifest import Manifest
from retrieval.methods import Method
from retrieval.metrics import L1Pruner
from retrieval.search import Hit, LookalikeIndex

CLI_WORDS = re.compile(r"(?<![\w-])--[a-z]|build_index\.py|python -m")


def plain_words(exc: pytest.ExceptionInfo) -> str:
    """The refusal's message, checked to name no flag or command (the front ends add those)."""
    message = str(exc.value)
    assert not CLI_WORDS.search(message), message
    return message


@pytest.fixture(scope="module")
def pixel_index(tmp_path_factory) -> tuple[Path, Path]:
    """(library, index): a tiny pixel-only index at 16x16."""
    root = tmp_path_factory.mktemp("pixel")
    data = make_tiny_library(root / "data")
    build_index(data, root / "index", pixel_size=16, model="none", evaluate=False)
    return data, root / "index"


@pytest.fixture(scope="module")
def effnet_index(tmp_path_factory) -> tuple[Path, Path]:
    """(library, index): a tiny index with the offline backbone (embeddings, Chroma, DBA)."""
    return tiny_effnet_index(tmp_path_factory.mktemp("effnet"))


def test_open_refuses_another_pixel_size_or_a_model_on_a_pixel_index(pixel_index):
    _, index_dir = pixel_index
    with pytest.raises(IndexError_, match="built at 16x16 pixels, not 32x32") as exc:
        LookalikeIndex.open(index_dir, pixel_size=32)
    assert exc.value.remedy is Remedy.MATCH_PIXEL_SIZE and "rebuild it at 32x32 pixels" in plain_words(exc)
    with pytest.raises(IndexError_, match="no embeddings") as exc:
        LookalikeIndex.open(index_dir, model="effnet")
    assert exc.value.remedy is Remedy.BUILD_WITH_MODEL and "with a model" in plain_words(exc)
    assert LookalikeIndex.open(index_dir, pixel_size=16).manifest.pixel_size == 16


def test_open_refuses_another_model(effnet_index, clip_checkpoint):
    _, index_dir = effnet_index
    with pytest.raises(IndexError_, match="was built with model effnet") as exc:
        LookalikeIndex.open(index_dir, model=f"ViT-B-32:{clip_checkpoint}")
    assert exc.value.remedy is Remedy.MATCH_MODEL
    plain_words(exc)


def test_parse_method_takes_offered_names_and_methods_only(pixel_index, effnet_index):
    index = LookalikeIndex.open(pixel_index[1])
    assert index.parse_method("pixel-cosine+dba+qe") == Method("pixel", "cosine", dba=True, qe=True)
    assert index.parse_method(Method("pixel", "l2")) == Method.parse("pixel-l2")
    for bad in ("effnet-cosine", "pixel-l3", "pixel-hnsw-cosine", Method("effnet", "cosine")):
        with pytest.raises(LookalikeError, match="unknown method") as exc:
            index.parse_method(bad)
        assert "pixel-l1" in str(exc.value)              # the message lists what the index offers
    assert index.methods == [str(m) for m in index.offered] and index.sources() == ["pixel"]
    deep = LookalikeIndex.open(effnet_index[1])
    assert "effnet-hnsw-cosine+dba+qe" in deep.methods and deep.sources() == ["pixel", "effnet"]


def test_default_method(pixel_index, effnet_index):
    assert LookalikeIndex.open(pixel_index[1]).default_method == Method("pixel", "l1")
    assert LookalikeIndex.open(effnet_index[1]).default_method == Method("effnet", "cosine")


def test_search_leaves_out_the_query_itself_by_its_bytes(pixel_index, tmp_path):
    data, index_dir = pixel_index
    index = LookalikeIndex.open(index_dir)
    member = data / "train" / "green" / "train_2.jpg"
    row = index.rels.index("train/green/train_2.jpg")
    copy = tmp_path / "renamed.jpg"
    shutil.copy(member, copy)
    for query in (member, copy, member.read_bytes()):   # the same bytes, wherever they come from
        assert index.self_rows(query) == {row}
        hits, _ = index.search(query, "pixel-l1", k=len(index.rels))
        assert "train/green/train_2.jpg" not in [h.rel for h in hits] and len(hits) == len(index.rels) - 1
    hits, _ = index.search(copy, "pixel-l1", k=3, exclude_self=False)
    assert hits[0].rel == "train/green/train_2.jpg" and hits[0].score == 0
    assert index.self_rows(data / "test" / "green" / "test_0.jpg") == set()


def test_search_text_refusals(pixel_index, effnet_index):
    index = LookalikeIndex.open(pixel_index[1])
    with pytest.raises(LookalikeError, match="empty"):
        index.search_text("   ")
    with pytest.raises(LookalikeError, match="the limit is 300"):
        index.search_text("x" * 301)
    with pytest.raises(ModelError, match=r"this model \(pixels only\) has no text encoder") as exc:
        index.search_text("a red apple")
    assert exc.value.remedy is Remedy.BUILD_WITH_CLIP and "CLIP model" in plain_words(exc)
    deep = LookalikeIndex.open(effnet_index[1])
    with pytest.raises(ModelError, match=r"this model \(effnet") as exc:
        deep.search_text("a red apple")
    assert exc.value.remedy is Remedy.BUILD_WITH_CLIP
    with pytest.raises(LookalikeError, match="k must be"):
        deep.search_text("a red apple", k=0)


def test_composed_refusals_carry_a_remedy(pixel_index, effnet_index):
    data, index_dir = pixel_index
    image = Term(1.0, image=str(data / "test" / "red" / "test_0.jpg"))
    with pytest.raises(IndexError_, match="holds pixels only") as exc:
        LookalikeIndex.open(index_dir).search_composed([image])
    assert exc.value.remedy is Remedy.BUILD_WITH_MODEL
    plain_words(exc)
    deep = LookalikeIndex.open(effnet_index[1])
    with pytest.raises(ModelError, match="cannot use text terms") as no_text:
        deep.search_composed([image, Term(1.0, text="red")])
    assert no_text.value.remedy is Remedy.BUILD_WITH_CLIP
    plain_words(no_text)
    with pytest.raises(LookalikeError, match="a text or an image"):
        deep.search_composed([image, Term(1.0)])
    with pytest.raises(LookalikeError, match="not a pixel one"):
        deep.search_composed([image], "pixel-l1")


def test_prepare_loads_everything_once_then_is_cheap(effnet_index, tmp_path, monkeypatch):
    data, built = effnet_index
    index_dir = tmp_path / "index"
    shutil.copytree(built, index_dir)      # this test deletes files
    warmed = []
    warm = Embedder.warm

    def counted(self: Embedder) -> None:
        warmed.append(self)
        warm(self)

    monkeypatch.setattr(Embedder, "warm", counted)
    index = LookalikeIndex.open(index_dir, data_dir=data)
    assert index.loaded() == set()
    assert index.prepare("pixel-l2")[0] == set() and index.loaded() == set()
    assert index.prepare("effnet-cosine")[0] == {"model"} and len(warmed) == 1   # model and first-call setup
    assert index.prepare("effnet-cosine")[0] == set() and len(warmed) == 1       # once per index
    assert index.prepare(Method("effnet", "cosine", hnsw=True))[0] == {"store"}
    assert index.prepare("effnet-hnsw-cosine+dba+qe")[0] == set()
    assert index.loaded() == {"model", "store"}
    # The re-ranking side (its DBA rows) and the DBA collections are loaded too: the DBA files can go.
    for f in index_dir.glob("dba-*.npy"):
        f.unlink()
    query = data / "test" / "red" / "test_0.jpg"
    for method in ("effnet-cosine+dba+qe", "effnet-hnsw-cosine+dba+qe"):
        assert len(index.search(query, method, k=3)[0]) == 3
    with pytest.raises(IndexError_, match=r"re-ranking \(DBA\) file of pixel .* is missing") as exc:
        index.search(query, "pixel-cosine+dba", k=3)                     # this one was not prepared
    assert exc.value.remedy is Remedy.REPAIR_INDEX
    plain_words(exc)
    with pytest.raises(LookalikeError, match="unknown method"):
        index.prepare("clip-cosine")


def test_prepare_builds_the_pixel_l1_pruners_copies(tmp_path, monkeypatch):
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    build_index(data, tmp_path / "index", pixel_size=64, model="none", evaluate=False)
    pooled = []
    original = L1Pruner.pooled

    def counted(self: L1Pruner) -> list[np.ndarray]:
        pooled.append(1)
        return original(self)

    monkeypatch.setattr(L1Pruner, "pooled", counted)
    index = LookalikeIndex.open(tmp_path / "index")
    index.prepare("pixel-l2")
    assert pooled == []                                  # only pixel-l1 uses the pruner
    assert index.prepare("pixel-l1")[0] == set() and pooled == [1]
    assert index.l1_pruner is not None
    hits, _ = index.search(data / "test" / "red" / "test_0.jpg", "pixel-l1", k=3)
    full = index.pixels.scores(index.query_vectors([load_image(data / "test" / "red" / "test_0.jpg")], "pixel"), "l1")
    assert [h.score for h in hits] == sorted(full.reshape(-1))[:3]    # the pruned ranking is the exact one


def test_hits_turn_ranked_rows_into_hits(pixel_index):
    data, index_dir = pixel_index
    index = LookalikeIndex.open(index_dir)
    assert index.hits([(2, 0.5), (0, 0.25)]) == [
        Hit(1, index.paths[2], index.rels[2], str(index.labels[2]), 0.5),
        Hit(2, index.paths[0], index.rels[0], str(index.labels[0]), 0.25)]
    assert index.paths[2] == data / index.rels[2]
    query = data / "test" / "blue" / "test_1.jpg"
    vec = index.query_vectors([load_image(query)], "pixel")
    for name in ("pixel-corr", "pixel-cosine+dba+qe"):
        method = index.parse_method(name)
        assert index.hits(index.rank(vec, method, 4)[0]) == index.search(query, method, k=4)[0]


def test_hnsw_and_reranked_hnsw_leave_out_excluded_rows(effnet_index):
    data, index_dir = effnet_index
    index = LookalikeIndex.open(index_dir)
    vec = index.query_vectors([load_image(data / "train" / "red" / "train_0.jpg")], "effnet")
    for name in ("effnet-hnsw-cosine", "effnet-hnsw-l2", "effnet-hnsw-cosine+dba+qe"):
        method = index.parse_method(name)
        full = [row for row, _ in index.rank(vec, method, len(index.rels))[0]]
        assert sorted(full) == list(range(len(index.rels))), name
        skip = set(full[:3])
        kept = [row for row, _ in index.rank(vec, method, 5, [skip])[0]]
        assert len(kept) == 5 and not skip & set(kept), name
        if not method.reranked:   # (re-ranked, the excluded rows also leave the query's expansion)
            assert kept == [r for r in full if r not in skip][:5], name


def test_an_interrupted_chroma_sync_refuses_hnsw_only(effnet_index, tmp_path):
    data, index_dir = effnet_index
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    manifest = Manifest.read(copy)
    assert manifest.chroma is not None
    manifest.chroma = manifest.chroma.marked_syncing()
    manifest.write(copy)
    index = LookalikeIndex.open(copy, data_dir=data)
    query = data / "test" / "red" / "test_0.jpg"
    for method in ("effnet-hnsw-cosine", "effnet-hnsw-cosine+dba+qe"):
        with pytest.raises(IndexError_, match="stopped while it was updating the Chroma collections") as exc:
            index.search(query, method, k=3)
        assert exc.value.remedy is Remedy.REPAIR_INDEX and "rerun the build to repair" in plain_words(exc)
    assert len(index.search(query, "effnet-cosine", k=3)[0]) == 3
    assert np.all(np.diff([h.score for h in index.search(query, "effnet-cosine+dba+qe", k=3)[0]]) <= 0)


def test_matrix_gives_each_sources_library_vectors(pixel_index, effnet_index):
    index = LookalikeIndex.open(effnet_index[1])
    assert index.matrix("pixel") is index.pixels and index.matrix("effnet") is index.embeddings
    assert index.matrix("effnet").data.shape == (len(index.rels), index.manifest.embedder.dim)
    with pytest.raises(LookalikeError, match="no effnet vectors; it holds pixel"):
        LookalikeIndex.open(pixel_index[1]).matrix("effnet")


def test_best_method_is_the_best_measured_one_else_the_default(tmp_path):
    from retrieval.evaluation_file import read
    from retrieval.indexing import build_index
    data = make_tiny_library(tmp_path / "data")
    build_index(data, tmp_path / "index", model="none", evaluate=True)
    index = LookalikeIndex.open(tmp_path / "index")
    report = read(tmp_path / "index")
    assert report is not None
    best = max(report["methods"], key=lambda name: report["methods"][name]["map"])
    assert str(index.best_method) == best
    (tmp_path / "index" / "evaluation.json").unlink()
    assert LookalikeIndex.open(tmp_path / "index").best_method == index.default_method
