"""A library that changes while the index build runs (issue 19, class 5).

Files are deleted and replaced at fixed points of a real build (effnet, pixels, Chroma): after the
scan has hashed them, or while the model streams the library batch by batch. Fails before round 3:
a deletion made the whole build fail (exit 2, "decoded for pixels but failed to embed"), and a
replaced file was indexed with pixels from one version, embeddings from the other and the hash of
the first.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import build_index
from conftest import make_tiny_library
from retrieval import indexing
from retrieval.embedders import Embedder, load_embedder
from retrieval.images import load_image, resize_pixels
from retrieval.manifest import Manifest
from retrieval.runner import DONE_WITH_SKIPS
from retrieval.search import LookalikeIndex

BATCH = 4   # 18 library images: model batches of rows 0-3, 4-7, 8-11, 12-15, 16-17


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _new_version(path: Path, seed: int) -> bytes:
    """Replace the file with a different picture (a checkerboard no library image resembles)."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(np.kron(tile, np.ones((12, 12, 1), np.uint8))).save(path, "JPEG", quality=95)
    return path.read_bytes()


@pytest.fixture
def library(tmp_path) -> Path:
    return make_tiny_library(tmp_path / "data")


def _rels(data: Path) -> list[str]:
    return sorted(p.relative_to(data).as_posix() for p in (data / "train").rglob("*.jpg"))


def _build(data: Path, index: Path, *extra: str) -> int:
    return build_index.main(["index", "--data", str(data), "--index", str(index), "--model", "effnet",
                             "--precision", "fp32", "--no-eval", "--batch-size", str(BATCH), *extra])


def _check_consistent(index_dir: Path, rel: str, data: bytes, effnet) -> dict[str, float]:
    """The row of `rel` holds one version, `data`: its hash, pixel row and vector, and a query with
    those bytes ranks it first in every method (pixel-l1 at distance 0, cosine at about 1)."""
    index = LookalikeIndex.open(index_dir)
    row = index.rels.index(rel)
    assert index.manifest.items[row]["sha256"] == _sha(data)
    want_pixels = resize_pixels(load_image(data), index.manifest.pixel_size).reshape(-1)
    assert np.array_equal(np.load(index_dir / index.manifest.pixels_file)[row], want_pixels)
    stored = np.load(index_dir / index.manifest.embedder.file)[row]
    want = effnet.encode_images([load_image(data)])[0]
    assert float(stored @ want) > 0.9999
    scores = {}
    for method in ("pixel-l1", "effnet-cosine", "effnet-hnsw-cosine"):
        hits, _ = index.search(data, method, k=3, exclude_self=False)
        assert hits[0].rel == rel, (method, [(h.rel, h.score) for h in hits])
        scores[method] = hits[0].score
    assert scores["pixel-l1"] == 0
    assert scores["effnet-cosine"] > 0.9999 and scores["effnet-hnsw-cosine"] > 0.9999
    return scores


@pytest.fixture(scope="module")
def effnet():
    return load_embedder("effnet")


def test_files_deleted_and_replaced_while_the_model_streams(library, tmp_path, monkeypatch, capsys, effnet):
    """After the model's first batch: three files of later batches are deleted, three replaced;
    two files of the first batch (already read) are replaced too. Exit 3, the deleted are skipped
    as "disappeared during the build", each replaced file is one consistent version, and the next
    build re-reads exactly the files that changed after their read."""
    rels = _rels(library)
    deleted, replaced, late = rels[12:15], rels[15:18], rels[0:2]
    versions: dict[str, bytes] = {}
    original = Embedder.encode_files

    def changing(self, paths, **kw):
        for n, batch in enumerate(original(self, paths, **kw)):
            yield batch
            if n == 0 and not versions:
                for rel in deleted:
                    (library / rel).unlink()
                for k, rel in enumerate(replaced + late):
                    old = (library / rel).read_bytes()
                    versions[rel] = _new_version(library / rel, k) if rel in replaced else old
                    if rel in late:
                        _new_version(library / rel, 10 + k)

    monkeypatch.setattr(Embedder, "encode_files", changing)
    index_dir = tmp_path / "index"
    rc = _build(library, index_dir)
    out = capsys.readouterr().out
    assert rc == DONE_WITH_SKIPS, out
    manifest = Manifest.read(index_dir)
    assert {s["path"]: s["kind"] for s in manifest.skipped} == {rel: "disappeared during the build" for rel in deleted}
    assert "3 disappeared during the build" in out and "could not be read" in out
    assert [it["path"] for it in manifest.items] == [r for r in rels if r not in deleted]
    scores = {rel: _check_consistent(index_dir, rel, versions[rel], effnet) for rel in replaced + late}
    print(f"exit {rc}; skipped {[(s['path'], s['kind']) for s in manifest.skipped]}; top-1 scores {scores}")

    monkeypatch.setattr(Embedder, "encode_files", original)
    summary = indexing.build_index(library, index_dir, model="effnet", precision="fp32", evaluate=False)
    assert summary["embedded"] == len(late) and not summary["skipped"]   # the late replacements, seen now
    for rel in replaced + late:
        _check_consistent(index_dir, rel, (library / rel).read_bytes(), effnet)


def test_file_replaced_between_the_scan_and_a_pixel_only_read(library, tmp_path, monkeypatch, effnet):
    """A rebuild at another pixel size reuses the vectors and reads only pixels; a file replaced
    after the scan hashed it is noticed by that read and gets its vector from the same bytes too."""
    index_dir = tmp_path / "index"
    assert _build(library, index_dir, "--pixel-size", "16") == 0
    target = _rels(library)[5]
    scan = indexing._scan
    new: dict[str, bytes] = {}

    def scan_then_replace(*args, **kw):
        result = scan(*args, **kw)
        new[target] = _new_version(library / target, 99)
        return result

    monkeypatch.setattr(indexing, "_scan", scan_then_replace)
    summary = indexing.build_index(library, index_dir, pixel_size=24, model="effnet", precision="fp32",
                                   evaluate=False, batch_size=BATCH)
    assert summary["embedded"] == 1 and summary["changed_during_build"] == [target]
    assert summary["pixels_decoded"] == 18
    _check_consistent(index_dir, target, new[target], effnet)


def test_a_file_gone_before_its_pixel_read_is_skipped(library, tmp_path, monkeypatch):
    """Pixel-only build: a file deleted after the scan is skipped with its reason, exit 3."""
    target = _rels(library)[3]
    scan = indexing._scan

    def scan_then_delete(*args, **kw):
        result = scan(*args, **kw)
        (library / target).unlink()
        return result

    monkeypatch.setattr(indexing, "_scan", scan_then_delete)
    rc = build_index.main(["index", "--data", str(library), "--index", str(tmp_path / "i"), "--model", "none",
                           "--no-eval"])
    assert rc == DONE_WITH_SKIPS
    manifest = Manifest.read(tmp_path / "i")
    assert [(s["path"], s["kind"]) for s in manifest.skipped] == [(target, "disappeared during the build")]
    assert len(manifest.items) == 17
