"""Soak test: concurrent gradio_client users mixing every endpoint against a local `app.py`.

    python -m bench.load.soak [--index DIR] [--clients 20] [--seconds 60] [--json OUT]

Starts the real `python app.py --index INDEX` on 127.0.0.1 (without --index: builds an effnet index
of the sample library in a temporary folder first), warms it up (the first deep and HNSW queries load
the model and Chroma), then runs `--clients` user threads for `--seconds`. Each user owns one
gradio_client.Client and picks, at random, one of:
  pixel   /search_pixel, a random metric and k, a test-split or library image
  deep    /search_deep, a random exact or HNSW method (indexes with embeddings)
  text    /search_text, a random prompt (indexes whose model has a text encoder)
  bad     a text file or a truncated JPEG uploaded to an image endpoint: the answer must be the
          library's error message
  file    GET /gradio_api/file= of a result image (bytes must equal the library file) and of
          /etc/passwd (must be refused)
Every answer is checked: search rows must equal LookalikeIndex.rank on the same index in this
process (same files in the same order, same scores), computed before the load starts. Requests are
bounded (--max-requests per user, a timeout per request) and everything stops by itself.
A "busy, try again" refusal (the app's bound on queue waits, webui.admission) is counted and
reported apart, not as an error. Reported: requests served per kind, errors (exceptions), wrong
answers, refusals, p50/p95/max latency, and the server's memory (VmRSS after warm-up and at the
end, VmHWM peak) read from /proc. Tracebacks in the server log count as errors. Exit status 1 when
anything failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests

from retrieval.images import load_image
from retrieval.library import scan_split
from retrieval.search import LookalikeIndex

from ..common import ROOT, free_port, hwm_mb, machine_info, median_ms, p95_ms, rss_mb, sample_library, stop_process

KS = (1, 5, 10)
PROMPTS = ("a red apple", "a bird on a branch", "a planet in space", "a wooden tool", "a flower")
REQUEST_TIMEOUT_S = 120.0
BUSY_WORD = "busy"            # the app's refusal past its wait bound says "the app is busy ..."


def is_refusal(exc: BaseException) -> bool:
    """A busy refusal: the queue was full or the wait too long (HTTP 503, which gradio_client raises
    as QueueError), or the request waited past the bound in the queue (an error that says "busy")."""
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError
    return isinstance(exc, QueueError) or (isinstance(exc, AppError) and BUSY_WORD in str(exc).lower())


def start_server(index: Path, port: int, log_path: Path, timeout_s: float = 180, *,
                 wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
    """app.py on 127.0.0.1:port, its log in a file (read afterwards for tracebacks); returns once the
    page answers. `wrapper` runs it under another command (e.g. `prlimit --as=...`), `env` adds variables."""
    env = {**(env or {}), **os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cmd = [*wrapper, sys.executable, str(ROOT / "app.py"), "--index", str(index), "--host", "127.0.0.1",
           "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"app.py did not answer within {timeout_s} s")


def effnet_index(folder: Path, data: Path | None = None, evaluate: bool = False) -> Path:
    """folder/index: an effnet index of `data` (default: the sample library), for a run without --index."""
    from retrieval.indexing import build_index
    index = folder / "index"
    print(f"building an effnet index of {data or 'the sample library'} in {index} ...", flush=True)
    build_index(data or sample_library(), index, model="effnet", evaluate=evaluate)
    return index


def server_tracebacks(log: str) -> tuple[int, list[str]]:
    """How many tracebacks a server log holds, and their distinct exception lines."""
    blocks = log.split("Traceback (most recent call last)")[1:]
    return len(blocks), sorted({next((ln for ln in b.splitlines()[1:] if ln and not ln[0].isspace()), "")[:200]
                                for b in blocks})


class Expected:
    """The right answer to every request the users can send, from the index opened here."""

    def __init__(self, index: LookalikeIndex, queries: list[Path]) -> None:
        self.index = index
        self.queries = queries
        # The Pixel tab offers the four plain metrics; re-ranked pixel methods live in the Compare tab.
        self.pixel = [m for m in index.methods if m.startswith("pixel-") and "+" not in m]
        self.deep = [m for m in index.methods if not m.startswith("pixel-")]
        self.prompts = list(PROMPTS) if index.has_text else []
        self.answers: dict[tuple[str, str, int], list[tuple[str, float]]] = {}
        images = [load_image(q) for q in queries]
        skips = [index.self_rows(q) for q in queries]
        for source in {index.parse_method(m).source for m in self.pixel + self.deep}:
            vectors = index.query_vectors(images, source)
            for name in [m for m in self.pixel + self.deep if index.parse_method(m).source == source]:
                for k in KS:
                    for q, ranked in zip(queries, index.rank(vectors, index.parse_method(name), k, skips)):
                        self.answers[(str(q), name, k)] = [(index.rels[i], s) for i, s in ranked]
        for prompt in self.prompts:
            for name in self.deep:
                for k in KS:
                    hits, _ = index.search_text(prompt, name, k)
                    self.answers[(prompt, name, k)] = [(h.rel, h.score) for h in hits]

    def check(self, key: tuple[str, str, int], rows: list[dict[str, Any]]) -> str | None:
        """None when the rows are the expected answer, else what differs."""
        want = self.answers[key]
        got = [(r["file"], r["score"]) for r in rows]
        if [f for f, _ in got] != [f for f, _ in want]:
            return f"{key}: files {[f for f, _ in got]} != {[f for f, _ in want]}"
        if not np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-4):
            return f"{key}: scores {[s for _, s in got]} != {[s for _, s in want]}"
        return None


class Soak:
    def __init__(self, url: str, expected: Expected, bad_files: dict[str, Path], seed: int) -> None:
        self.url, self.expected, self.bad_files = url, expected, bad_files
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.wrong: list[str] = []
        self.refused = 0
        kinds = ["pixel", "pixel", "file", "bad"]
        if expected.deep:
            kinds += ["deep", "deep"]
        if expected.prompts:
            kinds += ["text"]
        self.kinds = kinds

    def _record(self, kind: str, seconds: float, error: str | None = None, wrong: str | None = None) -> None:
        with self.lock:
            self.latency[kind].append(seconds)
            if error:
                self.errors.append(f"{kind}: {error}")
            if wrong:
                self.wrong.append(f"{kind}: {wrong}")

    def one(self, client: Any, rng: random.Random) -> None:
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError

        kind = rng.choice(self.kinds)
        exp = self.expected
        k = rng.choice(KS)
        t0 = time.perf_counter()
        try:
            if kind in ("pixel", "deep"):
                query = rng.choice(exp.queries)
                method = rng.choice(exp.pixel if kind == "pixel" else exp.deep)
                arg = method.removeprefix("pixel-") if kind == "pixel" else method
                job = client.submit(handle_file(str(query)), arg, k, api_name=f"/search_{kind}")
                _, status, rows = job.result(timeout=REQUEST_TIMEOUT_S)
                wrong = exp.check((str(query), method, k), rows) or (None if method in status else f"status {status!r}")
            elif kind == "text":
                prompt, method = rng.choice(exp.prompts), rng.choice(exp.deep)
                _, status, rows = client.submit(prompt, method, k, api_name="/search_text").result(timeout=REQUEST_TIMEOUT_S)
                wrong = exp.check((prompt, method, k), rows)
            elif kind == "bad":
                message, path = rng.choice(list(self.bad_files.items()))
                api, arg = rng.choice([("/search_pixel", "l1")] + ([("/search_deep", exp.deep[0])] if exp.deep else []))
                try:
                    client.submit(handle_file(str(path)), arg, k, api_name=api).result(timeout=REQUEST_TIMEOUT_S)
                    wrong = f"{path.name} was accepted by {api}"
                except AppError as exc:
                    wrong = None if message in str(exc) else f"{path.name}: unexpected message {exc}"
            else:  # file
                rel = rng.choice(exp.index.rels)
                path = exp.index.data_dir / rel
                got = requests.get(f"{self.url}gradio_api/file={path}", timeout=REQUEST_TIMEOUT_S)
                refused = requests.get(f"{self.url}gradio_api/file=/etc/passwd", timeout=REQUEST_TIMEOUT_S)
                wrong = None
                if got.status_code != 200 or got.content != path.read_bytes():
                    wrong = f"{rel}: HTTP {got.status_code}, {len(got.content)} bytes"
                elif refused.status_code != 403:
                    wrong = f"/etc/passwd answered HTTP {refused.status_code}"
            self._record(kind, time.perf_counter() - t0, wrong=wrong)
        except Exception as exc:  # counted and reported, never hidden
            if is_refusal(exc):   # "busy, try again": the app's wait bound (webui.admission), not a failure
                with self.lock:
                    self.refused += 1
                return
            self._record(kind, time.perf_counter() - t0, error=f"{type(exc).__name__}: {str(exc)[:300]}")

    def user(self, seed: int, deadline: float, max_requests: int) -> int:
        from gradio_client import Client
        rng = random.Random(seed)
        client = Client(self.url, verbose=False, download_files=False)
        n = 0
        while time.monotonic() < deadline and n < max_requests:
            self.one(client, rng)
            n += 1
        return n


def _sample_rss(pid: int, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    t0 = time.monotonic()
    while not stop.wait(0.5):
        mb = rss_mb(pid)
        if mb is not None:
            out.append((time.monotonic() - t0, mb))


def _bad_files(folder: Path, some_jpeg: Path) -> dict[str, Path]:
    text = folder / "notes.jpg"
    text.write_text("this is a text file renamed to .jpg\n")
    truncated = folder / "cut.jpg"
    data = some_jpeg.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"not an image": text, "corrupt or truncated": truncated}


def run(index: Path | None = None, clients: int = 20, seconds: float = 60.0, max_requests: int = 5000,
        seed: int = 0, work: Path | None = None) -> dict[str, Any]:
    """Build (if needed) and serve the index, run the users, and return the figures."""
    with tempfile.TemporaryDirectory(prefix="lookalike-soak-") as tmp:
        work = Path(work or tmp)
        index = index or effnet_index(work)
        opened = LookalikeIndex.open(index)
        queries = [it.path(opened.data_dir) for it in scan_split(opened.data_dir, "test")]
        queries = queries[:12] + [opened.paths[i] for i in range(0, len(opened.paths), max(1, len(opened.paths) // 4))]
        t0 = time.perf_counter()
        expected = Expected(opened, queries)
        print(f"expected answers: {len(expected.answers)} in {time.perf_counter() - t0:.1f} s", flush=True)
        bad = _bad_files(work, next(q for q in queries if q.suffix.lower() in (".jpg", ".jpeg")))

        port = free_port()
        log_path = work / "app.log"
        proc = start_server(Path(index), port, log_path)
        url = f"http://127.0.0.1:{port}/"
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, stop, samples), daemon=True)
        try:
            soak = Soak(url, expected, bad, seed)
            from gradio_client import Client, handle_file
            warm = Client(url, verbose=False, download_files=False)
            t0 = time.perf_counter()
            for method in expected.deep[:1] + [m for m in expected.deep if "-hnsw-" in m][:1]:
                warm.predict(handle_file(str(queries[0])), method, 5, api_name="/search_deep")
            warmup_s = time.perf_counter() - t0
            rss_start = rss_mb(proc.pid)
            sampler.start()
            deadline = time.monotonic() + seconds
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients, thread_name_prefix="user") as pool:
                counts = list(pool.map(lambda c: soak.user(seed * 1000 + c, deadline, max_requests), range(clients)))
            wall = time.perf_counter() - t0
            rss_end, peak = rss_mb(proc.pid), hwm_mb(proc.pid)
        finally:
            stop.set()
            stop_process(proc)
        server_log = log_path.read_text(errors="replace")
        tracebacks, _ = server_tracebacks(server_log)

    all_lat = [x for v in soak.latency.values() for x in v]
    half = seconds / 2
    first = max((mb for t, mb in samples if t <= half), default=float("nan"))
    second = max((mb for t, mb in samples if t > half), default=float("nan"))
    tenth = seconds / 10   # the highest RSS in each tenth of the run: a leak shows as a steady climb
    timeline = [round(max((mb for t, mb in samples if i * tenth < t <= (i + 1) * tenth), default=float("nan")), 1)
                for i in range(10)]
    return {
        "machine": machine_info(), "index": str(index), "library": len(opened.rels),
        "clients": clients, "seconds": round(wall, 1), "requests": sum(counts),
        "per_kind": {k: {"n": len(v), "p50_ms": round(median_ms(v), 1), "p95_ms": round(p95_ms(v), 1),
                         "max_ms": round(1000 * max(v), 1)} for k, v in sorted(soak.latency.items())},
        "p50_ms": round(median_ms(all_lat), 1) if all_lat else None,
        "p95_ms": round(p95_ms(all_lat), 1) if all_lat else None,
        "throughput_rps": round(len(all_lat) / wall, 1),
        "errors": len(soak.errors) + tracebacks, "wrong": len(soak.wrong), "server_tracebacks": tracebacks,
        "refused_busy": soak.refused,
        "error_examples": soak.errors[:5], "wrong_examples": soak.wrong[:5],
        "warmup_s": round(warmup_s, 1),
        "server_rss_mb": {"after_warmup": round(rss_start or 0, 1), "end": round(rss_end or 0, 1),
                          "peak_hwm": round(peak or 0, 1), "max_first_half": round(first, 1),
                          "max_second_half": round(second, 1), "max_per_tenth": timeline},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, default=None, help="a built index (default: build an effnet index "
                                                            "of the sample library in a temp folder)")
    p.add_argument("--clients", type=int, default=20, help="concurrent users (default 20)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the load phase (default 60)")
    p.add_argument("--max-requests", type=int, default=5000, help="cap per user (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = p.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.seconds <= 3600:
        p.error("--clients must be 1..200 and --seconds 0..3600")
    res = run(args.index, args.clients, args.seconds, args.max_requests, args.seed)
    print(json.dumps(res, indent=1))
    m = res["server_rss_mb"]
    print(f"\n{res['requests']} requests from {res['clients']} users in {res['seconds']} s "
          f"({res['throughput_rps']}/s): {res['errors']} errors, {res['wrong']} wrong answers, "
          f"{res['refused_busy']} refused as busy; "
          f"p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms; server RSS {m['after_warmup']} MB after warm-up, "
          f"{m['end']} MB at the end, peak {m['peak_hwm']} MB")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["errors"] == 0 and res["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
