"""End-to-end latency of the app through gradio_client, and its start-up time on a built index.

Start-up: starts the real `python app.py --index INDEX` in a subprocess, `--starts` times (default
3) for each code below, and times, from the moment the process is started: the page answering HTTP
200; the page's model line (/model_status) saying "model ready" (the background warm-up done); then
one deep query (predict() to answer, with result URLs: what a browser gets). Also the CPU seconds the
app used until ready (other jobs on the machine move that figure less than the wall clock), and
whether the start timed the model in fp32 and bf16 (the precision calibration of `--precision auto`
on a bf16 index). The codes: "before", the code at `--baseline` (a git commit, unpacked with `git
archive` into a temp folder, or a folder holding an older checkout); "after, 1st start", this tree
with an empty cache folder (XDG_CACHE_HOME), as on a new machine or a fresh Space; "after, next
starts", this tree with the calibration that untimed quiet starts kept first (webui.warmup.
calibration_cache; at most 3 tries: a close call is not kept, and the printout says so). All run
with the same Python on the same library and index; where the older code cannot open that index (an
embedder changed between them), on one it builds of the same library (or `--baseline-index`). The
starts run in turn, the order reversed every other round, so that other jobs on the machine hit each
code alike; each round runs them on a quiet machine and under load (one CPU-burning process per core
beside the app). Medians, the load average at each start, and the ratios after / before are printed.

Queries: sends test-split queries to /search_pixel and /search_deep from 1 and from 8 concurrent
clients (one gradio_client.Client per thread). A call is timed from predict() to its return:
upload, queue, search, and (column "images") the download of the k result images, one after
another, as gradio_client does by default; "urls" is Client(download_files=False), the answer a
browser gets before it fetches the thumbnails in parallel. gradio_client itself polls its message
queue every 50 ms, so part of every figure is the client's. The baseline, measured in this process,
is the same query straight through LookalikeIndex.search (no HTTP), so the ratio is what the web
layer costs. The clients run on the same machine as the server and share its CPUs.

    python -m bench.load.app_latency [--data data] [--index DIR] [--queries 40] [--clients 1 8]
                                     [--baseline REF|DIR] [--baseline-index DIR] [--starts 3]
                                     [--startup-only | --no-startup]
Targets: pixel median < 300 ms; no errors with 8 clients; start-up (HTTP 200, 1st start, quiet)
< 15 s; first deep query after "model ready" < 1 s.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from retrieval.library import scan_split
from retrieval.methods import PIXEL_DEFAULT
from retrieval.search import LookalikeIndex

from ..common import (ROOT, free_port, machine_info, median_ms, p95_ms, proc_field, sample_effnet_index,
                      sample_library, stop_process, timed)
from .soak import start_server

ENDPOINTS = {"pixel": ("/search_pixel", PIXEL_DEFAULT.metric, str(PIXEL_DEFAULT)), "deep": ("/search_deep", None, None)}
BASELINE = "ab506cd"   # the code before issue 21's start-up work (model ready 24 s on a 2-vCPU Space)
LOADS = ("quiet", "loaded")


CODES = ("before", "after, 1st start", "after, next starts")
CACHE_FILE = Path("lookalike") / "calibration.json"   # under XDG_CACHE_HOME: webui.warmup.calibration_cache


@dataclass(frozen=True)
class Start:
    """One app start: seconds from starting the process to each milestone, and the machine's load."""

    code: str              # one of CODES
    load: str              # one of LOADS
    http_s: float          # the page answers HTTP 200
    ready_s: float         # /model_status says ready (= http_s for an index without a model)
    first_query_s: float   # one deep query after ready, predict() to answer (nan without a model)
    cpu_s: float           # CPU seconds the app process used until ready (all its threads): other jobs move it less
    calibrated: str        # "" or what its precision calibration measured ("bf16 1.42x fp32"): its log's line
    loadavg: float         # 1-minute load average when the process was started


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
        if "failed" in status:
            raise SystemExit(f"the app could not load its model: {status}")
        if "loading" not in status:
            return time.perf_counter() - t_start, status
        time.sleep(0.1)
    raise SystemExit(f"the model was still loading after {timeout_s} s: {status}")


