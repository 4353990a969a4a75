"""Vectors at scale: unit 512-d float32 vectors in Chroma (embedded, and through a server on
127.0.0.1) and in our exact search, as the library grows.

Embedded: one collection (space cosine, the product's HNSW settings from retrieval.vectorstore) is
filled in batches of get_max_batch_size(); at each checkpoint size we record the cumulative build
time, disk size and memory, then time single queries (p50/p99) and recall@10 against exact search.
At the last size ef_search is swept (set with collection.modify, then the database is reopened,
because an open index keeps the ef it was loaded with). The product builds two collections (l2 and
cosine), so its build time and disk are twice the one-collection figures here.

Two data sets (--dataset): "random", uniform on the sphere, the hardest case for a graph index (no
low-dimensional structure: at 30k vectors the product's settings reach recall@10 0.65 and each
insert costs 2.7x more CPU); and "embedding-like", a Gaussian whose component variances fall as
i^-0.76, the spectrum measured on real (effnet) vectors of the sample library, normalised. Real
embeddings look like the second (see also the Fashion-MNIST benchmark's HNSW recall on effnet vectors).

Exact: PreparedMatrix (float32 in place, one matrix-vector product for cosine; L1 streamed in
chunks over threads) plus top_k, single query, at each size in exact_sizes.

    python -m bench.vectors [--dataset embedding-like] [--sizes 10000 100000] [--server-n 100000] [--exact-sizes ...]
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.metrics import PreparedMatrix, top_k
from retrieval.vectorstore import HNSW

from .common import (PeakMemory, add_check, add_table, cli, cpu_seconds, fmt_ms, free_port, hwm_mb, median_ms,
                     percentile_ms, result, rss_mb, stop_process, timed, wait_for_http)

log = logging.getLogger(__name__)
EF_SWEEP = (100, 200, 400, 800, 1600)
# Variance of the i-th principal component falls as i**-0.76 in the effnet vectors of the sample
# library (top 50 of 1280 components: 52% of the variance); a 512-d Gaussian with that spectrum is
# the "embedding-like" data set. Measured by a log-log fit over the first 200 components.
EMBEDDING_ALPHA = 0.76
DATASETS = {"random": 0.0, "embedding-like": EMBEDDING_ALPHA}


def unit_vectors(n: int, dim: int, seed: int, block: int = 100_000, alpha: float = 0.0) -> np.ndarray:
    """(n, dim) float32 unit rows, generated block by block (no float64 copy).

    alpha = 0: uniform on the sphere (isotropic Gaussian, normalised). alpha > 0: component i of the
    Gaussian has variance i**-alpha before normalising, the power-law spectrum real embeddings show.
    """
    rng = np.random.default_rng(seed)
    std = (np.arange(1, dim + 1, dtype=np.float64) ** (-alpha / 2)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, block):
        x = rng.standard_normal((min(block, n - s), dim), dtype=np.float32)
        if alpha:
            x *= std
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + len(x)] = x
    return out


def exact_top(data: np.ndarray, queries: np.ndarray, k: int, step: int = 16) -> list[set[int]]:
    """Ground truth: the k best rows by cosine for each query (queries in small groups)."""
    m = PreparedMatrix(data)
    truth = []
    for s in range(0, len(queries), step):
        chunk = queries[s:s + step]
        for row in m.scores(chunk, "cosine").reshape(len(chunk), -1):
            truth.append(set(top_k(row, k, True).tolist()))
    return truth


def exact_query(m: PreparedMatrix, metric: str, k: int, query: np.ndarray) -> np.ndarray:
    return top_k(m.scores(query, metric), k, metric == "cosine")


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def time_queries(col: Any, queries: np.ndarray, truth: list[set[int]], k: int, warmup: int = 3) -> dict[str, float]:
    """Single-query latency (p50/p99) and recall@k of a Chroma collection."""
    for q in queries[:warmup]:
        col.query(query_embeddings=q[None], n_results=k, include=["distances"])
    times, hits = [], 0
    for q, want in zip(queries, truth):
        t0 = time.perf_counter()
        got = col.query(query_embeddings=q[None], n_results=k, include=["distances"])
        times.append(time.perf_counter() - t0)
        hits += len({int(i) for i in got["ids"][0]} & want)
    return {"p50_ms": median_ms(times), "p99_ms": percentile_ms(times, 99), "recall": hits / (k * len(truth))}


def fill(col: Any, data: np.ndarray, start: int, stop: int, batch: int) -> float:
    """Upsert rows [start, stop) in batches; returns the seconds it took."""
    t0 = time.perf_counter()
    for s in range(start, stop, batch):
        e = min(s + batch, stop)
        col.upsert(ids=[str(i) for i in range(s, e)], embeddings=data[s:e])
        if e // 50_000 != s // 50_000:
            log.warning("upserted %d vectors, %.0f s for this step so far", e, time.perf_counter() - t0)
    return time.perf_counter() - t0


def cosine_collection(client: Any) -> Any:
    """The one collection each phase fills: space cosine, the product's HNSW settings."""
    return client.get_or_create_collection("bench-cosine", configuration={"hnsw": {"space": "cosine", **HNSW}},
                                           embedding_function=None)


