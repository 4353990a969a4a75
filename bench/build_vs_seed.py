"""Index build, repeated: ours (batched encode_files + VectorStore.upsert) against the seed's
add_embedding (one image -> one model call, then one collection.add), for each model, `repeats`
times interleaved, for the suite's medians. Models: open_clip ViT-B-32 with random weights (speed
does not depend on the weights) and the efficientnet-lite0 backbone.

    python -m bench.build_vs_seed [--data data/train] [--limit 128] [--repeats 3] [--models clip effnet]
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from retrieval.embedders import Embedder
from retrieval.images import is_image_name, load_image
from retrieval.vectorstore import VectorStore

from .common import PeakMemory, add_check, add_table, cli, fmt_ratio, result, sample_library


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


def measure(build: Callable[[], None]) -> tuple[float, float]:
    """(seconds, peak MB of the process) of one build."""
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        build()
        seconds = time.perf_counter() - t0
    return seconds, pm.peak_mb


def run(data: str | None = None, limit: int = 128, repeats: int = 3, batch_size: int = 32, workers: int = 2,
        models: tuple[str, ...] = ("clip", "effnet")) -> dict:
    import chromadb
    from chromadb.config import Settings

    logging.getLogger("chromadb").setLevel(logging.WARNING)
    data_dir = Path(data) if data else sample_library() / "train"
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and is_image_name(p.name))[:limit]
    res = result("build_vs_seed", "Index build: ours (batched, streamed) versus the seed's one image per model call",
                 {"data": str(data_dir), "limit": limit, "repeats": repeats, "batch_size": batch_size,
                  "workers": workers, "models": list(models)})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for kind in models:
            emb = make(kind)
            emb.encode_images([load_image(files[0])] * 2)   # warm-up (allocator, kernels)
            runs: dict[str, list[tuple[float, float]]] = {"ours": [], "seed": []}
            for r in range(repeats):
                store = VectorStore.open(path=scratch / f"chroma-{kind}-{r}", prefix=f"bench-{kind}")
                runs["ours"].append(measure(partial(ours, emb, files, store, batch_size, workers)))
                client = chromadb.PersistentClient(path=str(scratch / f"seed-{kind}-{r}"),
                                                   settings=Settings(anonymized_telemetry=False))
                runs["seed"].append(measure(partial(seed_add_embedding, emb, files, client)))
                del store, client
            ours_rate, seed_rate = (len(files) / statistics.median(s for s, _ in runs[w]) for w in ("ours", "seed"))
            rows.append([kind, f"{ours_rate:.1f}", f"{seed_rate:.1f}", fmt_ratio(ours_rate / seed_rate),
                         f"{max(mb for _, mb in runs['ours']):.0f}", f"{max(mb for _, mb in runs['seed']):.0f}"])
            res["figures"][kind] = {"ours_img_s": ours_rate, "seed_img_s": seed_rate}
            add_check(res, f"index build ({kind}), ours vs seed", "faster (no target in the issue)",
                      fmt_ratio(ours_rate / seed_rate), None)
            del emb
    add_table(res, f"{len(files)} images from {data_dir}, median of {repeats} interleaved runs each; batch "
                   f"{batch_size}, {workers} decode threads for ours; torch threads {torch.get_num_threads()}.",
              ["model", "ours img/s", "seed img/s", "speed-up", "peak MB, ours", "peak MB, seed"], rows)
    res["notes"].append("Ours writes both spaces (l2 + cosine); the seed run writes one collection (the seed "
                        "itself embeds everything again for its second, cosine collection).")
    res["notes"].append("Peak MB is the process's resident peak during that phase (models loaded included).")
    return res


if __name__ == "__main__":
    cli(run)
