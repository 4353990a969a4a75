"""bf16 against fp32 on this CPU, in one process: speed by batch size, end to end, and quality.

1. Model-only img/s for each model (CLIP ViT-B-32 with random weights, efficientnet-lite0) at each
   batch size, fp32 and bf16 alternating call by call, so both see the same machine load. Besides
   wall time, images per CPU-second (all threads) are given: other jobs on a shared machine
   stretch wall time but hardly move CPU time, so that ratio is the steadier one.
2. End to end over real files (`encode_files`: decode + resize in 2 threads, overlapped with the
   model) at each precision's best batch, against the model-only rate and the decode rate alone:
   where the time goes.
3. Quality on the sample library with efficientnet-lite0: mAP (test split as queries, and every
   image against all others) for fp32, bf16 and the mixed cases (bf16 library, fp32 queries and the
   reverse), the top-10 overlap of neighbour lists, and the build's own guard figures.
4. The fallback: `auto` with native bf16 forced off picks fp32.

    python -m bench.precision [--data data] [--seconds 3]
Targets (issue 15): CLIP bf16 >= 2.5x fp32, efficientnet-lite0 >= 1.5x, mAP within 0.01.
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from retrieval.embedders import precision as prec
from retrieval.evaluate import average_precision
from retrieval.images import is_image_name
from retrieval.library import scan_split

from .common import add_check, add_table, print_result, result, sample_library, stopwatch

MODELS = ("clip", "effnet")
TARGETS = {"clip": 2.5, "effnet": 1.5}


def make(kind: str):
    if kind == "clip":
        from retrieval.embedders.openclip import OpenClipEmbedder
        return OpenClipEmbedder.random_init("ViT-B-32")
    from retrieval.embedders.backbone import EffnetEmbedder
    return EffnetEmbedder()


def _cpu() -> float:
    return time.process_time()   # all threads, ns resolution (os.times ticks in 10 ms)


def paired_rates(emb, batch: int, seconds: float, min_calls: int = 3) -> dict[str, dict[str, float]]:
    """{precision: {"wall": img/s, "cpu": img per CPU-second}}: medians of alternating calls."""
    x = emb.probe_batch(batch)
    wall: dict[str, list[float]] = {"fp32": [], "bf16": []}
    cpu: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for p in wall:                       # warm-up per precision (oneDNN primitives, caches)
        emb.set_precision(p)
        emb._embed(x)
    t_end = time.perf_counter() + seconds
    while len(wall["fp32"]) < min_calls or time.perf_counter() < t_end:
        for p in wall:
            emb.set_precision(p)
            c0, t0 = _cpu(), time.perf_counter()
            emb._embed(x)
            wall[p].append(time.perf_counter() - t0)
            cpu[p].append(max(_cpu() - c0, 1e-6))
    emb.set_precision("fp32")
    return {p: {"wall": batch / statistics.median(wall[p]), "cpu": batch / statistics.median(cpu[p])}
            for p in wall}


def batch_table(res: dict, emb, kind: str, batch_sizes: tuple[int, ...], seconds: float) -> dict[str, int]:
    """The measured table; returns the best batch (by wall img/s) per precision."""
    rows, rates = [], {}
    for bs in batch_sizes:
        r = paired_rates(emb, bs, seconds)
        rates[bs] = r
        rows.append([kind, bs, f"{r['fp32']['wall']:.1f}", f"{r['bf16']['wall']:.1f}",
                     f"{r['bf16']['wall'] / r['fp32']['wall']:.2f}x",
                     f"{r['fp32']['cpu']:.1f}", f"{r['bf16']['cpu']:.1f}",
                     f"{r['bf16']['cpu'] / r['fp32']['cpu']:.2f}x"])
    # The best batch by images per CPU-second: wall rates on a shared machine swing with other jobs.
    best = {p: max(batch_sizes, key=lambda b: rates[b][p]["cpu"]) for p in ("fp32", "bf16")}
    for row in rows:
        for p, col in (("fp32", 5), ("bf16", 6)):
            if row[1] == best[p]:
                row[col] += " **best**"
    res.setdefault("_batch_rows", []).extend(rows)
    f32, b16 = rates[best["fp32"]]["fp32"], rates[best["bf16"]]["bf16"]
    cpu_x = b16["cpu"] / f32["cpu"]
    # Wall clock: each precision at its own best batch by wall rate (a separate choice: one slow
    # call stretched by another job must not make a ratio out of two different batches' noise).
    best_wall = {p: max(batch_sizes, key=lambda b: rates[b][p]["wall"]) for p in ("fp32", "bf16")}
    wall_x = rates[best_wall["bf16"]]["bf16"]["wall"] / rates[best_wall["fp32"]]["fp32"]["wall"]
    same = [rates[b]["bf16"]["wall"] / rates[b]["fp32"]["wall"] for b in batch_sizes]
    res["figures"][kind] = {"best_batch": best, "best_batch_wall": best_wall, "fp32": f32, "bf16": b16,
                            "speedup_wall": wall_x, "speedup_cpu": cpu_x,
                            "speedup_wall_same_batch": dict(zip(map(str, batch_sizes), same))}
    add_check(res, f"{kind}: bf16 vs fp32, each at its best batch (per CPU-second; wall clock, each at its "
                   "best wall batch; wall at equal batches)", f">= {TARGETS[kind]}x",
              f"{cpu_x:.2f}x; {wall_x:.2f}x; {min(same):.2f}-{max(same):.2f}x", cpu_x >= TARGETS[kind])
    return best


def decode_rate(emb, files: list[Path], workers: int = 2) -> float:
    """img/s of decode + PIL preprocessing alone, in `workers` threads (what feeds the model)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(emb._decode, files))
    return len(files) / (time.perf_counter() - t0)


