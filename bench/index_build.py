"""The two index-build paths that `build_vs_seed` times: ours (batched encode_files +
VectorStore.upsert) and the seed's add_embedding (one image, one model call, then collection.add).

Models: open_clip ViT-B-32 with random weights (speed does not depend on the weights) and the
efficientnet-lite0 backbone. Without a library folder, JPEGs are made from the Tux Paint photo stamps.
"""
from __future__ import annotations

import sys
from pathlib import Path

from retrieval.embedders import Embedder
from retrieval.images import is_image_name, load_image
from retrieval.vectorstore import VectorStore

STAMPS = Path("/usr/share/tuxpaint/stamps")


def library(data: Path, limit: int, scratch: Path) -> list[Path]:
    """Up to `limit` image files under data/, or JPEGs made from the Tux Paint stamps."""
    if data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.is_file() and is_image_name(p.name))
        if files:
            return files[:limit]
    if not STAMPS.is_dir():
        sys.exit(f"{data} has no images and {STAMPS} is missing (apt-get install tuxpaint-stamps-default)")
    out = []
    for src in sorted(STAMPS.rglob("*.png"))[:limit]:
        dst = scratch / f"{len(out):05d}.jpg"
        load_image(src).save(dst, quality=90)
        out.append(dst)
    print(f"{data} has no images: made {len(out)} JPEGs from {STAMPS}")
    return out


def seed_add_embedding(emb: Embedder, files: list[Path], client) -> None:
    """The seed's add_embedding: per image, open it, one model call (preprocess, features, normalise:
    `encode_images` of that one image); then one collection.add at the end."""
    collection = client.get_or_create_collection("seed-l2", configuration={"hnsw": {"space": "l2"}},
                                                 embedding_function=None)
    ids, embeddings = [], []
    for i, path in enumerate(files):
        ids.append(f"id_{i}")
        embeddings.append(emb.encode_images([load_image(path)])[0])
    collection.add(ids=ids, embeddings=embeddings)


def ours(emb: Embedder, files: list[Path], store: VectorStore, batch_size: int, workers: int) -> None:
    """What the index build does: stream batches, upsert each into both spaces."""
    for ok, vecs in emb.encode_files(files, batch_size=batch_size, workers=workers, progress=False):
        store.upsert([str(files[i]) for i in ok], vecs, [{"i": i} for i in ok])


def make(kind: str) -> Embedder:
    if kind == "clip":
        from retrieval.embedders.openclip import OpenClipEmbedder
        return OpenClipEmbedder.random_init("ViT-B-32")
    from retrieval.embedders.backbone import EffnetEmbedder
    return EffnetEmbedder()