def first_deep_query(url: str, query: Path, method: str) -> tuple[float, str]:
    """Seconds for one deep query, predict() to answer (with result URLs, as a browser gets it), and its status line."""
    from gradio_client import Client, handle_file
    client = Client(url, verbose=False, download_files=False)
    t0 = time.perf_counter()
    out = client.predict(handle_file(str(query)), method, 5, api_name="/search_deep")
    return time.perf_counter() - t0, str(out[1])


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat; nan where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_start(code: str, load: str, root: Path, index_dir: Path, log: Path, query: Path,
               deep: str | None, cache_home: Path) -> Start:
    """Start `root`/app.py on the index with XDG_CACHE_HOME=cache_home (where it keeps its precision
    calibration), time its milestones (Start), and stop it."""
    port, avg = free_port(), os.getloadavg()[0]
    t_start = time.perf_counter()
    proc = start_server(index_dir, port, log, timeout_s=300, root=root, wrapper=("env", f"XDG_CACHE_HOME={cache_home}"))
    try:
        http = time.perf_counter() - t_start
        url = f"http://127.0.0.1:{port}/"
        ready, first = http, float("nan")
        if deep:
            ready, _ = wait_for_model(url, t_start)
        cpu = cpu_seconds_of(proc.pid)
        if deep:
            first, status = first_deep_query(url, query, deep)
            if "first loaded" in status:
                print(f"  note: the first deep query ({code}, {load}) still loaded the model: {status[:80]}")
    finally:
        stop_process(proc)
    found = re.search(r"precision auto: bf16 is ([0-9.]+x) fp32", log.read_text(errors="replace"))
    return Start(code, load, http, ready, first, cpu, f"bf16 {found.group(1)} fp32" if found else "", avg)


class Burners:
    """One CPU-burning process per core (a pure-Python loop) while the `with` block runs: the load of
    the "loaded" starts."""

    def __enter__(self) -> "Burners":
        loop = "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) % 2147483648"
        self.procs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)]
        time.sleep(1.0)   # let them reach full speed
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            stop_process(p, timeout=10)