def open_collection(path: Path, ef_search: int | None = None, create: bool = False):
    import chromadb
    from chromadb.api.client import SharedSystemClient
    from chromadb.config import Settings

    SharedSystemClient.clear_system_cache()   # a fresh client really reloads the index from disk
    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    col = cosine_collection(client) if create else client.get_collection("bench-cosine")
    if ef_search is not None:
        col.modify(configuration={"hnsw": {"ef_search": ef_search}})
        del col, client
        return open_collection(path)
    return client, col


def chroma_server(path: Path, port: int) -> subprocess.Popen:
    """`chroma run` on 127.0.0.1, waited for until its heartbeat answers (60 s at most)."""
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_http(proc, f"http://127.0.0.1:{port}/api/v2/heartbeat", 60, "chroma run")
    return proc


def server_run(data: np.ndarray, queries: np.ndarray, truth: list[set[int]], n: int, k: int,
               tmp: Path) -> dict[str, Any]:
    import chromadb
    from chromadb.config import Settings

    port = free_port()
    proc = chroma_server(tmp / "server", port)
    try:
        client = chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False))
        col = cosine_collection(client)
        build_s = fill(col, data, 0, n, int(client.get_max_batch_size()))
        q = time_queries(col, queries, truth, k)
        server_peak = hwm_mb(proc.pid)
    finally:
        stop_process(proc)
    return {"n": n, "build_s": build_s, "disk_mb": disk_mb(tmp / "server"), "server_peak_mb": server_peak, **q}


def embedded_builds(res: dict, path: Path, data: np.ndarray, qs: np.ndarray, truths: dict[int, list[set[int]]],
                    sizes: tuple[int, ...], k: int) -> dict[int, dict[str, float]]:
    """Fill one embedded collection in steps up to each size and measure it there (cumulative build
    time and CPU, disk, peak memory, query latency and recall): one growing index shows how the
    costs scale without rebuilding from scratch at every size."""
    client, col = open_collection(path, create=True)
    batch = int(client.get_max_batch_size())
    hnsw_rows, hnsw = [], {}
    built, total_s = 0, 0.0
    rss_before = rss_mb() or 0.0
    cpu_s = 0.0
    for n in sizes:
        c0 = cpu_seconds()
        with PeakMemory() as pm:
            total_s += fill(col, data, built, n, batch)
        cpu_s += cpu_seconds() - c0
        built = n
        q = time_queries(col, qs, truths[n], k)
        hnsw[n] = {"build_s": total_s, "build_cpu_s": cpu_s, "disk_mb": disk_mb(path), "peak_mb": pm.peak_mb, **q}
        hnsw_rows.append([f"{n:,}", f"{total_s:.0f}", f"{cpu_s:.0f}", f"{n / total_s:.0f}", f"{hnsw[n]['disk_mb']:.0f}",
                          f"{pm.peak_mb:.0f} ({pm.peak_mb - rss_before:+.0f})", fmt_ms(q["p50_ms"]),
                          fmt_ms(q["p99_ms"]), f"{q['recall']:.3f}"])
        log.info("embedded %d: %s", n, hnsw[n])
    del client, col
    add_table(res, f"Embedded Chroma (PersistentClient), one cosine collection, HNSW {HNSW}. Build is "
                   f"cumulative upsert time (wall clock, and CPU seconds of all the process's threads, which "
                   f"other jobs on the machine hardly change); peak is the process's resident peak while filling "
                   f"up to that size (in brackets: above the {rss_before:.0f} MB the process held before, which "
                   f"includes the source vectors); queries are single, k={k}, p50/p99 over {len(qs)}.",
              ["vectors", "build (s)", "build CPU (s)", "vectors/s", "disk (MB)", "peak RSS (MB)", "p50 (ms)",
               "p99 (ms)", f"recall@{k}"], hnsw_rows)
    return hnsw


