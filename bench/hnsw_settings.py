"""Chroma HNSW settings: build cost, disk, recall and latency per (max_neighbors, ef_construction),
and the ef_search each collection size needs, on embedding-like vectors, in one process.

For each build setting one embedded cosine collection is filled up to each checkpoint size (a
growing index, as a library grows); at every checkpoint ef_search is swept (collection.modify, then
the database is reopened, because an open index keeps the ef it was loaded with) and single
queries are timed (p50/p99) and scored (recall@10 against exact cosine). The vectors are bench.vectors'
"embedding-like" set (a Gaussian with the power-law spectrum of real effnet vectors, normalised).
The product's choice (retrieval.vectorstore.HNSW and ef_search_for) comes from this table.

    python -m bench.hnsw_settings [--sizes 10000 30000 100000] [--settings 16:100 32:200 48:300]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.vectorstore import HNSW, ef_search_for

from .common import add_check, add_table, cpu_seconds, fmt_ms, print_result, result, stopwatch
from .vectors import DATASETS, disk_mb, exact_top, fill, time_queries, unit_vectors

log = logging.getLogger(__name__)
SETTINGS = ((16, 100), (32, 200), (48, 300))
EF_SWEEP = (50, 100, 200, 400, 800)
RECALL = 0.95


def _client(path: Path):
    import chromadb
    from chromadb.api.client import SharedSystemClient
    from chromadb.config import Settings
    SharedSystemClient.clear_system_cache()   # a fresh client really reloads the index from disk
    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def sweep(path: Path, qs: np.ndarray, truth: list[set[int]], k: int, efs: tuple[int, ...]) -> dict[int, dict]:
    out = {}
    for ef in efs:
        col = _client(path).get_collection("bench")
        col.modify(configuration={"hnsw": {"ef_search": ef}})
        del col
        col = _client(path).get_collection("bench")
        out[ef] = time_queries(col, qs, truth, k, warmup=10)
        del col
    return out


def one_setting(path: Path, m: int, ef_c: int, data: np.ndarray, qs: np.ndarray, truths: dict[int, list[set[int]]],
                sizes: tuple[int, ...], k: int, efs: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    client = _client(path)
    col = client.get_or_create_collection("bench", embedding_function=None, configuration={
        "hnsw": {"space": "cosine", "max_neighbors": m, "ef_construction": ef_c, "ef_search": 100}})
    batch = int(client.get_max_batch_size())
    out, built, wall, cpu = {}, 0, 0.0, 0.0
    for n in sizes:
        c0 = cpu_seconds()
        wall += fill(col, data, built, n, batch)
        cpu += cpu_seconds() - c0
        built = n
        del col, client
        out[n] = {"build_s": wall, "build_cpu_s": cpu, "disk_mb": disk_mb(path),
                  "sweep": sweep(path, qs, truths[n], k, efs)}
        log.warning("M=%d ef_c=%d n=%d: %s", m, ef_c, n, out[n])
        client = _client(path)
        col = client.get_collection("bench")
    return out


def needed_ef(sw: dict[int, dict], recall: float = RECALL) -> int | None:
    good = [ef for ef in sorted(sw) if sw[ef]["recall"] >= recall]
    return good[0] if good else None


def run(sizes: tuple[int, ...] = (10_000, 30_000, 100_000), settings: tuple[tuple[int, int], ...] = SETTINGS,
        ef_sweep: tuple[int, ...] = EF_SWEEP, queries: int = 200, dim: int = 512, k: int = 10,
        dataset: str = "embedding-like", workdir: str | None = None, name: str = "hnsw_settings") -> dict:
    logging.getLogger("chromadb").setLevel(logging.WARNING)
    sizes = tuple(sorted(sizes))
    res = result(name, f"Chroma HNSW settings on {dim}-d {dataset} vectors: build, disk, recall, latency",
                 {"sizes": list(sizes), "settings": [list(s) for s in settings], "ef_sweep": list(ef_sweep),
                  "queries": queries, "dim": dim, "k": k, "dataset": dataset, "product": HNSW})
    with stopwatch(res), tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data = unit_vectors(sizes[-1], dim, seed=0, alpha=DATASETS[dataset])
        qs = unit_vectors(queries, dim, seed=1, alpha=DATASETS[dataset])
        truths = {n: exact_top(data[:n], qs, k) for n in sizes}
        figures: dict[str, Any] = {}
        build_rows, sweep_rows, need_rows = [], [], []
        for m, ef_c in settings:
            t0 = time.perf_counter()
            got = one_setting(Path(tmp) / f"m{m}-ef{ef_c}", m, ef_c, data, qs, truths, sizes, k, ef_sweep)
            figures[f"{m}/{ef_c}"] = {str(n): v for n, v in got.items()}
            top = got[sizes[-1]]
            best = needed_ef(top["sweep"])
            build_rows.append([m, ef_c, f"{sizes[-1]:,}", f"{top['build_s']:.0f}", f"{top['build_cpu_s']:.0f}",
                               f"{sizes[-1] / top['build_s']:.0f}", f"{top['disk_mb']:.0f}",
                               best or f"> {max(ef_sweep)}",
                               fmt_ms(top["sweep"][best]["p50_ms"]) if best else "-"])
            for ef, r in top["sweep"].items():
                sweep_rows.append([m, ef_c, ef, fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]), f"{r['recall']:.3f}"])
            need_rows.append([m, ef_c] + [str(needed_ef(got[n]["sweep"]) or f"> {max(ef_sweep)}") for n in sizes])
            log.warning("setting %d/%d done in %.0f s", m, ef_c, time.perf_counter() - t0)
        res["figures"] = figures
        add_table(res, f"Build cost per setting (one cosine collection; the product builds two) at {sizes[-1]:,} "
                       f"vectors, and the smallest ef_search of {list(ef_sweep)} reaching recall@{k} >= {RECALL}.",
                  ["max_neighbors (M)", "ef_construction", "vectors", "build (s)", "build CPU (s)", "vectors/s",
                   "disk (MB)", f"ef_search for recall {RECALL}", "p50 there (ms)"], build_rows)
        add_table(res, f"ef_search sweep at {sizes[-1]:,} vectors: single queries, k={k}, {queries} queries.",
                  ["M", "ef_construction", "ef_search", "p50 (ms)", "p99 (ms)", f"recall@{k}"], sweep_rows)
        add_table(res, f"Smallest ef_search (of {list(ef_sweep)}) reaching recall@{k} >= {RECALL} as the collection "
                       "grows: why ef_search grows with the collection size. The product's rule, "
                       f"ef_search_for(n): " + ", ".join(f"{n:,} -> {ef_search_for(n)}" for n in sizes + (1_000_000,)),
                  ["M", "ef_construction"] + [f"{n:,}" for n in sizes], need_rows)
        key = f"{HNSW['max_neighbors']}/{HNSW['ef_construction']}"
        if key in figures:
            top = figures[key][str(sizes[-1])]["sweep"]
            ef = min(top, key=lambda e: abs(e - ef_search_for(sizes[-1])))
            add_check(res, f"the product's setting (M={HNSW['max_neighbors']}, ef_construction="
                           f"{HNSW['ef_construction']}, ef_search {ef_search_for(sizes[-1])}) at {sizes[-1]:,}",
                      f"recall@{k} >= {RECALL}", f"{top[ef]['recall']:.3f} at ef_search {ef}, p50 "
                      f"{fmt_ms(top[ef]['p50_ms'])} ms", top[ef]["recall"] >= RECALL)
        add_frontier_check(res, figures, sizes[-1], k)
        if sizes[-1] < 1_000_000:
            res["notes"].append("The 1M-vector figures (`python -m bench --only hnsw_1m`) were not re-measured in "
                                "this run: each setting's build takes from half an hour to over an hour of both cores.")
    return res


def add_frontier_check(res: dict, figures: dict[str, Any], n: int, k: int, p50_target_ms: float = 10.0) -> None:
    """The issue's target at the largest size: recall@k >= RECALL at p50 < 10 ms. Reports the fastest
    (setting, ef_search) that reaches the recall, met or not, so the best measured point is stated."""
    points = [(f["sweep"][ef]["p50_ms"], key, ef, f["sweep"][ef]["recall"])
              for key, by_n in figures.items() for f in [by_n[str(n)]] for ef in f["sweep"]]
    good = sorted(p for p in points if p[3] >= RECALL)
    if good:
        p50, key, ef, rec = good[0]
        value, met = f"{rec:.3f} at p50 {fmt_ms(p50)} ms (M/ef_construction {key}, ef_search {ef})", p50 < p50_target_ms
    else:
        p50, key, ef, rec = max(points, key=lambda p: p[3])
        value, met = f"no setting reached {RECALL}; best {rec:.3f} at p50 {fmt_ms(p50)} ms ({key}, ef {ef})", False
    add_check(res, f"Chroma, {n:,} vectors: recall@{k} >= {RECALL} at p50 < {p50_target_ms:g} ms (best setting)",
              f"p50 < {p50_target_ms:g} ms", value, met)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--settings", nargs="+", default=[f"{m}:{e}" for m, e in SETTINGS])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef-sweep", type=int, nargs="+", default=list(EF_SWEEP))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    settings = tuple(tuple(int(x) for x in s.split(":")) for s in args.settings)
    print_result(run(tuple(args.sizes), settings, tuple(args.ef_sweep), queries=args.queries, dim=args.dim,
                     workdir=args.workdir))


if __name__ == "__main__":
    main()