def baseline_index(tree: Path, data: Path, given: Path | None, index_dir: Path, work: Path) -> Path:
    """The index the older code serves: `given`; else this tree's when the older code opens it (the
    same embedder spec); else one that the older code builds of the same library (minutes)."""
    if given is not None:
        return given
    probe = [sys.executable, "-c", "import sys; from retrieval.search import LookalikeIndex; "
             "i = LookalikeIndex.open(sys.argv[1]); i.prepare(i.default_method)", str(index_dir)]
    if subprocess.run(probe, cwd=tree, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode == 0:
        return index_dir
    out = work / "before-index"
    print(f"the older code cannot serve {index_dir}; building its own index of {data} in {out} ...", flush=True)
    subprocess.run([sys.executable, "build_index.py", "index", "--data", str(data), "--index", str(out),
                    "--model", "effnet"], cwd=tree, check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def baseline_tree(ref: str, folder: Path) -> Path:
    """The code to compare against: `ref` itself when it is a folder holding app.py, else the tree of
    git commit `ref` unpacked into `folder` (git archive: the checkout and its branches are untouched)."""
    if (Path(ref) / "app.py").is_file():
        return Path(ref)
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def start_order(n: int) -> Iterator[tuple[str, str]]:
    """(load, code) for n rounds: quiet then loaded each round, the codes in turn, reversed every
    other round, so that other jobs on the machine hit each code alike."""
    for i in range(n):
        for load in LOADS:
            yield from ((load, c) for c in (CODES if i % 2 == 0 else CODES[::-1]))


def seed_calibration(root: Path, index_dir: Path, work: Path, query: Path, deep: str | None, cache_home: Path,
                     tries: int = 3) -> str:
    """Quiet untimed starts of this tree with `cache_home` until it keeps a calibration (a close call is
    not kept: other jobs on the CPUs make the measured ratio noisy), at most `tries`; what happened, in words."""
    seen = []
    for i in range(tries):
        s = time_start("seed", "quiet", root, index_dir, work / f"app-seed-{i}.log", query, deep, cache_home)
        if (cache_home / CACHE_FILE).is_file():
            return f"kept at seeding start {i + 1} ({s.calibrated})"
        if not s.calibrated:
            return "nothing to keep: this index's query precision needs no calibration here"
        seen.append(s.calibrated)
    return f"none kept in {tries} seeding starts (close calls: {', '.join(seen)}); the next starts calibrate again"


def measure_startups(roots: dict[str, Path], indexes: dict[str, Path], work: Path, query: Path, deep: str | None,
                     starts: int) -> list[Start]:
    """`starts` starts of each code on a quiet machine and under Burners, in start_order. Each start
    but "after, next starts" gets an empty cache folder (a first start on this machine); those share
    one, seeded first (seed_calibration)."""
    shared = work / "cache-next"
    print(f"# the next starts' calibration: {seed_calibration(roots['after'], indexes['after'], work, query, deep, shared)}",
          flush=True)
    out: list[Start] = []
    for i, (load, code) in enumerate(start_order(starts)):
        log, cache = work / f"app-{i}.log", shared if code == CODES[2] else work / f"cache-{i}"
        which = "before" if code == CODES[0] else "after"
        with Burners() if load == "loaded" else contextlib.nullcontext():
            s = time_start(code, load, roots[which], indexes[which], log, query, deep, cache)
        print(f"  start {i + 1:2}: {code:18} {load:6}  HTTP {s.http_s:5.2f} s  ready {s.ready_s:5.2f} s  "
              f"first query {s.first_query_s:4.2f} s  CPU until ready {s.cpu_s:5.1f} s  "
              f"{'calibrated: ' + s.calibrated if s.calibrated else 'no calibration'}  (load average {s.loadavg:.2f})",
              flush=True)
        out.append(s)
    return out


def startup_table(results: list[Start], baseline: str) -> list[str]:
    """Markdown: medians per (load, code), then each "after" / "before" per load."""
    n = len(results) // (len(LOADS) * len(CODES))
    lines = [f"\nstart-up, median of {n} starts each, seconds from starting `python app.py` (before = {baseline}, "
             f"after = this tree; \"loaded\": {os.cpu_count()} CPU-burning processes beside it)", "",
             "| machine | code | HTTP 200 | model ready | first deep query after ready | CPU s until ready | "
             "starts that calibrated | load average (1 min) |", "|---|---|---|---|---|---|---|---|"]
    fields = ("http_s", "ready_s", "first_query_s", "cpu_s", "loadavg")
    for load in LOADS:
        med = {}
        for code in CODES:
            runs = [s for s in results if s.load == load and s.code == code]
            med[code] = [statistics.median(getattr(s, f) for s in runs) for f in fields]
            h, r, q, c, a = med[code]
            lines.append(f"| {load} | {code} | {h:.2f} s | {r:.2f} s | {q:.2f} s | {c:.1f} | "
                         f"{sum(bool(s.calibrated) for s in runs)} of {len(runs)} | {a:.2f} |")
        for code in CODES[1:]:
            ratio = [x / y for x, y in zip(med[code][:4], med[CODES[0]][:4])]
            lines.append(f"| {load} | {code} / before | " + " | ".join(f"{x:.2f}x" for x in ratio) + " | | |")
    return lines


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


def latency_table(index: LookalikeIndex, index_dir: Path, work: Path, queries: list[Path],
                  clients: list[int], n_queries: int) -> bool:
    """Start this tree's app once, wait for its model, send the queries; print the table. True: targets met."""
    port = free_port()
    t_start = time.perf_counter()
    proc = start_server(index_dir, port, work / "app.log", timeout_s=300)
    startup = time.perf_counter() - t_start
    url = f"http://127.0.0.1:{port}/"
    rows = []
    try:
        if ENDPOINTS["deep"][2]:
            wait_for_model(url, t_start)
        for kind, (api, arg, method) in ENDPOINTS.items():
            if method is None or arg is None:
                continue
            base = timed(lambda m=method: [index.search(q, m, 5) for q in queries[:10]], repeat=3)
            base_ms = median_ms(base) / 10
            for n in clients:
                for download in (True, False):
                    times, errors, wall = run_clients(url, api, arg, queries, n, max(1, n_queries // n), download)
                    med, p95 = (median_ms(times), p95_ms(times)) if times else (float("nan"),) * 2
                    rows.append((kind, method, n, "images" if download else "urls", med, p95, len(times) / wall,
                                 len(errors), base_ms))
                    for e in sorted(set(errors))[:3]:
                        print(f"  error ({kind}, {n} clients): {e}")
    finally:
        stop_process(proc)
    print(f"\nqueries (this tree; its start-up until HTTP 200 this time: {startup:.2f} s)\n")
    print("| search | method | clients | client gets | median ms | p95 ms | queries/s | errors | "
          "in-process ms | median / in-process |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, method, n, mode, med, p95, qps, errs, base_ms in rows:
        print(f"| {kind} | {method} | {n} | {mode} | {med:.0f} | {p95:.0f} | {qps:.1f} | {errs} | {base_ms:.1f} | "
              f"{med / base_ms:.1f}x |")
    single = [r[4] for r in rows if r[0] == "pixel" and r[2] == 1 and r[3] == "images"]
    return all(m < 300 for m in single) and not any(r[7] for r in rows) and startup < 15


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load.app_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="library (default: data/, the sample library, built if missing)")
    p.add_argument("--index", type=Path, default=None,
                   help="a built index (default: an effnet index of --data in bench.common.SAMPLE_INDEX, "
                        "built on first use and brought up to date on later ones)")
    p.add_argument("--queries", type=int, default=40, help="queries per (method, clients) setting (default 40)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--baseline", default=BASELINE,
                   help=f"the code to compare start-up against: a git commit or a folder (default {BASELINE})")
    p.add_argument("--baseline-index", type=Path, default=None,
                   help="an index the --baseline code serves (default: --index when it opens it, else one it builds)")
    p.add_argument("--starts", type=int, default=3, help="starts of each code per load (default 3; medians)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--startup-only", action="store_true", help="only the start-up comparison")
    mode.add_argument("--no-startup", action="store_true", help="only the query latencies")
    return p


def main() -> int:
    args = parser().parse_args()
    data = sample_library(args.data)
    tmp = tempfile.TemporaryDirectory(prefix="lookalike-bench-")
    work = Path(tmp.name)
    index_dir = sample_effnet_index(args.index, data)   # evaluated: the app shows its Evaluation tab
    index = LookalikeIndex.open(index_dir, data_dir=Path(data))
    deep = str(index.default_method) if index.manifest.embedder else None
    ENDPOINTS["deep"] = ("/search_deep", deep, deep)
    queries = [it.path(Path(data)) for it in scan_split(Path(data), "test")]
    print(f"# app latency: {machine_info()}, {proc_field('/proc/cpuinfo', 'model name') or 'unknown CPU'}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"# library {len(index.paths)} images, {len(queries)} test queries, k=5, index {index_dir}")
    ok = True
    try:
        if not args.no_startup:
            roots = {"before": baseline_tree(args.baseline, work / "before"), "after": ROOT}
            indexes = {"before": baseline_index(roots["before"], Path(data), args.baseline_index, index_dir, work),
                       "after": index_dir}
            print(f"# before serves {indexes['before']}, after serves {indexes['after']}")
            results = measure_startups(roots, indexes, work, queries[0], deep, args.starts)
            print("\n".join(startup_table(results, args.baseline)))
            after = [s for s in results if s.code == CODES[1] and s.load == "quiet"]
            http, first = (statistics.median(getattr(s, f) for s in after) for f in ("http_s", "first_query_s"))
            ok = http < 15 and not first > 1
        if not args.startup_only:
            ok = latency_table(index, index_dir, work, queries, args.clients, args.queries) and ok
    finally:
        tmp.cleanup()
    print(f"\ntargets (pixel median < 300 ms with 1 client, no errors with 8, start-up < 15 s, first deep "
          f"query after ready < 1 s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