def end_to_end_rows(emb, kind: str, files: list[Path], best: dict[str, int]) -> list[list]:
    rows = []
    dec = decode_rate(emb, files)
    for p in ("fp32", "bf16"):
        emb.set_precision(p)
        bs = best[p]
        list(emb.encode_files(files[:bs], batch_size=bs, progress=False))   # warm-up
        t0 = time.perf_counter()
        n = sum(len(ok) for ok, _ in emb.encode_files(files, batch_size=bs, progress=False))
        e2e = n / (time.perf_counter() - t0)
        model = paired_rates(emb, bs, 0.0, min_calls=2)[p]["wall"]
        rows.append([kind, p, bs, f"{e2e:.1f}", f"{model:.1f}", f"{100 * e2e / model:.0f}%", f"{dec:.1f}"])
    emb.set_precision("fp32")
    return rows


def _embed_all(emb, paths: list[Path], batch: int) -> np.ndarray:
    out = np.zeros((len(paths), emb.dim), np.float32)
    for ok, vecs in emb.encode_files(paths, batch_size=batch, progress=False):
        out[ok] = vecs
    return out


def _map(q: np.ndarray, q_labels: np.ndarray, lib: np.ndarray, lib_labels: np.ndarray,
         leave_one_out: bool = False) -> float:
    """mAP over full cosine rankings (unit rows)."""
    sims = q @ lib.T
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)
    aps = []
    for i, row in enumerate(sims):
        order = np.argsort(-row, kind="stable")
        if leave_one_out:
            order = order[order != i]
        rel = lib_labels[order] == q_labels[i]
        aps.append(average_precision(rel, int(rel.sum())))
    return float(np.mean(aps))


def quality(res: dict, data: Path, batch: int) -> list[list]:
    """mAP of fp32, bf16 and mixed vectors on the sample library with efficientnet-lite0."""
    emb = make("effnet")
    train, test = scan_split(data, "train"), scan_split(data, "test")
    paths = [it.path(data) for it in train] + [it.path(data) for it in test]
    labels = np.array([it.label for it in train] + [it.label for it in test])
    n_train = len(train)
    vec = {}
    for p in ("fp32", "bf16"):
        emb.set_precision(p)
        vec[p] = _embed_all(emb, paths, batch)
    emb.set_precision("fp32")
    rows, maps = [], {}
    for lib_p, q_p in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16", "fp32"), ("fp32", "bf16")):
        test_map = _map(vec[q_p][n_train:], labels[n_train:], vec[lib_p][:n_train], labels[:n_train])
        loo = _map(vec[q_p], labels, vec[lib_p], labels, leave_one_out=True) if lib_p == q_p else float("nan")
        maps[(lib_p, q_p)] = (test_map, loo)
        rows.append([lib_p, q_p, f"{test_map:.4f}", "-" if np.isnan(loo) else f"{loo:.4f}"])
    overlap = prec.neighbour_overlap(vec["fp32"], vec["bf16"], 10)
    cosine = float(np.mean(np.sum(vec["fp32"] * vec["bf16"], axis=1)))
    sample_overlap = prec.neighbour_overlap(*(v[np.linspace(0, len(paths) - 1, prec.GUARD_SAMPLE).astype(int)]
                                              for v in (vec["fp32"], vec["bf16"])), 10)
    res["figures"]["quality"] = {"map": {f"{a}/{b}": v for (a, b), v in maps.items()},
                                 "top10_overlap_library": overlap, "mean_cosine": cosine,
                                 "top10_overlap_guard_sample": sample_overlap, "images": len(paths)}
    worst = max(abs(maps[k][0] - maps[("fp32", "fp32")][0]) for k in maps)
    d_loo = abs(maps[("bf16", "bf16")][1] - maps[("fp32", "fp32")][1])
    add_check(res, "effnet mAP, bf16 (and mixed) vs fp32, sample library", "within 0.01",
              f"test split: largest difference {worst:.4f}; every image as a query: {d_loo:.4f}",
              worst <= 0.01 and d_loo <= 0.01)
    res["notes"].append(f"effnet fp32 vs bf16 vectors of all {len(paths)} sample images: mean cosine "
                        f"{cosine:.5f}; top-10 neighbour overlap over the whole set {overlap:.3f}; over the "
                        f"guard's {prec.GUARD_SAMPLE}-image sample {sample_overlap:.3f} (the build warns "
                        f"below {prec.GUARD_MIN_OVERLAP})")
    return rows


