"""The downloader against a local fault server: every fault ends in its manifest status, nothing
partial or outside raw/ is left, re-runs fetch only what is missing, and the polite delay holds
per host while two hosts proceed in parallel."""
from __future__ import annotations

import hashlib
import json
import os
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from collect.download import DownloadConfig, Downloader, download_images, is_permanent, safe_component
from collect.transport import HostRateLimiter, parse_retry_after
from fault_server import FaultServer
from flickr_standin import Reply
from retrieval.images import load_image

FAST = DownloadConfig(workers=4, delay=0.01, connect_timeout=2.0, read_timeout=0.5, retries=2, backoff=0.05,
                      max_bytes=256 * 1024, checkpoint_s=0.05)

EXPECTED = {
    "/img/a.jpg": "ok",
    "/png/b.png": "ok",
    "/404.jpg": "http_404",
    "/flaky.jpg": "ok",
    "/ratelimit.jpg": "ok",
    "/down.jpg": "http_503",
    "/slow.jpg": "timeout",
    "/page.jpg": "bad_content_type",
    "/garbage.jpg": "not_image",
    "/truncated.jpg": "truncated",
    "/huge-declared.jpg": "too_large",
    "/huge.jpg": "too_large",
    "/redirect-file.jpg": "bad_scheme",
    "/redirect-ftp.jpg": "bad_scheme",
    "/redirect-ok.jpg": "ok",
    "/redirect-loop.jpg": "too_many_redirects",
    "/dl/..%2F..%2Fevil.jpg": "ok",
    "/a/b/../../evil.jpg": "ok",
}


@pytest.fixture
def server():
    with FaultServer(slow_s=2.0) as srv:
        srv.routes["/down.jpg"] = Reply(503, b"maintenance", "text/plain")
        yield srv


def _manifest(raw: Path) -> dict[str, dict]:
    return {r["url"]: r for r in json.loads((raw / "manifest.json").read_text())["items"]}


def _all_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


def test_each_fault_ends_in_its_status_and_nothing_escapes(tmp_path: Path, server: FaultServer) -> None:
    raw = tmp_path / "work" / "raw"
    jobs = [("../../outside", "..", server.url(path)) for path in EXPECTED]
    jobs += [("../../outside", "..", "file:///etc/passwd"), ("../../outside", "..", "ftp://127.0.0.1/x.jpg")]
    report = Downloader(raw, FAST).run(jobs, progress=False)

    records = _manifest(raw)
    got = {path: records[server.url(path)]["status"] for path in EXPECTED}
    assert got == EXPECTED
    assert records["file:///etc/passwd"]["status"] == records["ftp://127.0.0.1/x.jpg"]["status"] == "bad_scheme"
    assert report.fetched == len(jobs) and report.counts["ok"] == list(EXPECTED.values()).count("ok")

    # Retries: 500 then 200 took two requests; a persistent 503 took 1 + retries; 429 waited Retry-After.
    assert records[server.url("/flaky.jpg")]["attempts"] == 2 and server.hits("/flaky.jpg") == 2
    assert records[server.url("/down.jpg")]["attempts"] == 3 and server.hits("/down.jpg") == 3
    rl = [h.time for h in server.log if h.path == "/ratelimit.jpg"]
    assert len(rl) == 2 and rl[1] - rl[0] >= 1.0  # Retry-After: 1
    assert server.hits("/404.jpg") == 1  # a 404 is not retried
    # The oversized stream was abandoned, not read to the end.
    assert server.huge_sent is not None and server.huge_sent < server.huge_bytes

    # Files: only the ok ones, named sha1(url)[:16] + extension, inside raw/<safe cat>/<safe term>/.
    folder = raw / safe_component("../../outside") / safe_component("..")
    ok = {u: r for u, r in records.items() if r["status"] == "ok"}
    for url, rec in ok.items():
        path = raw / rec["file"]
        assert path.parent == folder and path.stem == hashlib.sha1(url.encode()).hexdigest()[:16]
        assert path.suffix in (".jpg", ".png")
        load_image(path)
    assert {r["file"] for u, r in records.items() if r["status"] != "ok"} == {None}

    files = _all_files(tmp_path)
    assert sorted(files) == sorted([raw / "manifest.json", *(raw / r["file"] for r in ok.values())])
    assert not any(f.name.endswith(".tmp") or f.name.startswith(".") or "evil" in f.name for f in files)
    assert all(f.resolve().is_relative_to(raw.resolve()) for f in files)


