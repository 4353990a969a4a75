"""Load test: many visitors at once, each waiting for its answer; how long do answered requests wait?

    python -m bench.load [--index DIR] [--clients 40] [--seconds 30] [--interval S] [--bound S|off] [--json OUT]

Starts the real `python app.py --index INDEX` on 127.0.0.1 (without --index: builds an effnet index of
the sample library first), warms it up, then runs `--clients` visitors for `--seconds`, each with its
own gradio_client.Client, sending pixel, deep and compare requests (equally often). A visitor waits
for each answer, then asks again at once, or `--retry-pause` seconds after a refusal (a closed
loop); with `--interval S` it asks every S seconds on average, answered or not (an open stream of
arrivals: what overloads a server). Requests in flight at the end are waited for, each at most
`--request-timeout` seconds. `--bound SECONDS|off` sets the app's wait bound for the run.

Every request ends answered (pixel and deep rows must equal LookalikeIndex.rank computed here),
refused (the app said it is busy), error, or timeout. Reported, per endpoint and overall: the wait
of answered requests (from submit until the server started it) and their time to answer, p50/p95/
max; how soon refusals arrive; the share refused. More: docs/reliability.md, "When the app is busy".
"""
from __future__ import annotations

import json
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from retrieval.search import LookalikeIndex
from webui.admission import WAIT_ENV

from ..common import cli, free_port, machine_info, median_ms, p95_ms, stop_process
from .soak import KS, Expected, effnet_index, is_refusal, query_images, server_tracebacks, start_server

REQUEST_TIMEOUT_S = 600.0     # one request's longest wait here; bounds the run's length
POLL_S = 0.05                 # how often a visitor looks whether its request has started
RETRY_PAUSE_S = 5.0           # a refused visitor reads "busy, try again in a moment", then asks again


class Load:
    """Visitors and what happened to each of their requests: (kind, outcome, seconds)."""

    def __init__(self, url: str, expected: Expected, timeout_s: float, retry_pause_s: float = RETRY_PAUSE_S) -> None:
        self.url, self.expected, self.timeout_s, self.retry_pause_s = url, expected, timeout_s, retry_pause_s
        self.kinds = ["pixel", "deep", "compare"] if expected.deep else ["pixel", "compare"]
        self.lock = threading.Lock()
        self.outcomes: list[tuple[str, str, float, float]] = []   # kind, outcome, seconds, wait
        self.examples: dict[str, list[str]] = defaultdict(list)

    def _record(self, kind: str, outcome: str, seconds: float, wait: float, note: str | None = None) -> None:
        with self.lock:
            self.outcomes.append((kind, outcome, seconds, wait))
            if note and len(self.examples[outcome]) < 5:
                self.examples[outcome].append(f"{kind}: {note[:300]}")

    def _result(self, job: Any) -> tuple[Any, float]:
        """The job's outputs, and its wait: seconds from submit until the server started it
        (upload and queue; the whole time when it finished between two looks)."""
        from concurrent.futures import TimeoutError as FutureTimeout
        from gradio_client.utils import Status
        t0, started = time.perf_counter(), None
        while not job.done():
            if started is None and job.status().code == Status.PROCESSING:
                started = time.perf_counter() - t0
            if time.perf_counter() - t0 > self.timeout_s:
                raise FutureTimeout
            time.sleep(POLL_S)
        out = job.result(timeout=0)
        return out, time.perf_counter() - t0 if started is None else started

    def _ask(self, client: Any, kind: str, rng: random.Random) -> tuple[str | None, float]:
        """Send one request and wait for it; returns (what was wrong with the answer or None, its wait)."""
        from gradio_client import handle_file
        k = rng.choice(KS)
        if kind == "compare":
            query = rng.choice(self.expected.queries)
            out, wait = self._result(client.submit(handle_file(str(query)), k, api_name="/compare"))
            return (None if out[2] else "no rows"), wait
        job, key = self.expected.submit(client, rng, kind, k)
        (_, _, rows), wait = self._result(job)
        return self.expected.check(key, rows), wait

    def one(self, client: Any, rng: random.Random) -> str:
        """One request, recorded; returns its outcome."""
        from concurrent.futures import TimeoutError as FutureTimeout
        kind = rng.choice(self.kinds)
        t0 = time.perf_counter()
        try:
            wrong, wait = self._ask(client, kind, rng)
            outcome = "wrong" if wrong else "answered"
            self._record(kind, outcome, time.perf_counter() - t0, wait, wrong)
        except FutureTimeout:
            outcome = "timeout"
            self._record(kind, outcome, time.perf_counter() - t0, time.perf_counter() - t0)
        except Exception as exc:  # counted and reported, never hidden
            outcome = "refused" if is_refusal(exc) else "error"
            took = time.perf_counter() - t0
            self._record(kind, outcome, took, took, f"{type(exc).__name__}: {exc}")
        return outcome

    def visitor(self, seed: int, deadline: float, interval: float) -> None:
        """interval 0: wait for each answer, then ask again at once. interval > 0: ask every
        `interval` seconds on average (exponential gaps), answered or not (an open arrival stream)."""
        from gradio_client import Client
        rng = random.Random(seed)
        client = Client(self.url, verbose=False, download_files=False)
        if interval <= 0:
            while time.monotonic() < deadline:
                if self.one(client, rng) == "refused":
                    time.sleep(min(self.retry_pause_s, max(0.0, deadline - time.monotonic())))
            return
        asks = []
        while time.monotonic() < deadline:
            asks.append(threading.Thread(target=self.one, args=(client, random.Random(rng.random())), daemon=True))
            asks[-1].start()
            time.sleep(min(rng.expovariate(1 / interval), max(0.0, deadline - time.monotonic())))
        for ask in asks:
            ask.join()