def fallback_check(res: dict) -> None:
    """auto with native bf16 forced off -> fp32 (the same switch the test uses)."""
    emb = make("effnet")
    real = prec.native_bf16
    try:
        prec.native_bf16 = lambda: False
        chosen, why = prec.resolve(emb, "auto")
    finally:
        prec.native_bf16 = real
    add_check(res, "auto with native bf16 forced off", "fp32", f"{chosen} ({why['why']})", chosen == "fp32")
    chosen, why = prec.resolve(emb, "auto")
    res["notes"].append(f"auto on this machine (native bf16 {real()}): {chosen}, {why['why']}")


def run(models: tuple[str, ...] = MODELS, batch_sizes: tuple[int, ...] = (1, 8, 16, 32, 64),
        seconds: float = 3.0, e2e_images: int = 96, data: str | None = None, quality_check: bool = True) -> dict:
    lib = sample_library(data)
    files = sorted(p for p in (lib / "train").rglob("*") if p.is_file() and is_image_name(p.name))[:e2e_images]
    res = result("precision", "bf16 against fp32 on this CPU: speed by batch size, end to end, quality",
                 {"models": list(models), "batch_sizes": list(batch_sizes), "seconds": seconds,
                  "e2e_images": len(files), "native_bf16": prec.native_bf16(),
                  "cpu_bf16_flags": sorted(f for f in prec.CPU_BF16_FLAGS if f in prec.cpu_flags()),
                  "torch_threads": torch.get_num_threads()})
    e2e_rows: list[list] = []
    with stopwatch(res):
        best_effnet = 16
        for kind in models:
            emb = make(kind)
            best = batch_table(res, emb, kind, batch_sizes, seconds)
            best_effnet = best["bf16"] if kind == "effnet" else best_effnet
            if files:
                e2e_rows += end_to_end_rows(emb, kind, files, best)
            del emb
        add_table(res, "Model-only throughput, fp32 and bf16 calls alternating (224x224; wall img/s and images "
                       "per CPU-second, medians).",
                  ["model", "batch", "fp32 img/s", "bf16 img/s", "bf16 / fp32", "fp32 img/CPU-s",
                   "bf16 img/CPU-s", "bf16 / fp32 (CPU)"], res.pop("_batch_rows"))
        if e2e_rows:
            add_table(res, f"End to end over {len(files)} sample-library files (decode + resize in 2 threads, "
                           "overlapped with the model) at each precision's best batch; 'decode alone' is the "
                           "rate of the decode threads with no model running: the ceiling they set.",
                      ["model", "precision", "batch", "end to end img/s", "model-only img/s", "share",
                       "decode alone img/s"], e2e_rows)
        if quality_check:
            rows = quality(res, lib, best_effnet)
            add_table(res, "efficientnet-lite0 mAP on the sample library (cosine, full rankings): test split as "
                           "queries against train, and every image against all the others.",
                      ["library vectors", "query vectors", "mAP (test split)", "mAP (every image)"], rows)
        fallback_check(res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    args = ap.parse_args()
    print_result(run(tuple(args.models.split(",")), tuple(args.batch_sizes), args.seconds, data=args.data))


if __name__ == "__main__":
    main()