def ef_sweep_at(res: dict, path: Path, qs: np.ndarray, truth: list[set[int]], n: int, k: int,
                ef_sweep: tuple[int, ...], hnsw: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    """Query the largest embedded index at each ef_search and judge the recall and latency targets at
    the smallest ef that reaches recall 0.95: the product's own ef_search may sit below it."""
    sweep_rows, sweep = [], {}
    for ef in ef_sweep:
        client, col = open_collection(path, ef_search=ef)
        sweep[ef] = time_queries(col, qs, truth, k, warmup=10)
        sweep_rows.append([ef, fmt_ms(sweep[ef]["p50_ms"]), fmt_ms(sweep[ef]["p99_ms"]), f"{sweep[ef]['recall']:.3f}"])
        del client, col
    add_table(res, f"ef_search at {n:,} vectors (same index, reopened with each setting; the product "
                   f"uses {HNSW['ef_search']}).", ["ef_search", "p50 (ms)", "p99 (ms)", f"recall@{k}"], sweep_rows)
    good = [ef for ef in ef_sweep if sweep[ef]["recall"] >= 0.95]
    at = sweep[good[0]] if good else max(sweep.values(), key=lambda r: r["recall"])
    label = f"ef_search {good[0]}" if good else "best ef tried"
    add_check(res, f"Chroma, {n:,} vectors: recall@{k}", ">= 0.95",
              f"{at['recall']:.3f} ({label}); {hnsw[n]['recall']:.3f} at the product's ef_search {HNSW['ef_search']}",
              at["recall"] >= 0.95)
    add_check(res, f"Chroma, {n:,} vectors: query p50", "< 10 ms",
              f"{fmt_ms(at['p50_ms'])} ms ({label}); {fmt_ms(hnsw[n]['p50_ms'])} ms at ef_search {HNSW['ef_search']}",
              at["p50_ms"] < 10)
    add_check(res, f"Chroma, {n:,} vectors: build time (one collection)", "reported",
              f"{hnsw[n]['build_s']:.0f} s, {hnsw[n]['disk_mb']:.0f} MB on disk", None)
    return sweep


def report_server(res: dict, srv: dict[str, Any], k: int) -> None:
    """The Chroma-server table (the deployment a multi-process app would use)."""
    n = srv["n"]
    add_table(res, f"Chroma server (`chroma run` on 127.0.0.1, HttpClient), {n:,} vectors, same settings.",
              ["vectors", "build (s)", "vectors/s", "disk (MB)", "server peak RSS (MB)", "p50 (ms)", "p99 (ms)",
               f"recall@{k}"],
              [[f"{n:,}", f"{srv['build_s']:.0f}", f"{n / srv['build_s']:.0f}", f"{srv['disk_mb']:.0f}",
                f"{srv['server_peak_mb']:.0f}" if srv["server_peak_mb"] else "n/a", fmt_ms(srv["p50_ms"]),
                fmt_ms(srv["p99_ms"]), f"{srv['recall']:.3f}"]])


def exact_search(res: dict, data: np.ndarray, qs: np.ndarray, exact_sizes: tuple[int, ...], k: int,
                 hnsw: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    """Single-query exact cosine and L1 at each size, set against the HNSW p50 at the same size, and
    where HNSW starts to pay off: the reason to keep exact search for small libraries."""
    exact_rows, exact = [], {}
    for n in sorted(exact_sizes):
        m = PreparedMatrix(data[:n])
        cos = timed(partial(exact_query, m, "cosine", k), repeat=min(30, len(qs)), warmup=2, args=qs)
        l1 = timed(partial(exact_query, m, "l1", k), repeat=5 if n >= 500_000 else 10, warmup=1, args=qs)
        exact[n] = {"cosine_ms": median_ms(cos), "l1_ms": median_ms(l1)}
        h = hnsw.get(n)
        faster = ("HNSW" if h["p50_ms"] < exact[n]["cosine_ms"] else "exact") if h else ""
        exact_rows.append([f"{n:,}", fmt_ms(exact[n]["cosine_ms"]), fmt_ms(exact[n]["l1_ms"]),
                           fmt_ms(h["p50_ms"]) if h else "not built", faster])
        del m
    add_table(res, f"Exact search, one query, top {k} (PreparedMatrix on float32, no copy) against the embedded "
                   f"HNSW p50 at the same size: exact cost grows linearly with N, HNSW's barely.",
              ["vectors", "exact cosine (ms)", "exact L1 (ms)", "HNSW p50 (ms)", "faster"], exact_rows)
    both = sorted(n for n in exact if n in hnsw)
    if both:
        slope = np.polyfit(sorted(exact), [exact[n]["cosine_ms"] for n in sorted(exact)], 1)[0]  # ms per vector
        cross = [n for n in both if hnsw[n]["p50_ms"] < exact[n]["cosine_ms"]]
        est = int(np.median([hnsw[n]["p50_ms"] for n in both]) / slope) if slope > 0 else None
        res["notes"].append(
            "HNSW overtakes exact cosine search "
            + (f"by {cross[0]:,} vectors" if cross else "at none of the sizes built")
            + (f"; on the linear fit of exact time (about {1e6 * slope:.1f} ms per million vectors) against the "
               f"HNSW median, the crossover is near {est:,} vectors" if est else "") + ".")
    return exact


def run(sizes: tuple[int, ...] = (10_000, 100_000), server_n: int = 100_000,
        exact_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000), queries: int = 200, dim: int = 512,
        k: int = 10, ef_sweep: tuple[int, ...] = EF_SWEEP, name: str = "vectors", workdir: str | None = None,
        dataset: str = "random") -> dict:
    """Embedded Chroma in steps with an ef_search sweep, a Chroma server, and exact search, all on the
    same generated vectors and queries, as one bench result."""
    logging.getLogger("chromadb").setLevel(logging.WARNING)
    sizes = tuple(sorted(sizes))
    n_max = max(sizes + tuple(exact_sizes) + (server_n,))
    alpha = DATASETS[dataset]
    res = result(name, f"{dim}-d {dataset} vectors at scale: Chroma HNSW (embedded and server) and exact search",
                 {"sizes": list(sizes), "server_n": server_n, "exact_sizes": list(exact_sizes), "queries": queries,
                  "dim": dim, "k": k, "ef_sweep": list(ef_sweep), "hnsw": HNSW, "dataset": dataset, "alpha": alpha})
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        tmp = Path(scratch)
        t0 = time.perf_counter()
        data = unit_vectors(n_max, dim, seed=0, alpha=alpha)
        qs = unit_vectors(queries, dim, seed=1, alpha=alpha)
        what = ("uniform on the sphere (the hardest case for a graph index)" if not alpha else
                f"Gaussian with a power-law spectrum (variance of component i ~ i^-{alpha}, as in real "
                "embeddings), normalised")
        res["notes"].append(f"{n_max:,} {dataset} unit vectors ({data.nbytes / 2**30:.2f} GiB), {what}, generated "
                            f"in {time.perf_counter() - t0:.0f} s; {queries} queries drawn the same way (not library "
                            "rows).")
        truths = {n: exact_top(data[:n], qs, k) for n in sorted(set(sizes) | set(exact_sizes) | {server_n}) if n}

        hnsw: dict[int, dict[str, float]] = {}
        if sizes:
            hnsw = embedded_builds(res, tmp / "embedded", data, qs, truths, sizes, k)
            sweep = ef_sweep_at(res, tmp / "embedded", qs, truths[sizes[-1]], sizes[-1], k, ef_sweep, hnsw)
            res["figures"].update({"hnsw": hnsw, "sweep": sweep})
        if server_n:
            srv = server_run(data, qs, truths[server_n], server_n, k, tmp)
            res["figures"]["server"] = srv
            report_server(res, srv, k)
        res["figures"]["exact"] = exact_search(res, data, qs, exact_sizes, k, hnsw)
    return res


if __name__ == "__main__":
    cli(run)
