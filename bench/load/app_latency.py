"""End-to-end latency of the app through gradio_client, and its start-up time on a built index.

Starts the real `python app.py --index INDEX` in a subprocess, times how long until it answers
HTTP (start-up), then sends test-split queries to /search_pixel and /search_deep from 1 and from 8
concurrent clients (one gradio_client.Client per thread). A call is timed from predict() to its
return: upload, queue, search, and (column "images") the download of the k result images, one
after another, as gradio_client does by default; "urls" is Client(download_files=False), the
answer a browser gets before it fetches the thumbnails in parallel. gradio_client itself polls its
message queue every 50 ms, so part of every figure is the client's. The baseline, measured in this
process, is the same query straight through LookalikeIndex.search (no HTTP), so the ratio is what
the web layer costs. The clients run on the same machine as the server and share its CPUs.

    python -m bench.load.app_latency [--data data] [--index DIR] [--queries 40] [--clients 1 8]
Targets: pixel median < 300 ms; no errors with 8 clients; start-up < 15 s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from retrieval.library import scan_split
from retrieval.methods import PIXEL_DEFAULT
from retrieval.search import LookalikeIndex

from ..common import free_port, machine_info, median_ms, p95_ms, sample_library, timed
from .soak import effnet_index, start_server

ENDPOINTS = {"pixel": ("/search_pixel", PIXEL_DEFAULT.metric, str(PIXEL_DEFAULT)), "deep": ("/search_deep", None, None)}


def wait_for_model(url: str, t_start: float, timeout_s: float = 300) -> tuple[float, str]:
    """Poll /model_status (the page's "loading the model…" line) until it says ready; returns
    (seconds since the app process started, the final status line)."""
    from gradio_client import Client
    client = Client(url, verbose=False)
    t_end = time.perf_counter() + timeout_s
    status = ""
    while time.perf_counter() < t_end:
        out = client.predict(api_name="/model_status")
        status = out[0] if isinstance(out, (list, tuple)) else str(out)
        if "loading" not in status:
            return time.perf_counter() - t_start, status
        time.sleep(0.1)
    raise SystemExit(f"the model was still loading after {timeout_s} s: {status}")


def run_clients(url: str, api: str, arg: str, queries: list[Path], n_clients: int,
                per_client: int, download: bool) -> tuple[list[float], list[str], float]:
    """Latencies (s), error messages and wall seconds for n_clients threads x per_client calls."""
    from gradio_client import Client, handle_file
    clients = [Client(url, verbose=False, download_files=download) for _ in range(n_clients)]

    def work(c: int) -> tuple[list[float], list[str]]:
        times, errors = [], []
        for i in range(per_client):
            q = queries[(c * per_client + i) % len(queries)]
            t0 = time.perf_counter()
            try:
                clients[c].predict(handle_file(str(q)), arg, 5, api_name=api)
                times.append(time.perf_counter() - t0)
            except Exception as exc:  # counted and reported, never hidden
                errors.append(f"{type(exc).__name__}: {exc}")
        return times, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        results = list(pool.map(work, range(n_clients)))
    wall = time.perf_counter() - t0
    return [t for ts, _ in results for t in ts], [e for _, es in results for e in es], wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="library (default: data/, the sample library, built if missing)")
    p.add_argument("--index", type=Path, default=None, help="a built index (default: build an effnet index in a temp dir)")
    p.add_argument("--queries", type=int, default=40, help="queries per (method, clients) setting (default 40)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = p.parse_args()

    data = sample_library(args.data)
    tmp = tempfile.TemporaryDirectory(prefix="lookalike-bench-")
    index_dir = args.index
    if index_dir is None:
        index_dir = effnet_index(Path(tmp.name), data, evaluate=True)   # the app shows its Evaluation tab
    index = LookalikeIndex.open(index_dir, data_dir=Path(data))
    deep = str(index.default_method) if index.manifest.embedder else None
    ENDPOINTS["deep"] = ("/search_deep", deep, deep)
    queries = [it.path(Path(data)) for it in scan_split(Path(data), "test")]
    print(f"# app latency: {machine_info()}")
    print(f"# library {len(index.paths)} images, {len(queries)} test queries, k=5, index {index_dir}")

    port = free_port()
    t_start = time.perf_counter()
    proc = start_server(index_dir, port, Path(tmp.name) / "app.log", timeout_s=120)
    startup = time.perf_counter() - t_start
    url = f"http://127.0.0.1:{port}/"
    print(f"start-up (python app.py until HTTP 200): {startup:.2f} s  [target < 15 s]")
    if deep:
        to_ready, status = wait_for_model(url, t_start)
        print(f"start-up to model ready (python app.py until /model_status says ready): {to_ready:.2f} s ({status})")
    rows = []
    try:
        from gradio_client import Client, handle_file
        if deep:
            t0 = time.perf_counter()
            # download_files=False: the answer a browser gets (it then fetches the thumbnails itself)
            out = Client(url, verbose=False, download_files=False).predict(
                handle_file(str(queries[0])), deep, 5, api_name="/search_deep")
            first = time.perf_counter() - t0
            loaded = "first loaded" in str(out[1])
            print(f"first deep query after ready (answer with result URLs): {first:.2f} s "
                  f"({'it still loaded the model!' if loaded else 'no model loading in it'}) [target < 1 s]; "
                  f"its status line: {out[1][:80]}")
        for kind, (api, arg, method) in ENDPOINTS.items():
            if method is None:
                continue
            base = timed(lambda m=method: [index.search(q, m, 5) for q in queries[:10]], repeat=3)
            base_ms = median_ms(base) / 10
            for n in args.clients:
                for download in (True, False):
                    times, errors, wall = run_clients(url, api, arg, queries, n, max(1, args.queries // n), download)
                    med, p95 = (median_ms(times), p95_ms(times)) if times else (float("nan"),) * 2
                    rows.append((kind, method, n, "images" if download else "urls", med, p95, len(times) / wall,
                                 len(errors), base_ms))
                    for e in sorted(set(errors))[:3]:
                        print(f"  error ({kind}, {n} clients): {e}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        tmp.cleanup()

    print("\n| search | method | clients | client gets | median ms | p95 ms | queries/s | errors | "
          "in-process ms | median / in-process |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, method, n, mode, med, p95, qps, errs, base_ms in rows:
        print(f"| {kind} | {method} | {n} | {mode} | {med:.0f} | {p95:.0f} | {qps:.1f} | {errs} | {base_ms:.1f} | "
              f"{med / base_ms:.1f}x |")
    single = [r[4] for r in rows if r[0] == "pixel" and r[2] == 1 and r[3] == "images"]
    ok = all(m < 300 for m in single) and not any(r[7] for r in rows) and startup < 15
    print(f"\ntargets (pixel median < 300 ms with 1 client, no errors with 8, start-up < 15 s): "
          f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