def test_rerun_fetches_only_what_is_missing(tmp_path: Path, server: FaultServer) -> None:
    raw = tmp_path / "raw"
    paths = ["/img/1.jpg", "/img/2.jpg", "/img/3.jpg", "/404.jpg", "/down.jpg", "/page.jpg"]
    urls = tmp_path / "urls.json"
    urls.write_text(json.dumps({"animal": {"cat": [server.url(p) for p in paths[:4]],
                                           "dog": [server.url(p) for p in paths[4:]]}}))
    download_images(urls, raw, FAST, progress=False)
    first = {p: server.hits(p) for p in paths}
    assert first == {"/img/1.jpg": 1, "/img/2.jpg": 1, "/img/3.jpg": 1, "/404.jpg": 1, "/down.jpg": 3, "/page.jpg": 1}

    # Lose one download: the re-run fetches it and the transient 503 again, nothing else.
    (raw / _manifest(raw)[server.url("/img/2.jpg")]["file"]).unlink()
    report = download_images(urls, raw, FAST, progress=False)
    again = {p: server.hits(p) - first[p] for p in paths}
    assert again == {"/img/1.jpg": 0, "/img/2.jpg": 1, "/img/3.jpg": 0, "/404.jpg": 0, "/down.jpg": 3, "/page.jpg": 0}
    assert report.fetched == 2 and report.skipped == 4

    # A lost manifest: files on disk still count as done and the manifest is rebuilt from them.
    (raw / "manifest.json").unlink()
    before = server.hits()
    report = download_images(urls, raw, DownloadConfig(**{**FAST.__dict__, "retries": 0}), progress=False)
    assert server.hits() - before == 3  # 404, 503 and the html page: no memory of them; images: none
    rebuilt = _manifest(raw)
    assert all(rebuilt[server.url(p)]["status"] == "ok" for p in paths[:3])

    # --retry-failed asks again about permanent failures.
    before404 = server.hits("/404.jpg")
    download_images(urls, raw, DownloadConfig(**{**FAST.__dict__, "retry_failed": True}), progress=False)
    assert server.hits("/404.jpg") == before404 + 1


def test_polite_delay_is_per_host_and_hosts_run_in_parallel(tmp_path: Path) -> None:
    d, n = 0.2, 5
    with FaultServer("127.0.0.1") as a, FaultServer("127.0.0.2") as b:
        jobs = [("c", "t", srv.url(f"/img/{i}.jpg")) for srv in (a, b) for i in range(n)]
        config = DownloadConfig(workers=4, delay=d, read_timeout=5.0)
        report = Downloader(tmp_path / "raw", config).run(jobs, progress=False)
        assert report.counts["ok"] == 2 * n
        times_a, times_b = a.arrivals(), b.arrivals()
    assert len(times_a) == len(times_b) == n
    gaps_a = [y - x for x, y in zip(times_a, times_a[1:])]
    gaps_b = [y - x for x, y in zip(times_b, times_b[1:])]
    # Server-side arrival times: one host never sees two requests closer than d.
    print(f"min gap host A {min(gaps_a):.3f}s, host B {min(gaps_b):.3f}s (delay {d}s)")
    assert min(gaps_a) >= d and min(gaps_b) >= d
    # The two hosts proceed side by side: a single global limit would space *all* requests d
    # apart, but here requests to A and B arrive close together, round after round.
    close_pairs = sum(1 for ta in times_a if min(abs(ta - tb) for tb in times_b) < d / 2)
    assert close_pairs >= n - 1


