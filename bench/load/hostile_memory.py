"""Hostile uploads under a fixed memory cap: the app stays up, answers right, and stays in budget.

    python -m bench.load.hostile_memory [--seconds 60] [--cap-mb 8192] [--budget-mb 2560] [--json OUT]
    python -m bench --only hostile_memory

Starts the real `app.py` as a subprocess under `prlimit --as=CAP` (an address-space cap: an
allocation past it fails inside the app instead of swapping the machine) on an effnet index of a
small generated library, warms it up, then sends for `--seconds`, at the app's configured
concurrency (webui.layout: CONCURRENCY deep requests and PIXEL_CONCURRENCY pixel requests at
once, one client thread per slot), a mix of:
  the hostile uploads of tests/bad_images.py ROUND2 (65000x3 and 3x65000 JPEGs, a 1,000,000x1 PNG,
  a 64 Mpx 16-bit PNG) and ROUND3 (an 8000x8000 RGBA PNG, a 7000x7000 JPEG 2000): each must be
  answered with results;
  the refused uploads of ROUND3 (a looping EPS named .jpg, an ICO holding an 8000x8000 PNG, a
  100,000-page TIFF, a PDF named .jpg): each must be refused with its own message;
  a data: URL of 40 MB (over the 32 MB upload cap): it must be refused with the cap's message;
  normal queries (test-split images): each answer must equal LookalikeIndex.rank on the same
  index in this process (same files, same order, same scores);
  and one more visitor, outside the slots, who downloads library images over the file= route
  all along: each download must take under DOWNLOAD_LIMIT_S (the server stays responsive).
A "busy, try again" refusal (the app's queue bound) is counted apart. Reported: requests per kind,
timeouts, crashes (the server exited, or a traceback or MemoryError in its log),
wrong answers, errors, and the server's peak memory (VmHWM, and VmRSS sampled every 0.2 s) against
the budget. The budget per worker is what one app process may use: its warm baseline plus the
decode pool (retrieval.images.DECODE_POOL_BYTES, which bounds every decode in flight together)
plus the model's working memory for its concurrent deep queries; `--budget-mb` sets the figure
checked. Baseline: the same server before the hostile load, so ratios are of one run.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from ..common import ROOT, free_port, status_kb, add_check, add_table, hwm_mb, machine_info, median_ms, p95_ms, result, rss_mb, stop_process
from .soak import Expected, is_refusal, start_server

REQUEST_TIMEOUT_S = 180.0
DATA_URL_MB = 40
DOWNLOAD_LIMIT_S = 1.0
# The refused ROUND3 files sent (the others are refused the same way; these are the costly ones).
REFUSED = ("eps-loop.jpg", "ico-8000-png.ico", "pages-100000.tif", "document.jpg")


def _library(work: Path) -> Path:
    """A generated 3-class library (tests/conftest.make_tiny_library) and its effnet index."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_library
    from retrieval.indexing import build_index
    data = make_tiny_library(work / "data", n_train=10, n_test=3)
    build_index(data, work / "index", model="effnet", evaluate=False)
    return work / "index"


def _hostile(work: Path) -> dict[str, tuple[Path, Any]]:
    """{name: (path, bad_images.Case)} for every upload sent."""
    sys.path.insert(0, str(ROOT / "tests"))
    import bad_images
    cases = bad_images.ROUND2 + bad_images.ROUND3_HEAVY + tuple(c for c in bad_images.ROUND3 if c.name in REFUSED)
    paths = bad_images.write_corpus(work / "hostile", cases)
    return {c.name: (paths[c.name], c) for c in cases}


def start_capped(index: Path, port: int, log_path: Path, cap_mb: int, timeout_s: float = 240) -> subprocess.Popen:
    """app.py under `prlimit --as`, its log in a file; returns once the page answers."""
    # MALLOC_ARENA_MAX=2 as docs/spaces.md recommends for a Space: glibc otherwise reserves a 64 MB
    # arena per thread, address space that an --as cap counts although it is never touched.
    return start_server(index, port, log_path, timeout_s, wrapper=("prlimit", f"--as={cap_mb * 2 ** 20}", "--"),
                        env={"MALLOC_ARENA_MAX": "2"})


