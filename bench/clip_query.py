"""CLIP query: the seed's naive CLIP search (embed every library image on every query) versus ours
(embed the library once at index time; per query embed only the query and rank stored vectors).

The seed's CLIP variant of get_l1_score reads every library image at 448x448 per query and calls
OpenCLIPEmbeddingFunction._encode_image on each one (one image per model call), then takes L1 to the
query embedding. Both sides here use the same open_clip ViT-B-32 with random weights (speed does not
depend on the weights; real CLIP weights cannot be fetched offline): ours loads them from a local
checkpoint through the product path, `build_index --model ViT-B-32:/path/ckpt.pt`.

    python -m bench.clip_query [--data data] [--seed-queries 2] [--seed-limit N] [--queries 20]

--seed-limit N times the seed on an N-image subset of the library (a few images per class) and
scales its time linearly to the whole library: the seed's cost is one model call per library image.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.images import is_image_name
from retrieval.indexing import build_index
from retrieval.search import LookalikeIndex

from .common import (cli, add_check, add_table, fmt_ms, fmt_ratio, median_ms, result, sample_library,
                     stopwatch, timed)
from .pixel_query import seed_absolute_difference, seed_folder_to_images, seed_read_image_from_path

SEED_SIZE = 448


def seed_get_single_image_embedding(emb, image: np.ndarray) -> np.ndarray:
    """OpenCLIPEmbeddingFunction._encode_image: one PIL image, one model call, normalise, to list."""
    pil = Image.fromarray(image)
    with torch.no_grad():
        feats = emb.model.encode_image(emb.preprocess(pil).unsqueeze(0).to(emb.device))
        feats /= feats.norm(dim=-1, keepdim=True)
    return np.array(feats.squeeze().cpu().numpy().tolist())


def seed_clip_l1_score(emb, root_img_path: str, query_path: str, size: tuple[int, int]):
    """The seed's CLIP get_l1_score: re-reads and re-embeds the whole library for every query."""
    class_names = sorted(os.listdir(root_img_path))
    query = seed_read_image_from_path(query_path, size)
    query_embedding = seed_get_single_image_embedding(emb, query)
    ls_path_score = []
    for folder in os.listdir(root_img_path):
        if folder in class_names:
            images_np, images_path = seed_folder_to_images(root_img_path + folder, size)
            embedding_list = [seed_get_single_image_embedding(emb, images_np[i].astype(np.uint8))
                              for i in range(images_np.shape[0])]
            rates = seed_absolute_difference(query_embedding, np.stack(embedding_list))
            ls_path_score.extend(list(zip(images_path, rates)))
    return query, ls_path_score


def subset_library(train: Path, limit: int, out: Path) -> int:
    """Symlink about `limit` images, round-robin over the classes, into out/<class>/."""
    classes = {d.name: sorted(p for p in d.iterdir() if is_image_name(p.name))
               for d in sorted(train.iterdir()) if d.is_dir()}
    picked = 0
    for i in range(max(len(v) for v in classes.values())):
        for name, files in classes.items():
            if picked >= limit:
                return picked
            if i < len(files):
                (out / name).mkdir(parents=True, exist_ok=True)
                (out / name / files[i].name).symlink_to(files[i])
                picked += 1
    return picked


def run(data: str | None = None, seed_queries: int = 2, seed_limit: int | None = None, queries: int = 20,
        model: str = "ViT-B-32", library_limit: int | None = None) -> dict:
    """library_limit: index (and time the seed on) only that many library images, for a quick run."""
    from retrieval.embedders.openclip import OpenClipEmbedder

    lib = sample_library(data)
    small = None
    if library_limit:
        small = tempfile.TemporaryDirectory()
        sub = Path(small.name)
        subset_library(lib / "train", library_limit, sub / "train")
        (sub / "test").symlink_to((lib / "test").resolve())
        lib = sub
    train = lib / "train"
    test = sorted(p for p in (lib / "test").rglob("*") if p.is_file() and is_image_name(p.name))
    n_lib = sum(1 for p in train.rglob("*") if p.is_file() and is_image_name(p.name))
    res = result("clip_query", f"CLIP query: the seed's re-embed-everything search versus our index ({model}, random weights)",
                 {"data": str(lib), "seed_queries": seed_queries, "seed_limit": seed_limit, "queries": queries,
                  "model": model, "library_limit": library_limit})
    with stopwatch(res), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        emb = OpenClipEmbedder.random_init(model)
        # The seed, on the whole library or on a subset scaled up linearly.
        root = train
        n_seed = n_lib
        if seed_limit and seed_limit < n_lib:
            root = tmp / "subset"
            n_seed = subset_library(train, seed_limit, root)
        seed_t = timed(lambda: seed_clip_l1_score(emb, str(root) + "/", str(test[0]), (SEED_SIZE, SEED_SIZE)),
                       repeat=seed_queries, warmup=0)
        seed_ms = median_ms(seed_t) * n_lib / n_seed
        scaled = n_seed != n_lib
        # Ours: the product path with the same weights from a local checkpoint.
        ckpt = tmp / f"{model}-random.pt"
        torch.save(emb.model.state_dict(), ckpt)
        del emb
        start = time.perf_counter()
        build_index(lib, tmp / "index", model=f"{model}:{ckpt}", evaluate=False)
        build_s = time.perf_counter() - start
        index = LookalikeIndex.open(tmp / "index")
        rows = [[f"seed: embed all {n_lib} library images per query, L1" + (" (scaled)" if scaled else ""),
                 fmt_ms(seed_ms), "1x (baseline)"]]
        ours = {}
        for method in ("clip-l1", "clip-cosine", "clip-hnsw-cosine"):
            it = iter([test[i % len(test)] for i in range(queries + 1)])
            ours[method] = median_ms(timed(lambda: index.search(next(it), method, k=5), repeat=queries, warmup=1))
            rows.append([f"ours: embed the query only, `{method}`", fmt_ms(ours[method]), fmt_ratio(seed_ms / ours[method])])
        add_table(res, f"Median per query (k=5) on CPU; {seed_queries} seed and {queries} indexed queries.",
                  ["approach", "median query (ms)", "speed-up vs seed"], rows)
        res["figures"] = {"seed_ms": seed_ms, "seed_images_timed": n_seed, "library": n_lib, "ours_ms": ours,
                          "index_build_s": build_s}
        add_check(res, "CLIP query, ours (`clip-l1`) vs the seed's", "faster (no target in the issue)",
                  fmt_ratio(seed_ms / ours["clip-l1"]), None)
        res["notes"].append(f"Building our index once (pixels + {model} embeddings + Chroma, {n_lib} images) took "
                            f"{build_s:.0f} s, about {1000 * build_s / seed_ms:.1f} seed queries' worth.")
        if scaled:
            res["notes"].append(f"The seed was timed on {n_seed} of the {n_lib} library images and scaled by "
                                f"{n_lib}/{n_seed}: its cost is one batch-1 model call per library image.")
    if small is not None:
        small.cleanup()
    return res


if __name__ == "__main__":
    cli(run)