def _stats(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    return {"n": len(seconds), "p50_s": round(median_ms(seconds) / 1000, 2),
            "p95_s": round(p95_ms(seconds) / 1000, 2), "max_s": round(max(seconds), 2)}


def summarise(outcomes: list[tuple[str, str, float, float]]) -> dict[str, Any]:
    """Wait and time to answer of answered requests, how soon refusals came, and the share
    refused, overall and per endpoint."""
    def of(kind: str | None) -> dict[str, Any]:
        rows = [(o, s, w) for k, o, s, w in outcomes if kind in (None, k)]
        counts = {o: sum(1 for x, _, _ in rows if x == o) for o in ("answered", "refused", "error", "timeout", "wrong")}
        return {"requests": len(rows), **counts,
                "refused_share": round(counts["refused"] / len(rows), 3) if rows else None,
                "answered_wait_s": _stats([w for o, _, w in rows if o == "answered"]),
                "answered_time_s": _stats([s for o, s, _ in rows if o == "answered"]),
                "refused_time_s": _stats([s for o, s, _ in rows if o == "refused"])}
    return {"all": of(None), **{k: of(k) for k in sorted({k for k, _, _, _ in outcomes})}}


def run(index: Path | None = None, clients: int = 40, seconds: float = 30.0, seed: int = 0,
        request_timeout: float = REQUEST_TIMEOUT_S, interval: float = 0.0, bound: str | None = None,
        retry_pause: float = RETRY_PAUSE_S) -> dict[str, Any]:
    """Build (if needed) and serve the index, run the visitors, and return the figures. `bound`:
    the app's wait bound (LOOKALIKE_MAX_WAIT_S: seconds or "off"); None keeps the app's own."""
    if not 1 <= clients <= 200 or not 0 < seconds <= 600 or not 0 < request_timeout <= 3600 \
            or not 0 <= interval <= 600 or not 0 <= retry_pause <= 600:
        raise SystemExit("--clients must be 1..200, --seconds 0..600, --request-timeout 0..3600, "
                         "--interval and --retry-pause 0..600")
    with tempfile.TemporaryDirectory(prefix="lookalike-load-") as tmp:
        work = Path(tmp)
        index = index or effnet_index(work)
        opened = LookalikeIndex.open(index)
        expected = Expected(opened, query_images(opened))
        log_path = work / "app.log"
        port = free_port()
        proc = start_server(Path(index), port, log_path, env={WAIT_ENV: bound} if bound else None)
        url = f"http://127.0.0.1:{port}/"
        try:
            load = Load(url, expected, request_timeout, retry_pause)
            from gradio_client import Client, handle_file
            warm = Client(url, verbose=False, download_files=False)
            warm.predict(handle_file(str(expected.queries[0])), 5, api_name="/compare")   # model + Chroma load
            deadline = time.monotonic() + seconds
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients, thread_name_prefix="visitor") as pool:
                list(pool.map(lambda c: load.visitor(seed * 1000 + c, deadline, interval), range(clients)))
            wall = time.perf_counter() - t0
        finally:
            stop_process(proc)
        server_log = log_path.read_text(errors="replace")
    tracebacks, last_lines = server_tracebacks(server_log)
    return {"machine": machine_info(), "index": str(index), "clients": clients, "interval_s": interval,
            "retry_pause_s": retry_pause,
            "wait_bound": bound or "the app's default", "load_seconds": seconds,
            "wall_seconds": round(wall, 1), "server_tracebacks": tracebacks,
            "server_traceback_kinds": last_lines[:5], **summarise(load.outcomes),
            "examples": dict(load.examples)}


def summary(res: dict[str, Any]) -> int:
    """Print the figures and a line of them; exit status 1 on any error, wrong answer or timeout."""
    print(json.dumps(res, indent=1))
    a = res["all"]
    w, t = a["answered_wait_s"], a["answered_time_s"]
    print(f"\n{a['requests']} requests from {res['clients']} visitors ({res['wall_seconds']} s): "
          f"{a['answered']} answered (wait p50 {w.get('p50_s')} s, p95 {w.get('p95_s')} s, max {w.get('max_s')} s; "
          f"time to answer p95 {t.get('p95_s')} s, max {t.get('max_s')} s), "
          f"{a['refused']} refused ({100 * (a['refused_share'] or 0):.0f}%), "
          f"{a['error']} errors, {a['timeout']} timeouts, {a['wrong']} wrong")
    return 0 if a["error"] == a["wrong"] == a["timeout"] == res["server_tracebacks"] == 0 else 1


if __name__ == "__main__":
    sys.exit(cli(run, summary=summary))
