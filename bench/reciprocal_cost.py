"""What the library-side transform and k-reciprocal re-ranking cost: build time of the re-ranking
library side and ranking time per query, today's (DBA on the stored vectors) against the new one
(centring + PCA-128, DBA, the k-reciprocal graph), one query at a time, in one process.

Vectors: the sample library's stored effnet embeddings (an index built by build_index.py), and at
60,000 images stand-ins of the backbone's shape: Fashion-MNIST's training images (queries: its test images) through a fixed
random 784 -> 1280 layer with ReLU, unit rows (real neighbourhoods at the real width; embedding
60,000 images with the backbone takes hours on 2 cores). The ranking alone is timed (the query's
embedding costs the same for every method); the exact and the inverted-index Jaccard sums are
checked to agree (top-100 overlap). Times are CPU seconds of the process (all threads): on a shared
2-core machine wall time is mostly the other jobs.

    python -m bench.reciprocal_cost --index INDEX [--fashion 60000] [--queries 30]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval.rerank import library_side, settings_for
from retrieval.rerank.maths import expand, space_rows
from retrieval.rerank.reciprocal import Inverted, scores

TODAY = replace(settings_for("effnet"), centre=False, pca=0, k1=0)   # DBA + QE on the stored vectors


def fashion_vectors(split: str, n: int, seed: int = 0) -> np.ndarray:
    """The first n images of a Fashion-MNIST split through the fixed random layer, unit rows."""
    from collect.fashion_mnist import load_split
    images, _ = load_split(split)
    x = images[:n].reshape(min(n, len(images)), -1).astype(np.float32) / 255
    w = np.random.default_rng(seed).normal(size=(x.shape[1], 1280)).astype(np.float32)
    v = np.maximum(x @ w, 0)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _rank_ms(side, s, queries: np.ndarray, kr: bool, exact: bool = False) -> tuple[float, list[np.ndarray]]:
    """Mean CPU ms (all threads) per query over all the queries (one total: this machine's CPU clock
    ticks are coarser than one query), and each query's top 100."""
    inv = Inverted.of(side.graph) if kr else None
    tops = []
    t0 = time.process_time()
    for v in queries:
        q = space_rows(v[None], s, None, side.transform)
        e = expand(q, side.dba, s.k, s.alpha)
        sims = e @ side.dba.T
        if kr:
            sims = scores(sims, side.graph, inv, s.k1, s.k2, s.lam, exact=exact)
        tops.append(np.argpartition(-sims[0], 100)[:100])
    return 1000 * (time.process_time() - t0) / len(queries), tops


def measure(name: str, lib: np.ndarray, queries: np.ndarray) -> None:
    new = settings_for("effnet")
    t0 = time.process_time()
    today = library_side(lib, TODAY)
    t_today = time.process_time() - t0
    t0 = time.process_time()
    side = library_side(lib, new, with_kr=True)
    t_new = time.process_time() - t0
    assert side.graph is not None
    graph_mib = sum(a.nbytes for a in side.graph.to_arrays()) / 2 ** 20
    ms_today, _ = _rank_ms(today, TODAY, queries, False)
    ms_pca, _ = _rank_ms(side, new, queries, False)
    ms_kr, fast = _rank_ms(side, new, queries, True)
    ms_exact, slow = _rank_ms(side, new, queries, True, exact=True)
    overlap = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(fast, slow)])
    print(f"| {name} | {len(lib):,} | {t_today:.1f} | {t_new:.1f} | {graph_mib:.0f} | {ms_today:.2f} | {ms_pca:.2f} | "
          f"{ms_kr:.2f} | {ms_exact:.2f} | {overlap:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="an effnet index (its stored embeddings)")
    ap.add_argument("--fashion", type=int, nargs="*", default=[], help="stand-in library sizes, e.g. 10000 60000")
    ap.add_argument("--queries", type=int, default=30)
    args = ap.parse_args()
    print("| library | images | build today (CPU s) | build new (CPU s) | graph (MiB) | query today (CPU ms) | "
          "+PCA (ms) | +PCA+kr (ms) | +kr exact sums (ms) | top-100 overlap |\n|---|---|---|---|---|---|---|---|---|---|")
    if args.index:
        from retrieval.search import LookalikeIndex
        emb = np.asarray(LookalikeIndex.open(args.index).matrix("effnet").data, dtype=np.float32)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(emb), size=min(args.queries, len(emb) // 4), replace=False)
        keep = np.setdiff1d(np.arange(len(emb)), pick)
        measure("sample (effnet)", emb[keep], emb[pick])
    for n in args.fashion:
        measure("Fashion-MNIST stand-in", fashion_vectors("train", n), fashion_vectors("test", args.queries))


if __name__ == "__main__":
    main()
