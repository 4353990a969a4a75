"""Hostile uploads under a fixed memory cap: the app stays up, answers right, and stays in budget.

    python -m bench.load.hostile_memory [--seconds 60] [--cap-mb 8192] [--budget-mb 2560] [--json OUT]
    python -m bench --only hostile_memory

Starts the real `app.py` under `prlimit --as=CAP` (MiB; an allocation past it fails inside the app
instead of swapping the machine; the warm app maps about 6 GB) on an effnet index of a small
generated library, warms it up, then sends for `--seconds`, one client thread per concurrency slot
of the app (webui.layout), a mix of: the hostile uploads of tests/bad_images.py ROUND2 and
ROUND3_HEAVY (each must be answered with results); the costly refused ROUND3 files (each must be
refused with its own message); a 40 MB data: URL (refused with the upload cap's message); normal
queries (answers must equal LookalikeIndex.rank in this process); and, from one more visitor, library
image downloads that must each take under DOWNLOAD_LIMIT_S. Busy refusals are counted apart.
Reported: requests per kind, crashes (the server exited, a traceback or MemoryError in its log),
wrong answers, errors, timeouts, and the server's peak memory against `--budget-mb` (its warm
baseline plus the decode pool, retrieval.images.DECODE_POOL_BYTES, plus the model's working memory
for its concurrent deep queries). More: docs/reliability.md, "The memory-cap benchmark".
"""
from __future__ import annotations

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
from pathlib import Path
from typing import Any

import requests

from retrieval.methods import PIXEL_DEFAULT

from ..common import (ROOT, add_check, add_table, cli, free_port, hwm_mb, machine_info, median_ms, p95_ms,
                      print_result, result, rss_mb, status_kb, stop_process)
from .soak import Expected, Tally, is_refusal, sample_rss, start_server, warm_up

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