def test_rate_limiter_defer_rests_only_that_host() -> None:
    lim = HostRateLimiter(0.0)
    lim.defer("a", 0.3)  # e.g. a 429 with Retry-After
    t0 = time.monotonic()
    with lim.slot("b"):
        waited_b = time.monotonic() - t0
    with lim.slot("a"):
        waited_a = time.monotonic() - t0
    assert waited_a >= 0.3 and waited_b < 0.3


def test_helpers() -> None:
    assert parse_retry_after("3") == 3.0
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(soon) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    for bad in ("..", ".", "../../x", "a/b", "/etc", "", ".hidden", "a\\b", "x\0y"):
        name = safe_component(bad)
        assert name and "/" not in name and "\\" not in name and not name.startswith(".") and name != ".."
    assert safe_component("Monkey") == "Monkey" and safe_component("Cà phê") == "Cà phê"
    assert is_permanent("http_404") and is_permanent("not_image") and is_permanent("bad_scheme")
    assert not any(is_permanent(s) for s in ("http_429", "http_503", "timeout", "truncated", "connection_error", "ok"))


_RUN_IN_CHILD = """
import sys
from pathlib import Path
from collect.download import DownloadConfig, Downloader
urls = sys.argv[2:]
cfg = DownloadConfig(workers=2, delay=0.0, read_timeout=60.0, total_timeout=120.0, retries=0, checkpoint_s=1.0)
Downloader(Path(sys.argv[1]), cfg).run([("c", "t", u) for u in urls], progress=False)
"""


def test_a_hung_download_still_leaves_a_resumable_manifest(tmp_path: Path) -> None:
    """A server that sends headers and then stalls holds one worker; the run is then killed with
    SIGKILL (nothing in the process can react). The manifest on disk already records every URL
    that finished, so the re-run fetches only the stalled one.

    Fails before round 3: the manifest was only written when a download finished at least
    `checkpoint_s` after the last save, so while the stalled download held on, nothing was saved
    and the kill left no manifest at all."""
    import signal
    import subprocess
    import sys
    raw = tmp_path / "raw"
    with FaultServer() as srv:
        done_paths = ["/img/1.jpg", "/img/2.jpg", "/404.jpg"]
        urls = [srv.url("/stall.jpg")] + [srv.url(p) for p in done_paths]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        child = subprocess.Popen([sys.executable, "-c", _RUN_IN_CHILD, str(raw), *urls], env=env)
        try:
            deadline = time.monotonic() + 60
            records: dict[str, dict] = {}
            while time.monotonic() < deadline and len(records) < 3:
                time.sleep(0.2)
                try:
                    records = _manifest(raw)
                except (OSError, ValueError):
                    records = {}
            assert child.poll() is None and srv.hits("/stall.jpg") == 1   # still hung when killed
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert {u: r["status"] for u, r in records.items()} == {
            srv.url("/img/1.jpg"): "ok", srv.url("/img/2.jpg"): "ok", srv.url("/404.jpg"): "http_404"}
        before = {p: srv.hits(p) for p in ["/stall.jpg", *done_paths]}
        cfg = DownloadConfig(delay=0.0, read_timeout=0.5, retries=0)
        report = Downloader(raw, cfg).run([("c", "t", u) for u in urls], progress=False)
        again = {p: srv.hits(p) - n for p, n in before.items()}
    assert again == {"/stall.jpg": 1, "/img/1.jpg": 0, "/img/2.jpg": 0, "/404.jpg": 0}
    assert report.fetched == 1 and report.skipped == 3
    assert _manifest(raw)[srv.url("/stall.jpg")]["status"] == "timeout"   # its deadline, then recorded
