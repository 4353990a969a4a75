"""Index build, repeated: ours (batched encode_files + VectorStore.upsert) against the seed's
add_embedding (one image -> one model call, then one collection.add), for each model.

The two build paths live in bench/index_build.py; this module times them `repeats` times,
interleaved, for the suite's medians.

    python -m bench.build_vs_seed [--data data/train] [--limit 128] [--repeats 3] [--models clip,effnet]
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from retrieval.images import load_image
from retrieval.vectorstore import VectorStore

from .common import cli, PeakMemory, ROOT, add_check, add_table, fmt_ratio, result, stopwatch
from .index_build import library, make, ours, seed_add_embedding


def run(data: str | None = None, limit: int = 128, repeats: int = 3, batch_size: int = 32, workers: int = 2,
        models: tuple[str, ...] = ("clip", "effnet")) -> dict:
    import chromadb
    from chromadb.config import Settings

    logging.getLogger("chromadb").setLevel(logging.WARNING)
    data_dir = Path(data) if data else ROOT / "data" / "train"
    res = result("build_vs_seed", "Index build: ours (batched, streamed) versus the seed's one image per model call",
                 {"data": str(data_dir), "limit": limit, "repeats": repeats, "batch_size": batch_size,
                  "workers": workers, "models": list(models)})
    rows = []
    with stopwatch(res), tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        files = library(data_dir, limit, scratch)
        for kind in models:
            emb = make(kind)
            emb.encode_images([load_image(files[0])] * 2)   # warm-up (allocator, kernels)
            t_ours, t_seed, mem_ours, mem_seed = [], [], [], []
            for r in range(repeats):
                store = VectorStore.open(path=scratch / f"chroma-{kind}-{r}", prefix=f"bench-{kind}")
                with PeakMemory() as pm:
                    t = time.perf_counter()
                    ours(emb, files, store, batch_size, workers)
                    t_ours.append(time.perf_counter() - t)
                mem_ours.append(pm.peak_mb)
                client = chromadb.PersistentClient(path=str(scratch / f"seed-{kind}-{r}"),
                                                   settings=Settings(anonymized_telemetry=False))
                with PeakMemory() as pm:
                    t = time.perf_counter()
                    seed_add_embedding(emb, files, client)
                    t_seed.append(time.perf_counter() - t)
                mem_seed.append(pm.peak_mb)
                del store, client
            ours_rate = len(files) / statistics.median(t_ours)
            seed_rate = len(files) / statistics.median(t_seed)
            rows.append([kind, f"{ours_rate:.1f}", f"{seed_rate:.1f}", fmt_ratio(ours_rate / seed_rate),
                         f"{max(mem_ours):.0f}", f"{max(mem_seed):.0f}"])
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
