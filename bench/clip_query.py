"""CLIP query: the seed's naive CLIP search (embed every library image on every query) versus ours
(embed the library once at index time; per query embed only the query and rank stored vectors).

The seed's CLIP variant of get_l1_score reads every library image at 448x448 per query and calls
OpenCLIPEmbeddingFunction._encode_image on each one (one image per model call), then takes L1 to the
query embedding. Both sides here use the same open_clip ViT-B-32 with random weights (speed does not
depend on the weights; real CLIP weights cannot be fetched offline): ours loads them from a local
checkpoint through the product path, `build_index --model ViT-B-32:/path/ckpt.pt`.

    python -m bench.clip_query [--data data] [--seed-queries 2] [--queries 20] [--library-limit N]
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.images import is_image_name
from retrieval.indexing import build_index
from retrieval.search import LookalikeIndex

from .common import add_check, add_table, cli, fmt_ms, fmt_ratio, median_ms, result, sample_library, timed
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


def subset_library(train: Path, limit: int, out: Path) -> None:
    """Copy `limit` images, round-robin over the classes, into out/<class>/ (copies: the library scan
    follows no link that leads out of the library)."""
    classes = [sorted(p for p in d.iterdir() if is_image_name(p.name)) for d in sorted(train.iterdir()) if d.is_dir()]
    for f in [f for row in itertools.zip_longest(*classes) for f in row if f is not None][:limit]:
        (out / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / f.parent.name / f.name)


def run(data: str | None = None, seed_queries: int = 2, queries: int = 20, model: str = "ViT-B-32",
        library_limit: int | None = None) -> dict:
    """library_limit: index (and time the seed on) only that many library images, for a quick run."""
    from retrieval.embedders.openclip import OpenClipEmbedder

    lib = sample_library(data)
    res = result("clip_query",
                 f"CLIP query: the seed's re-embed-everything search versus our index ({model}, random weights)",
                 {"data": str(lib), "seed_queries": seed_queries, "queries": queries, "model": model,
                  "library_limit": library_limit})
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        if library_limit:
            subset_library(lib / "train", library_limit, tmp / "lib" / "train")
            shutil.copytree(lib / "test", tmp / "lib" / "test")
            lib = tmp / "lib"
        test = sorted(p for p in (lib / "test").rglob("*") if p.is_file() and is_image_name(p.name))
        n_lib = sum(1 for p in (lib / "train").rglob("*") if p.is_file() and is_image_name(p.name))
        emb = OpenClipEmbedder.random_init(model)
        seed_ms = median_ms(timed(partial(seed_clip_l1_score, emb, f"{lib / 'train'}/", str(test[0]),
                                          (SEED_SIZE, SEED_SIZE)), repeat=seed_queries, warmup=0))
        # Ours: the product path with the same weights from a local checkpoint.
        ckpt = tmp / f"{model}-random.pt"
        torch.save(emb.model.state_dict(), ckpt)
        del emb
        start = time.perf_counter()
        build_index(lib, tmp / "index", model=f"{model}:{ckpt}", evaluate=False)
        build_s = time.perf_counter() - start
        index = LookalikeIndex.open(tmp / "index")
        rows = [[f"seed: embed all {n_lib} library images per query, L1", fmt_ms(seed_ms), "1x (baseline)"]]
        ours = {}
        for method in ("clip-l1", "clip-cosine", "clip-hnsw-cosine"):
            ours[method] = median_ms(timed(partial(index.search, method=method, k=5), repeat=queries, args=test))
            rows.append([f"ours: embed the query only, `{method}`", fmt_ms(ours[method]),
                         fmt_ratio(seed_ms / ours[method])])
        add_table(res, f"Median per query (k=5) on CPU; {seed_queries} seed and {queries} indexed queries.",
                  ["approach", "median query (ms)", "speed-up vs seed"], rows)
        res["figures"] = {"seed_ms": seed_ms, "seed_images_timed": n_lib, "library": n_lib, "ours_ms": ours,
                          "index_build_s": build_s}
        add_check(res, "CLIP query, ours (`clip-l1`) vs the seed's", "faster (no target in the issue)",
                  fmt_ratio(seed_ms / ours["clip-l1"]), None)
        res["notes"].append(f"Building our index once (pixels + {model} embeddings + Chroma, {n_lib} images) took "
                            f"{build_s:.0f} s, about {1000 * build_s / seed_ms:.1f} seed queries' worth.")
    return res


if __name__ == "__main__":
    cli(run)
