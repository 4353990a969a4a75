"""Collection stages killed midway resume to the result of an uninterrupted run: `build_index.py
download` and `build_index.py crawl` (against the Flickr stand-in), each SIGKILLed at a random point.
See docs/reliability.md, "Faults".
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_support import needs_chromedriver
from fault_server import FaultServer
from flickr_standin import Reply, make_jpeg
from reliability_support import ENV, KILL_SEED, ROOT, tree

pytestmark = pytest.mark.usefixtures("watchdog")


def _download_result(raw: Path) -> tuple[dict[str, str], dict[str, tuple]]:
    files = tree(raw, skip=("manifest.json",))
    records = json.loads((raw / "manifest.json").read_text())["items"]
    return files, {r["url"]: (r["status"], r["file"], r["bytes"]) for r in records}


def test_download_killed_midway_resumes_to_the_same_result(tmp_path):
    """`build_index.py download` SIGKILLed twice, each time once a random number of images is on
    disk, then resumed: the same files and manifest (status, file, size per URL) as a run that was
    never interrupted, and no temporary files left behind."""
    rng = random.Random(KILL_SEED)
    with FaultServer() as srv:
        for i in range(40):
            srv.routes[f"/slow/{i}.jpg"] = Reply(200, make_jpeg(f"slow{i}", (320, 240)), delay=0.05)
        urls = {"animal": {"cat": [srv.url(f"/slow/{i}.jpg") for i in range(20)] + [srv.url("/404.jpg")],
                           "dog": [srv.url(f"/slow/{i}.jpg") for i in range(20, 40)] + [srv.url("/page.jpg"),
                                                                                         srv.url("/garbage.jpg")]}}
        (tmp_path / "urls.json").write_text(json.dumps(urls))

        def cmd(raw: Path) -> list[str]:
            return [sys.executable, "build_index.py", "download", "--urls", str(tmp_path / "urls.json"),
                    "--raw", str(raw), "--delay", "0.01", "--workers", "4"]

        raw = tmp_path / "raw"
        kills = sorted(rng.sample(range(3, 38), 2))       # images on disk when each run is killed
        for n in kills:
            proc = subprocess.Popen(cmd(raw), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and len(list(raw.rglob("*.jpg"))) < n:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        partial = len(list(raw.rglob("*.jpg")))
        # What a kill inside a write leaves: a hidden temporary file. The next run clears it.
        leftover = raw / "animal" / "cat" / ".0123456789abcdef.jpg.k2j3h4g5.tmp"
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a jpeg")
        out = subprocess.run(cmd(raw), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        ref = subprocess.run(cmd(tmp_path / "ref"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert ref.returncode == 0, ref.stderr[-2000:]
    print(f"download killed with {kills} images on disk (seed {KILL_SEED}); {partial} of 40 before the resume")
    assert partial < 40 and not leftover.exists()
    assert _download_result(raw) == _download_result(tmp_path / "ref")



@needs_chromedriver
def test_crawl_killed_midway_resumes_to_the_same_result(tmp_path):
    from flickr_standin import serve_standin
    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps({"animal": ["cat", "dog"], "plant": ["rose"]}))
    rng = random.Random(KILL_SEED)
    with serve_standin(default_total=12, per_page=4, scroll_pages=1) as site:
        cmd = [sys.executable, "build_index.py", "crawl", "--search-url", site.url_template, "--categories", str(cats),
               "--max-images", "6", "--workers", "1", "--scroll-pause", "0.2", "--time-limit", "30",
               "--urls", str(tmp_path / "urls.json")]
        # Its own process group, so the kill takes chromedriver and Chromium with it.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not (tmp_path / "urls.json").exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.5))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        partial = json.loads((tmp_path / "urls.json").read_text())
        done = [t for terms in partial.values() for t in terms]
        assert done, "killed before the first term was saved"
        out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads((tmp_path / "urls.json").read_text()) == {
            "animal": {"cat": site.expected_urls("cat", 6), "dog": site.expected_urls("dog", 6)},
            "plant": {"rose": site.expected_urls("rose", 6)}}
        for term in done:       # terms saved before the kill were not crawled again
            assert site.hits("/search", text=term) == 1, term
