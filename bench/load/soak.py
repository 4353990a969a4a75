"""Soak test: concurrent gradio_client users mixing every endpoint against a local `app.py`.

    python -m bench.load.soak [--index DIR] [--clients 20] [--seconds 60] [--max-requests 5000] [--json OUT]

Starts the real `python app.py --index INDEX` on 127.0.0.1 (without --index: builds an effnet index
of the sample library first), warms it up, then runs `--clients` users for `--seconds`, each
sending at random: pixel and deep searches, text searches (CLIP indexes), bad uploads (a text file,
a truncated JPEG) and file downloads (a library image, and /etc/passwd, which must be refused).
Every search answer must equal LookalikeIndex.rank computed here beforehand; a bad upload must get
its own message. Busy refusals (webui.admission) are counted apart. Reported: requests per kind,
errors, wrong answers, latencies, the server's memory; exit status 1 when anything failed. More:
docs/reliability.md, "Concurrent users". The shared parts of the load tests live here too.
"""
from __future__ import annotations

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

from ..common import (ROOT, cli, free_port, hwm_mb, machine_info, median_ms, p95_ms, rss_mb, sample_library,
                      stop_process, wait_for_http)

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
                 wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None, root: Path = ROOT) -> subprocess.Popen:
    """app.py on 127.0.0.1:port, its log in a file (read afterwards for tracebacks); returns once the
    page answers. `wrapper` runs it under another command (e.g. `prlimit --as=...`), `env` adds variables,
    `root` is the checkout whose app.py runs (app_latency starts an older one too)."""
    env = {**(env or {}), **os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cmd = [*wrapper, sys.executable, str(root / "app.py"), "--index", str(index), "--host", "127.0.0.1",
           "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(proc, f"http://127.0.0.1:{port}/", timeout_s, "app.py")
    except RuntimeError as exc:
        raise SystemExit(f"{exc}: {log_path.read_text()[-2000:]}") from None
    return proc


def effnet_index(folder: Path, data: Path | None = None, evaluate: bool = False) -> Path:
    """folder/index: an effnet index of `data` (default: the sample library), for a run without --index."""
    from retrieval.indexing import build_index
    index = folder / "index"
    print(f"building an effnet index of {data or 'the sample library'} in {index} ...", flush=True)
    build_index(data or sample_library(), index, model="effnet", evaluate=evaluate)
    return index


def warm_up(url: str, query: Path, methods: list[str], timeout_s: float = 300) -> float:
    """One deep query per method (the first deep and HNSW queries load the model and Chroma), each
    sent again while the app's own warm-up still loads the model; returns the seconds it took."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    client = Client(url, verbose=False, download_files=False)
    t0 = time.perf_counter()
    for method in methods:
        while True:
            try:
                client.predict(handle_file(str(query)), method, 5, api_name="/search_deep")
                break
            except AppError as exc:
                if "still loading" not in str(exc) or time.perf_counter() - t0 > timeout_s:
                    raise
                time.sleep(0.5)
    return time.perf_counter() - t0


def server_tracebacks(log: str) -> tuple[int, list[str]]:
    """How many tracebacks a server log holds, and their distinct exception lines."""
    blocks = log.split("Traceback (most recent call last)")[1:]
    return len(blocks), sorted({next((ln for ln in b.splitlines()[1:] if ln and not ln[0].isspace()), "")[:200]
                                for b in blocks})


def query_images(opened: LookalikeIndex) -> list[Path]:
    """Twelve test-split images and a few library images (whose own row a search leaves out)."""
    queries = [it.path(opened.data_dir) for it in scan_split(opened.data_dir, "test")]
    return queries[:12] + [opened.paths[i] for i in range(0, len(opened.paths), max(1, len(opened.paths) // 4))]


def sample_rss(pid: int, stop: threading.Event, every: float, out: list[tuple[float, float]]) -> None:
    """(seconds since start, VmRSS MB) of a process every `every` seconds until `stop` is set."""
    t0 = time.monotonic()
    while not stop.wait(every):
        mb = rss_mb(pid)
        if mb is not None:
            out.append((time.monotonic() - t0, mb))


class Expected:
    """The right answer to every request the users can send, from the index opened here."""

    def __init__(self, index: LookalikeIndex, queries: list[Path]) -> None:
        self.index = index
        self.queries = queries
        # The Pixel tab offers the four plain metrics; re-ranked pixel methods live in the Compare tab.
        self.pixel = [str(m) for m in index.offered if m.pixel and not m.reranked]
        self.deep = [str(m) for m in index.offered if not m.pixel]
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

    def argument(self, method: str) -> str:
        """What the page sends for a method: the Pixel tab its metric, the deep tab the method's name."""
        parsed = self.index.parse_method(method)
        return parsed.metric if parsed.pixel else method

    def submit(self, client: Any, rng: random.Random, kind: str, k: int) -> tuple[Any, tuple[str, str, int]]:
        """Send a random query to /search_pixel or /search_deep (`kind`): its job and its answer's key."""
        from gradio_client import handle_file
        query, method = rng.choice(self.queries), rng.choice(self.pixel if kind == "pixel" else self.deep)
        job = client.submit(handle_file(str(query)), self.argument(method), k, api_name=f"/search_{kind}")
        return job, (str(query), method, k)

    def check(self, key: tuple[str, str, int], rows: list[dict[str, Any]]) -> str | None:
        """None when the rows are the expected answer, else what differs."""
        want = self.answers[key]
        got = [(r["file"], r["score"]) for r in rows]
        if [f for f, _ in got] != [f for f, _ in want]:
            return f"{key}: files {[f for f, _ in got]} != {[f for f, _ in want]}"
        if not np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-4):
            return f"{key}: scores {[s for _, s in got]} != {[s for _, s in want]}"
        return None


class Tally:
    """What happened to the requests, from many threads: seconds per kind, wrong answers, errors,
    and busy refusals (the app's bound on queue waits, webui.admission: counted apart, not failures)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.wrong: list[str] = []
        self.refused = 0

    def note(self, kind: str, seconds: float, wrong: str | None = None, error: str | None = None) -> None:
        with self.lock:
            self.latency[kind].append(seconds)
            if error:
                self.errors.append(f"{kind}: {error}")
            if wrong:
                self.wrong.append(f"{kind}: {wrong}")

    def failed(self, kind: str, t0: float, exc: Exception) -> None:
        """A request that raised: a busy refusal, or an error (counted and reported, never hidden)."""
        if is_refusal(exc):
            with self.lock:
                self.refused += 1
        else:
            self.note(kind, time.perf_counter() - t0, error=f"{type(exc).__name__}: {str(exc)[:300]}")


class Soak(Tally):
    def __init__(self, url: str, expected: Expected, bad_files: dict[str, Path]) -> None:
        super().__init__()
        self.url, self.expected, self.bad_files = url, expected, bad_files
        self.kinds = ["pixel", "pixel", "file", "bad"]
        if expected.deep:
            self.kinds += ["deep", "deep"]
        if expected.prompts:
            self.kinds += ["text"]

    def one(self, client: Any, rng: random.Random) -> None:
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError

        kind = rng.choice(self.kinds)
        exp = self.expected
        k = rng.choice(KS)
        t0 = time.perf_counter()
        try:
            if kind in ("pixel", "deep"):
                job, key = exp.submit(client, rng, kind, k)
                _, status, rows = job.result(timeout=REQUEST_TIMEOUT_S)
                wrong = exp.check(key, rows) or (None if key[1] in status else f"status {status!r}")
            elif kind == "text":
                prompt, method = rng.choice(exp.prompts), rng.choice(exp.deep)
                job = client.submit(prompt, method, k, api_name="/search_text")
                _, status, rows = job.result(timeout=REQUEST_TIMEOUT_S)
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
            self.note(kind, time.perf_counter() - t0, wrong=wrong)
        except Exception as exc:  # counted and reported, never hidden
            self.failed(kind, t0, exc)

    def user(self, seed: int, deadline: float, max_requests: int) -> int:
        from gradio_client import Client
        rng = random.Random(seed)
        client = Client(self.url, verbose=False, download_files=False)
        n = 0
        while time.monotonic() < deadline and n < max_requests:
            self.one(client, rng)
            n += 1
        return n


def _bad_files(folder: Path, some_jpeg: Path) -> dict[str, Path]:
    text = folder / "notes.jpg"
    text.write_text("this is a text file renamed to .jpg\n")
    truncated = folder / "cut.jpg"
    data = some_jpeg.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"not an image": text, "corrupt or truncated": truncated}


def server_memory(samples: list[tuple[float, float]], seconds: float, warm: float | None, end: float | None,
                  peak: float | None) -> dict[str, Any]:
    """The server's RSS after warm-up, at the end, its peak, and the highest in each half and each
    tenth of the run: a leak shows as a steady climb."""
    def top(lo: float, hi: float) -> float:
        return round(max((mb for t, mb in samples if lo < t <= hi), default=float("nan")), 1)
    tenth = seconds / 10
    return {"after_warmup": round(warm or 0, 1), "end": round(end or 0, 1), "peak_hwm": round(peak or 0, 1),
            "max_first_half": top(-1, seconds / 2), "max_second_half": top(seconds / 2, float("inf")),
            "max_per_tenth": [top(i * tenth, (i + 1) * tenth) for i in range(10)]}


def run(index: Path | None = None, clients: int = 20, seconds: float = 60.0, max_requests: int = 5000,
        seed: int = 0) -> dict[str, Any]:
    """Build (if needed) and serve the index, run the users, and return the figures."""
    if not 1 <= clients <= 200 or not 0 < seconds <= 3600:
        raise SystemExit("--clients must be 1..200 and --seconds 0..3600")
    with tempfile.TemporaryDirectory(prefix="lookalike-soak-") as tmp:
        work = Path(tmp)
        index = index or effnet_index(work)
        opened = LookalikeIndex.open(index)
        queries = query_images(opened)
        t0 = time.perf_counter()
        expected = Expected(opened, queries)
        print(f"expected answers: {len(expected.answers)} in {time.perf_counter() - t0:.1f} s", flush=True)
        bad = _bad_files(work, next(q for q in queries if q.suffix.lower() in (".jpg", ".jpeg")))
        port, log_path = free_port(), work / "app.log"
        proc = start_server(Path(index), port, log_path)
        soak = Soak(f"http://127.0.0.1:{port}/", expected, bad)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        try:
            hnsw = [m for m in expected.deep if opened.parse_method(m).hnsw]
            warmup_s = warm_up(soak.url, queries[0], expected.deep[:1] + hnsw[:1])
            rss_start = rss_mb(proc.pid)
            threading.Thread(target=sample_rss, args=(proc.pid, stop, 0.5, samples), daemon=True).start()
            deadline = time.monotonic() + seconds
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients, thread_name_prefix="user") as pool:
                counts = list(pool.map(lambda c: soak.user(seed * 1000 + c, deadline, max_requests), range(clients)))
            wall = time.perf_counter() - t0
            rss_end, peak = rss_mb(proc.pid), hwm_mb(proc.pid)
        finally:
            stop.set()
            stop_process(proc)
        tracebacks, _ = server_tracebacks(log_path.read_text(errors="replace"))
    all_lat = [x for v in soak.latency.values() for x in v]
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
        "server_rss_mb": server_memory(samples, seconds, rss_start, rss_end, peak),
    }


def summary(res: dict[str, Any]) -> int:
    """Print the figures and a line of them; exit status 1 on any error or wrong answer."""
    print(json.dumps(res, indent=1))
    m = res["server_rss_mb"]
    print(f"\n{res['requests']} requests from {res['clients']} users in {res['seconds']} s "
          f"({res['throughput_rps']}/s): {res['errors']} errors, {res['wrong']} wrong answers, "
          f"{res['refused_busy']} refused as busy; "
          f"p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms; server RSS {m['after_warmup']} MB after warm-up, "
          f"{m['end']} MB at the end, peak {m['peak_hwm']} MB")
    return 0 if res["errors"] == 0 and res["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(cli(run, summary=summary))
