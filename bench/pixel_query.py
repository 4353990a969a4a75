"""Pixel query: the seed's approach versus ours, on the sample library, in one process.

The seed (course notebook, get_l1_score & co.) re-reads and resizes every library image on every
query at 448x448, then applies the metric. Ours decodes and resizes once at index time and answers
each query with one pass over a prepared matrix.

    python -m bench.pixel_query [--data data] [--queries 20] [--seed-queries 3]
"""
from __future__ import annotations

import itertools
import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.images import is_image_name
from retrieval.indexing import DEFAULT_PIXEL_SIZE, build_index
from retrieval.search import LookalikeIndex

from .common import add_check, add_table, cli, fmt_ms, fmt_ratio, median_ms, peak_rss_mb, result, sample_library, timed


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


def full_pass(index: LookalikeIndex, query: Path) -> list[int]:
    """pixel-l1 as before pruning: decode, resize, one full L1 pass over every row, top 5."""
    from retrieval.images import load_image, resize_pixels
    from retrieval.metrics import top_k
    q = resize_pixels(load_image(query), index.manifest.pixel_size).reshape(-1)
    skip = np.zeros(len(index.rels), bool)
    skip[list(index.self_rows(query))] = True
    return list(top_k(index.pixels.scores(q, "l1"), 5, False, skip))


def take_turns(lib: Path, test: list[Path], indexes: dict[int, LookalikeIndex], queries: int, seed_queries: int,
               seed_size: int) -> tuple[list[float], dict[int, list[float]], list[float], list[int]]:
    """Seconds per query of the seed, of ours at each size and of one full L1 pass at seed_size (no
    pruning), and the rows pruning read in full. Seed and ours take turns, so that both see the same
    machine load: one seed query, then a share of ours at each size."""
    seed_t: list[float] = []
    ours_t: dict[int, list[float]] = {size: [] for size in indexes}
    full_t: list[float] = []
    visited: list[int] = []
    cycle = itertools.cycle(test)
    per_turn = -(-queries // seed_queries)
    for turn in range(seed_queries):
        # The seed's folder walk appends names to root_img_path with a bare "+": keep its "/".
        seed_t += timed(partial(seed_get_l1_score, f"{lib / 'train'}/", str(test[0]), (seed_size, seed_size)),
                        repeat=1, warmup=0)
        for size, index in indexes.items():
            n = min(per_turn, queries - turn * per_turn)
            ours_t[size] += timed(partial(index.search, method="pixel-l1", k=5), repeat=n, warmup=0, args=cycle)
            if size == seed_size and index.l1_pruner is not None:
                visited.append(index.l1_pruner.last_stats.get("full_rows", 0))
                full_t += timed(partial(full_pass, index), repeat=n, warmup=0, args=cycle)
    return seed_t, ours_t, full_t, visited


def run(data: str | None = None, queries: int = 20, seed_queries: int = 3, seed_size: int = 448,
        sizes: tuple[int, ...] | None = None) -> dict:
    """Seed (rescan per query at `seed_size`) against our index at `seed_size` and the default size."""
    lib = sample_library(data)
    test = sorted(p for p in (lib / "test").rglob("*") if p.is_file() and is_image_name(p.name))
    sizes = tuple(sorted(set(sizes or (seed_size, DEFAULT_PIXEL_SIZE))))
    res = result("pixel_query", "Pixel query: the seed's rescan per query versus our index (L1)",
                 {"data": str(lib), "queries": queries, "seed_queries": seed_queries, "seed_size": seed_size,
                  "sizes": list(sizes)})
    with tempfile.TemporaryDirectory() as tmp:
        indexes = {}
        for size in sizes:
            build_index(lib, Path(tmp) / f"i{size}", pixel_size=size, model="none", evaluate=False)
            indexes[size] = LookalikeIndex.open(Path(tmp) / f"i{size}")
            indexes[size].search(test[0], "pixel-l1", k=5)          # warm-up
        seed_t, ours_t, full_t, visited = take_turns(lib, test, indexes, queries, seed_queries, seed_size)
        seed_ms = median_ms(seed_t)
        rows = [["seed: re-read and resize every library image per query", seed_size, fmt_ms(seed_ms), "1x (baseline)"]]
        ours = {size: median_ms(t) for size, t in ours_t.items()}
        for size in sizes:
            pruned = indexes[size].l1_pruner is not None
            rows.append([f"ours: prepared index, {'lower-bound pruning' if pruned else 'one pass'} (`pixel-l1`, k=5)",
                         size, fmt_ms(ours[size]), fmt_ratio(seed_ms / ours[size])])
            if pruned and size == seed_size and full_t:
                rows.append(["ours: the same index, one full L1 pass (no pruning)", size, fmt_ms(median_ms(full_t)),
                             fmt_ratio(seed_ms / median_ms(full_t))])
        index = indexes[sizes[0]]
        n_lib = len(index.rels)
        add_table(res, f"Library of {n_lib} images. Median per query over {seed_queries} seed and {queries} "
                       "indexed queries (decoding the query image is included in both).",
                  ["approach", "size (px)", "median query (ms)", "speed-up vs seed"], rows)
        res["figures"] = {"seed_ms": seed_ms, "ours_ms": {str(k): v for k, v in ours.items()},
                          "full_pass_ms": median_ms(full_t) if full_t else None}
        if visited:
            res["notes"].append(f"pruning at {seed_size}px: {np.mean(visited):.1f} of {n_lib} library rows read at "
                                "full resolution per query on average (the rest ruled out by block-sum lower bounds, "
                                "exactly: tests/test_pruning.py)")
        if seed_size in ours:
            ratio = seed_ms / ours[seed_size]
            add_check(res, f"ours vs seed at {seed_size}x{seed_size}", ">= 100x", fmt_ratio(ratio),
                      ratio >= 100 if seed_size == 448 else None)
        if DEFAULT_PIXEL_SIZE in ours:
            add_check(res, f"median at the default size ({DEFAULT_PIXEL_SIZE}x{DEFAULT_PIXEL_SIZE})", "< 10 ms",
                      f"{fmt_ms(ours[DEFAULT_PIXEL_SIZE])} ms", ours[DEFAULT_PIXEL_SIZE] < 10)
        res["notes"].append(f"peak RSS of the process {peak_rss_mb():.0f} MB (the seed holds the whole library "
                            f"as float64 at {seed_size}px per query)")
    return res


if __name__ == "__main__":
    cli(run)
