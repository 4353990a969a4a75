"""Pixel query: the seed's approach versus ours, on the sample library, in one process.

The seed (course notebook, get_l1_score & co.) re-reads and resizes every library image on every
query at 448x448, then applies the metric. Ours decodes and resizes once at index time and answers
each query with one pass over a prepared matrix.

    python bench/pixel_query.py [--data data] [--queries 20] [--seed-queries 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import machine_info, median_ms, peak_rss_mb, sample_library, timed

from retrieval.indexing import DEFAULT_PIXEL_SIZE, build_index
from retrieval.search import LookalikeIndex


def seed_read_image_from_path(path, size):
    im = Image.open(path).convert("RGB").resize(size)
    return np.array(im)


def seed_folder_to_images(folder, size):
    list_dir = [folder + "/" + name for name in os.listdir(folder)]
    images_np = np.zeros(shape=(len(list_dir), *size, 3))
    images_path = []
    for i, path in enumerate(list_dir):
        images_np[i] = seed_read_image_from_path(path, size)
        images_path.append(path)
    return images_np, np.array(images_path)


def seed_absolute_difference(query, data):
    axis_batch_size = tuple(range(1, len(data.shape)))
    return np.sum(np.abs(data - query), axis=axis_batch_size)


def seed_get_l1_score(root_img_path, query_path, size):
    """The seed's get_l1_score, verbatim apart from names: rescans the library per query."""
    class_names = sorted(os.listdir(root_img_path))
    query = seed_read_image_from_path(query_path, size)
    ls_path_score = []
    for folder in os.listdir(root_img_path):
        if folder in class_names:
            path = root_img_path + folder
            images_np, images_path = seed_folder_to_images(path, size)
            rates = seed_absolute_difference(query, images_np)
            ls_path_score.extend(list(zip(images_path, rates)))
    return query, ls_path_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--seed-queries", type=int, default=3)
    args = ap.parse_args()
    data = sample_library(args.data)
    queries = sorted((data / "test").rglob("*.jpg"))
    print(f"# pixel query benchmark\n{machine_info()}\nlibrary: {data}, {len(queries)} test queries")

    seed_t = timed(lambda: seed_get_l1_score(str(data / "train") + "/", str(queries[0]), (448, 448)),
                   repeat=args.seed_queries, warmup=0)
    rows = [("seed (rescan per query)", 448, median_ms(seed_t), 1.0)]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted({448, DEFAULT_PIXEL_SIZE}):
            idx_dir = Path(tmp) / f"i{size}"
            build_index(data, idx_dir, pixel_size=size, model="none", evaluate=False)
            index = LookalikeIndex.open(idx_dir)
            qs = [queries[i % len(queries)] for i in range(args.queries)]
            it = iter(qs * 2)
            t = timed(lambda: index.search(next(it), "pixel-l1", k=5), repeat=args.queries, warmup=1)
            ours = median_ms(t)
            rows.append((f"ours (index) {size}px", size, ours, median_ms(seed_t) / ours))
    print("\n| approach | size | median query (ms) | speed-up vs seed at 448 |\n|---|---|---|---|")
    for name, size, ms, ratio in rows:
        print(f"| {name} | {size} | {ms:.1f} | {ratio:.0f}x |")
    print(f"\npeak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