def _call(url: str, api: str, data: list[Any]) -> tuple[str, Any]:
    """POST one event to /gradio_api/call/API and read its result: ("complete", data) or ("error", message)."""
    post = requests.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=REQUEST_TIMEOUT_S)
    if post.status_code == 413:   # refused at the door (webui.limits), before the queue
        return "refused", post.json().get("error")
    post.raise_for_status()
    event_id = post.json()["event_id"]
    with requests.get(f"{url}gradio_api/call/{api}/{event_id}", stream=True, timeout=REQUEST_TIMEOUT_S) as resp:
        event = None
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("complete", "error"):
                return event, json.loads(line[6:])
    return "lost", None


class Load:
    """The client side: one thread per concurrency slot, each its own gradio_client.Client."""

    def __init__(self, url: str, expected: Expected, hostile: dict[str, tuple[Path, Any]], data_url: str) -> None:
        self.url, self.expected, self.hostile, self.data_url = url, expected, hostile, data_url
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.refused_busy = 0
        self.latency: dict[str, list[float]] = {}
        self.wrong: list[str] = []
        self.errors: list[str] = []

    def _note(self, kind: str, seconds: float, wrong: str | None = None, error: str | None = None) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.latency.setdefault(kind, []).append(seconds)
            if wrong:
                self.wrong.append(f"{kind}: {wrong}")
            if error:
                self.errors.append(f"{kind}: {error}")

    def one(self, client: Any, rng: random.Random, endpoint: str) -> None:
        from gradio_client import handle_file
        exp = self.expected
        method = "l1" if endpoint == "pixel" else rng.choice(exp.deep)
        full = "pixel-l1" if endpoint == "pixel" else method
        kind = rng.choice(["normal", "normal", "hostile", "hostile", "hostile", "data_url"])
        name = ""
        t0 = time.perf_counter()
        try:
            if kind == "normal":
                query = rng.choice(exp.queries)
                _, _, rows = client.submit(handle_file(str(query)), method, 5,
                                           api_name=f"/search_{endpoint}").result(timeout=REQUEST_TIMEOUT_S)
                self._note(kind, time.perf_counter() - t0, wrong=exp.check((str(query), full, 5), rows))
            elif kind == "hostile":
                name, (path, case) = rng.choice(sorted(self.hostile.items()))
                self._note(f"hostile {name}", *self._hostile(client, endpoint, method, name, path, case, t0))
            else:
                event, data = _call(self.url, f"search_{endpoint}",
                                    [{"path": None, "url": self.data_url, "meta": {"_type": "gradio.FileData"}}, method, 5])
                ok = (event == "refused" and "may be 32 MB" in str(data)) or \
                    (event == "error" and "the limit is 32 MB, as for uploads" in json.dumps(data))
                self._note(kind, time.perf_counter() - t0, wrong=None if ok else f"{event}: {str(data)[:200]}")
        except Exception as exc:   # counted, never hidden
            if is_refusal(exc):    # "busy, try again": the app's queue bound, not a failure
                with self.lock:
                    self.refused_busy += 1
                return
            name = kind if kind != "hostile" else f"hostile {name}"
            self._note(name, time.perf_counter() - t0, error=f"{type(exc).__name__}: {str(exc)[:300]}")

    def _hostile(self, client: Any, endpoint: str, method: str, name: str, path: Path, case: Any,
                 t0: float) -> tuple[float, str | None]:
        """Send one hostile file: (seconds, what was wrong or None). An accepted case must get five
        results; a refused one the refusal its Case names, as an error message."""
        from gradio_client import handle_file
        try:
            _, status, rows = client.submit(handle_file(str(path)), method, 5,
                                            api_name=f"/search_{endpoint}").result(timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:   # noqa: BLE001 - a refusal arrives as an AppError
            if case.accepted or is_refusal(exc) or not re.search(case.message, str(exc)):
                raise
            return time.perf_counter() - t0, None
        ok = case.accepted and len(rows) == 5 and "results in" in status
        return time.perf_counter() - t0, None if ok else f"{name}: {status!r}"

    def downloads(self, files: list[Path], deadline: float) -> None:
        """Another visitor's file downloads, all along the load: each must stay under DOWNLOAD_LIMIT_S."""
        i = 0
        while time.monotonic() < deadline:
            path = files[i % len(files)]
            i += 1
            t0 = time.perf_counter()
            try:
                got = requests.get(f"{self.url}gradio_api/file={path}", timeout=REQUEST_TIMEOUT_S)
                seconds = time.perf_counter() - t0
                wrong = None if got.status_code == 200 and got.content == path.read_bytes() else \
                    f"{path.name}: HTTP {got.status_code}, {len(got.content)} bytes"
                if seconds > DOWNLOAD_LIMIT_S:
                    wrong = f"{path.name}: {seconds:.2f} s"
                self._note("download", seconds, wrong=wrong)
            except Exception as exc:   # counted, never hidden
                self._note("download", time.perf_counter() - t0, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            time.sleep(0.2)

    def user(self, seed: int, endpoint: str, deadline: float) -> None:
        from gradio_client import Client
        rng = random.Random(seed)
        client = Client(self.url, verbose=False, download_files=False)
        while time.monotonic() < deadline:
            self.one(client, rng, endpoint)


def _sample(pid: int, stop: threading.Event, out: list[float]) -> None:
    while not stop.wait(0.2):
        mb = rss_mb(pid)
        if mb is not None:
            out.append(mb)


def run(seconds: float = 60.0, cap_mb: int = 8192, budget_mb: int = 2560, seed: int = 0,
        work: Path | None = None) -> dict[str, Any]:
    """Build the library and index, serve them under the cap, run the load; the result dict."""
    from retrieval.images import DECODE_POOL_BYTES
    from retrieval.search import LookalikeIndex
    from webui.layout import CONCURRENCY, PIXEL_CONCURRENCY
    res = result("hostile_memory", "Hostile uploads under a memory cap (prlimit --as)",
                 {"seconds": seconds, "cap_mb": cap_mb, "budget_mb": budget_mb, "seed": seed,
                  "deep_concurrency": CONCURRENCY, "pixel_concurrency": PIXEL_CONCURRENCY,
                  "decode_pool_mb": DECODE_POOL_BYTES >> 20})
    with tempfile.TemporaryDirectory(prefix="lookalike-hostile-") as tmp:
        work = Path(work or tmp)
        index = _library(work)
        hostile = _hostile(work)
        opened = LookalikeIndex.open(index)
        queries = sorted((opened.data_dir / "test").rglob("*.jpg"))
        expected = Expected(opened, queries)
        payload = base64.b64encode(os.urandom(DATA_URL_MB * 2 ** 20)).decode()   # decodes to 40 MiB
        data_url = "data:image/png;base64," + payload
        log_path = work / "app.log"
        port = free_port()
        proc = start_capped(index, port, log_path, cap_mb)
        url = f"http://127.0.0.1:{port}/"
        samples: list[float] = []
        stop = threading.Event()
        try:
            from gradio_client import Client, handle_file
            warm = Client(url, verbose=False, download_files=False)
            for m in expected.deep:
                warm.predict(handle_file(str(queries[0])), m, 5, api_name="/search_deep")
            warm.predict(handle_file(str(queries[0])), "l1", 5, api_name="/search_pixel")
            baseline = rss_mb(proc.pid)
            vm_warm = (status_kb("VmSize", proc.pid) or 0) / 1024
            threading.Thread(target=_sample, args=(proc.pid, stop, samples), daemon=True).start()
            load = Load(url, expected, hostile, data_url)
            deadline = time.monotonic() + seconds
            users = [threading.Thread(target=load.user, args=(seed + i, ep, deadline))
                     for i, ep in enumerate(["deep"] * CONCURRENCY + ["pixel"] * PIXEL_CONCURRENCY)]
            library = sorted((opened.data_dir / "train").rglob("*.jpg"))[:10]
            users.append(threading.Thread(target=load.downloads, args=(library, deadline)))
            for u in users:
                u.start()
            for u in users:
                u.join(timeout=seconds + 2 * REQUEST_TIMEOUT_S)
            alive = proc.poll() is None
            peak = hwm_mb(proc.pid) if alive else None
            vm_peak = (status_kb("VmPeak", proc.pid) or 0) / 1024 if alive else None
            end = rss_mb(proc.pid) if alive else None
        finally:
            stop.set()
            stop_process(proc)
        log = log_path.read_text(errors="replace")
        crashes = (0 if alive else 1) + log.count("Traceback") + log.count("MemoryError")
        if crashes:
            res["notes"].append("server log (tail): " + log[-1500:])
    res["figures_vm"] = {"vm_warm_mb": round(vm_warm), "vm_peak_mb": round(vm_peak) if vm_peak else None}
    _report(res, load, baseline, peak, end, samples, crashes, budget_mb, cap_mb, alive)
    add_table(res, "address space (VmSize, MB): what prlimit --as caps", ["warm", "peak (VmPeak)", "cap"],
              [[round(vm_warm), round(vm_peak) if vm_peak else "-", cap_mb]])
    return res


def _report(res: dict[str, Any], load: Load, baseline: float | None, peak: float | None, end: float | None,
            samples: list[float], crashes: int, budget_mb: int, cap_mb: int, alive: bool) -> None:
    rows = [[kind, n, round(median_ms(load.latency[kind])), round(p95_ms(load.latency[kind])),
             round(1000 * max(load.latency[kind]))] for kind, n in sorted(load.counts.items())]
    add_table(res, "requests per kind (latencies in ms; clients and server share the machine)",
              ["kind", "requests", "p50 ms", "p95 ms", "max ms"], rows)
    timeouts = sum("Timeout" in e or "timed out" in e for e in load.errors)
    downloads = load.latency.get("download", [])
    sampled = max(samples, default=0.0)
    add_table(res, "server memory (MB)", ["warm baseline RSS", "peak RSS sampled", "VmHWM (peak)", "end RSS",
                                          "budget", "address-space cap"],
              [[round(v) if v else v for v in (baseline, sampled, peak, end)] + [budget_mb, cap_mb]])
    res["figures"] = {"requests": sum(load.counts.values()), "crashes": crashes, "wrong": len(load.wrong),
                      "errors": len(load.errors), "timeouts": timeouts, "refused_busy": load.refused_busy,
                      "download_max_ms": round(1000 * max(downloads)) if downloads else None, "baseline_mb": baseline, "peak_mb": peak, "budget_mb": budget_mb,
                      "peak_over_baseline": round(peak / baseline, 2) if peak and baseline else None,
                      "peak_over_budget": round(peak / budget_mb, 2) if peak else None}
    add_check(res, "crashes", "0", str(crashes), crashes == 0 and alive)
    add_check(res, "wrong answers", "0", str(len(load.wrong)), not load.wrong)
    add_check(res, "errors (exceptions in the clients)", "0", str(len(load.errors)), not load.errors)
    add_check(res, "timeouts", "0", str(timeouts), timeouts == 0)
    add_check(res, "other visitors' file downloads", f"all < {DOWNLOAD_LIMIT_S * 1000:.0f} ms",
              f"max {1000 * max(downloads):.0f} ms over {len(downloads)}" if downloads else "none made",
              bool(downloads) and max(downloads) < DOWNLOAD_LIMIT_S)
    add_check(res, "peak memory (VmHWM)", f"<= {budget_mb} MB", f"{peak:.0f} MB ({peak / baseline:.2f}x the warm baseline)"
              if peak and baseline else "-", peak is not None and peak <= budget_mb)
    res["notes"] = [*load.wrong[:10], *load.errors[:10], *res["notes"],
                    f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', '2')} for the app", machine_info()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load.hostile_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--cap-mb", type=int, default=8192, help="prlimit --as for app.py, in MiB (default: 8192; the warm app maps about 6 GB)")
    p.add_argument("--budget-mb", type=int, default=2560, help="peak RSS the app must stay under (default: 2560)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from ..common import print_result
    res = run(seconds=args.seconds, cap_mb=args.cap_mb, budget_mb=args.budget_mb, seed=args.seed)
    print_result(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0 if all(c.get("met") for c in res.get("checks", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
