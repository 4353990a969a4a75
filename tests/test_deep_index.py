"""Deep indexes end to end: embeddings + Chroma beside the pixels, every method, incremental
re-index, model mismatch, text search, and the same against a real Chroma server."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from retrieval.cli import main as cli_main
from retrieval.errors import IndexError_, ModelError
from retrieval.evaluate import evaluate_index
from retrieval.indexing import build_index
from retrieval.manifest import Manifest
from retrieval.paths import EVALUATION
from retrieval.search import LookalikeIndex
from retrieval.vectorstore import VectorStore


def test_backbone_beats_best_pixel_metric_by_2x(sample_effnet_index):
    report = json.loads((sample_effnet_index / EVALUATION).read_text())
    methods = report["methods"]
    assert {"effnet-l1", "effnet-l2", "effnet-cosine", "effnet-corr",
            "effnet-hnsw-l2", "effnet-hnsw-cosine"} <= set(methods)
    best_pixel = max(v["map"] for k, v in methods.items() if k.startswith("pixel-"))
    best_deep = max(v["map"] for k, v in methods.items() if k.startswith("effnet-"))
    assert best_deep >= 2 * best_pixel, (best_deep, best_pixel)


def test_hnsw_recall_at_10_against_exact_cosine(sample_effnet_index, sample_data):
    index = LookalikeIndex.open(sample_effnet_index)
    exact, approx = index.parse_method("effnet-cosine"), index.parse_method("effnet-hnsw-cosine")
    queries = sorted((sample_data / "test").rglob("*.jpg"))
    from retrieval.images import load_image
    vecs = index.query_vectors([load_image(q) for q in queries], "effnet")
    want = index.rank(vecs, exact, 10)
    got = index.rank(vecs, approx, 10)
    recall = np.mean([len({i for i, _ in w} & {i for i, _ in g}) / 10 for w, g in zip(want, got)])
    assert recall >= 0.99
    # Scores agree too: HNSW cosine is reported as a similarity, like the exact method.
    assert got[0][0][1] == pytest.approx(want[0][0][1], abs=1e-4)


def test_every_method_answers_a_query_in_order(sample_effnet_index, sample_data):
    index = LookalikeIndex.open(sample_effnet_index)
    query = sorted((sample_data / "test" / "planet").glob("*.jpg"))[0]
    for method in index.methods:
        hits, _ = index.search(query, method, k=5)
        assert len(hits) == 5
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=index.parse_method(method).higher_is_better), method


def test_sample_effnet_index_has_no_text_search(sample_effnet_index, capsys):
    index = LookalikeIndex.open(sample_effnet_index)
    with pytest.raises(ModelError, match="has no text encoder"):
        index.search_text("a red apple")
    assert cli_main(["search", "--text", "a red apple", "--index", str(sample_effnet_index)]) == 2
    assert "no text encoder" in capsys.readouterr().err


@pytest.fixture(params=["embedded", "server"])
def chroma_url(request):
    return request.getfixturevalue("chroma_server") if request.param == "server" else None


def test_incremental_reindex_embeds_only_new_images(tiny_library, tmp_path, chroma_url):
    index_dir = tmp_path / "index"
    first = build_index(tiny_library, index_dir, model="effnet", chroma_url=chroma_url, evaluate=False)
    assert first["embedded"] == 18
    for i in range(3):  # add three, delete two
        shutil.copy(tiny_library / "test" / "red" / "test_0.jpg", tiny_library / "train" / "red" / f"added{i}.jpg")
    deleted = ["train/blue/train_0.jpg", "train/green/train_3.jpg"]
    for rel in deleted:
        (tiny_library / rel).unlink()
    second = build_index(tiny_library, index_dir, model="effnet", chroma_url=chroma_url, evaluate=False)
    assert second["embedded"] == 3 and second["images"] == 19
    manifest = Manifest.read(index_dir)
    store = VectorStore.open(path=None if chroma_url else index_dir / "chroma", url=chroma_url,
                             prefix=manifest.chroma.prefix)
    assert store.count() == {"l2": 19, "cosine": 19}
    assert store.ids() == {it["path"] for it in manifest.items}
    index = LookalikeIndex.open(index_dir)
    for method in index.methods:
        hits, _ = index.search(tiny_library / "test" / "blue" / "test_1.jpg", method, k=19, exclude_self=False)
        assert not set(deleted) & {h.rel for h in hits}, method
        assert len(hits) == 19
    third = build_index(tiny_library, index_dir, model="effnet", chroma_url=chroma_url, evaluate=False)
    assert third["embedded"] == 0
    if chroma_url:
        store.reset()


def test_chroma_out_of_step_is_detected_and_repaired(tiny_library, tmp_path):
    index_dir = tmp_path / "index"
    build_index(tiny_library, index_dir, model="effnet", evaluate=False)
    manifest = Manifest.read(index_dir)
    store = VectorStore.open(path=index_dir / "chroma", prefix=manifest.chroma.prefix)
    store.delete(["train/red/train_0.jpg"])  # as if a build died between Chroma and the manifest
    del store
    index = LookalikeIndex.open(index_dir)
    with pytest.raises(IndexError_, match="interrupted build"):
        index.search(tiny_library / "test" / "red" / "test_0.jpg", "effnet-hnsw-cosine")
    again = build_index(tiny_library, index_dir, model="effnet", evaluate=False)
    assert again["embedded"] == 0
    hits, _ = LookalikeIndex.open(index_dir).search(tiny_library / "test" / "red" / "test_0.jpg",
                                                    "effnet-hnsw-cosine", k=18)
    assert "train/red/train_0.jpg" in {h.rel for h in hits}


def test_clip_checkpoint_index_text_search_and_model_mismatch(tiny_library, tmp_path, clip_checkpoint, capsys):
    spec = f"ViT-B-32:{clip_checkpoint}"
    index_dir = tmp_path / "clip-index"
    build_index(tiny_library, index_dir, model=spec, evaluate=False)
    index = LookalikeIndex.open(index_dir, model=spec)
    assert index.has_text and "clip-hnsw-cosine" in index.methods
    hits, _ = index.search_text("a red picture", k=4)
    assert len(hits) == 4 and all(-1 <= h.score <= 1 for h in hits)
    hits_hnsw, _ = index.search_text("a red picture", "clip-hnsw-cosine", k=4)
    assert [h.rel for h in hits_hnsw] == [h.rel for h in hits]
    assert cli_main(["search", "--text", "a red picture", "--index", str(index_dir), "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # Model loading is reported on its own line, apart from the query's time; then header + 3 hits.
    assert lines[0].startswith("# loaded the model in ") and lines[0].endswith(" s")
    assert lines[1].startswith("# clip-cosine (higher is more similar), query ") and lines[1].endswith(" ms")
    assert len(lines) == 6
    # An index built with model A refuses model B, and the other way round.
    with pytest.raises(IndexError_, match="was built with model open_clip:ViT-B-32"):
        LookalikeIndex.open(index_dir, model="effnet")
    effnet_dir = tmp_path / "effnet-index"
    build_index(tiny_library, effnet_dir, model="effnet", evaluate=False)
    with pytest.raises(IndexError_, match="was built with model effnet"):
        LookalikeIndex.open(effnet_dir, model=spec)


def test_evaluation_covers_every_method(sample_effnet_index):
    report = evaluate_index(LookalikeIndex.open(sample_effnet_index), methods=None)
    assert set(report["methods"]) == set(LookalikeIndex.open(sample_effnet_index).methods)
    assert len(report["methods"]) == 10 + 8   # plain, and re-ranked (3 pixel, 4 effnet, 1 through Chroma)