class Load(Tally):
    """The client side: one thread per concurrency slot, each its own gradio_client.Client."""

    def __init__(self, url: str, expected: Expected, hostile: dict[str, tuple[Path, Any]], data_url: str) -> None:
        super().__init__()
        self.url, self.expected, self.hostile, self.data_url = url, expected, hostile, data_url

    def one(self, client: Any, rng: random.Random, endpoint: str) -> None:
        from gradio_client import handle_file
        exp = self.expected
        full = str(PIXEL_DEFAULT) if endpoint == "pixel" else rng.choice(exp.deep)
        method = exp.argument(full)
        kind = rng.choice(["normal", "normal", "hostile", "hostile", "hostile", "data_url"])
        name = ""
        t0 = time.perf_counter()
        try:
            if kind == "normal":
                query = rng.choice(exp.queries)
                _, _, rows = client.submit(handle_file(str(query)), method, 5,
                                           api_name=f"/search_{endpoint}").result(timeout=REQUEST_TIMEOUT_S)
                self.note(kind, time.perf_counter() - t0, wrong=exp.check((str(query), full, 5), rows))
            elif kind == "hostile":
                name, (path, case) = rng.choice(sorted(self.hostile.items()))
                self.note(f"hostile {name}", *self._hostile(client, endpoint, method, name, path, case, t0))
            else:
                upload = {"path": None, "url": self.data_url, "meta": {"_type": "gradio.FileData"}}
                event, data = _call(self.url, f"search_{endpoint}", [upload, method, 5])
                ok = (event == "refused" and "may be 32 MB" in str(data)) or \
                    (event == "error" and "the limit is 32 MB, as for uploads" in json.dumps(data))
                self.note(kind, time.perf_counter() - t0, wrong=None if ok else f"{event}: {str(data)[:200]}")
        except Exception as exc:   # counted, never hidden
            self.failed(kind if kind != "hostile" else f"hostile {name}", t0, exc)

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
                self.note("download", seconds, wrong=wrong)
            except Exception as exc:   # counted, never hidden
                self.note("download", time.perf_counter() - t0, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            time.sleep(0.2)

    def user(self, seed: int, endpoint: str, deadline: float) -> None:
        from gradio_client import Client
        rng = random.Random(seed)
        client = Client(self.url, verbose=False, download_files=False)
        while time.monotonic() < deadline:
            self.one(client, rng, endpoint)


def run(seconds: float = 60.0, cap_mb: int = 8192, budget_mb: int = 2560, seed: int = 0) -> dict[str, Any]:
    """Build the library and index, serve them under the cap, run the load; the result dict."""
    from retrieval.images import DECODE_POOL_BYTES
    from retrieval.search import LookalikeIndex
    from webui.layout import CONCURRENCY, PIXEL_CONCURRENCY
    res = result("hostile_memory", "Hostile uploads under a memory cap (prlimit --as)",
                 {"seconds": seconds, "cap_mb": cap_mb, "budget_mb": budget_mb, "seed": seed,
                  "deep_concurrency": CONCURRENCY, "pixel_concurrency": PIXEL_CONCURRENCY,
                  "decode_pool_mb": DECODE_POOL_BYTES >> 20})
    with tempfile.TemporaryDirectory(prefix="lookalike-hostile-") as tmp:
        work = Path(tmp)
        index = _library(work)
        opened = LookalikeIndex.open(index)
        queries = sorted((opened.data_dir / "test").rglob("*.jpg"))
        expected = Expected(opened, queries)
        payload = base64.b64encode(os.urandom(DATA_URL_MB * 2 ** 20)).decode()   # decodes to 40 MiB
        port, log_path = free_port(), work / "app.log"
        proc = start_capped(index, port, log_path, cap_mb)
        load = Load(f"http://127.0.0.1:{port}/", expected, _hostile(work), "data:image/png;base64," + payload)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        try:
            from gradio_client import Client, handle_file
            warm_up(load.url, queries[0], expected.deep)
            Client(load.url, verbose=False, download_files=False).predict(
                handle_file(str(queries[0])), "l1", 5, api_name="/search_pixel")
            baseline = rss_mb(proc.pid)
            vm_warm = (status_kb("VmSize", proc.pid) or 0) / 1024
            threading.Thread(target=sample_rss, args=(proc.pid, stop, 0.2, samples), daemon=True).start()
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
    sampled = max((mb for _, mb in samples), default=0.0)
    _report(res, load, baseline, peak, end, sampled, crashes, budget_mb, cap_mb, alive)
    add_table(res, "address space (VmSize, MB): what prlimit --as caps", ["warm", "peak (VmPeak)", "cap"],
              [[round(vm_warm), round(vm_peak) if vm_peak else "-", cap_mb]])
    return res


def _report(res: dict[str, Any], load: Load, baseline: float | None, peak: float | None, end: float | None,
            sampled: float, crashes: int, budget_mb: int, cap_mb: int, alive: bool) -> None:
    rows = [[kind, len(t), round(median_ms(t)), round(p95_ms(t)), round(1000 * max(t))]
            for kind, t in sorted(load.latency.items())]
    add_table(res, "requests per kind (latencies in ms; clients and server share the machine)",
              ["kind", "requests", "p50 ms", "p95 ms", "max ms"], rows)
    timeouts = sum("Timeout" in e or "timed out" in e for e in load.errors)
    downloads = load.latency.get("download", [])
    add_table(res, "server memory (MB)", ["warm baseline RSS", "peak RSS sampled", "VmHWM (peak)", "end RSS",
                                          "budget", "address-space cap"],
              [[round(v) if v else v for v in (baseline, sampled, peak, end)] + [budget_mb, cap_mb]])
    res["figures"] = {"requests": sum(len(t) for t in load.latency.values()), "crashes": crashes,
                      "wrong": len(load.wrong), "errors": len(load.errors), "timeouts": timeouts,
                      "refused_busy": load.refused,
                      "download_max_ms": round(1000 * max(downloads)) if downloads else None,
                      "baseline_mb": baseline, "peak_mb": peak, "budget_mb": budget_mb,
                      "peak_over_baseline": round(peak / baseline, 2) if peak and baseline else None,
                      "peak_over_budget": round(peak / budget_mb, 2) if peak else None}
    add_check(res, "crashes", "0", str(crashes), crashes == 0 and alive)
    add_check(res, "wrong answers", "0", str(len(load.wrong)), not load.wrong)
    add_check(res, "errors (exceptions in the clients)", "0", str(len(load.errors)), not load.errors)
    add_check(res, "timeouts", "0", str(timeouts), timeouts == 0)
    add_check(res, "other visitors' file downloads", f"all < {DOWNLOAD_LIMIT_S * 1000:.0f} ms",
              f"max {1000 * max(downloads):.0f} ms over {len(downloads)}" if downloads else "none made",
              bool(downloads) and max(downloads) < DOWNLOAD_LIMIT_S)
    add_check(res, "peak memory (VmHWM)", f"<= {budget_mb} MB",
              f"{peak:.0f} MB ({peak / baseline:.2f}x the warm baseline)" if peak and baseline else "-",
              peak is not None and peak <= budget_mb)
    res["notes"] = [*load.wrong[:10], *load.errors[:10], *res["notes"],
                    f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', '2')} for the app", machine_info()]


def summary(res: dict[str, Any]) -> int:
    """Print the result; exit status 1 unless every target was met."""
    print_result(res)
    return 0 if all(c.get("met") for c in res.get("checks", [])) else 1


if __name__ == "__main__":
    sys.exit(cli(run, summary=summary))
