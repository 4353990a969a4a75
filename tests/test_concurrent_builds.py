"""Two builds of one index folder at once (issue 14, item 5): real `build_index.py index` processes.

Each run starts build A, waits until A holds INDEX/build.lock (its pid is in the file), then
starts build B with another pixel size, so both would rewrite every array. B either waits for A
(`--lock-wait 60`: both exit 0, B says whom it waited for) or refuses at once (the default: exit 2
with one line naming the lock and the holder's pid, no traceback). After every run the index is
consistent: the manifest opens (rows, shapes, dtypes and checksums of its arrays agree), it names
the pixel size of the build that finished last, no array that it does not name is left behind,
and, in the run with a model, Chroma holds exactly the manifest's rows. A killed holder never
blocks the next build.
"""
from __future__ import annotations

import json
import os
import signal
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_library
from retrieval.errors import IndexError_
from retrieval.lock import LOCK_NAME, IndexLocked, index_lock
from retrieval.search import LookalikeIndex

ROOT = Path(__file__).resolve().parent.parent
RUNS = 10
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """300 photo-sized (800x600) JPEGs: a pixel build decodes for a second or more."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("builds") / "data"
    for split, n in (("train", 100), ("test", 1)):
        for name, rgb in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.integers(-60, 60, (120, 160, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).resize((800, 600), Image.Resampling.NEAREST).save(folder / f"{i}.jpg", quality=80)
    return root


def _build(data: Path, index: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "build_index.py"), "index", "--data", str(data),
                             "--index", str(index), "--no-eval", *extra],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(index: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `proc` holds the lock (its pid is in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((index / LOCK_NAME).read_text() or "{}").get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, f"build A ended before taking the lock: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError("build A never took the lock")


def consistent(index: Path, pixel_size: int, images: int, chroma: bool = False) -> None:
    """Manifest, arrays (and Chroma) agree, and nothing but the live arrays is left."""
    from chromadb.api.shared_system_client import SharedSystemClient
    SharedSystemClient.clear_system_cache()   # read Chroma as a fresh process would
    opened = LookalikeIndex.open(index)       # shapes, dtypes, finiteness, checksums: or IndexError_
    m = opened.manifest
    assert m.pixel_size == pixel_size
    assert set(m.checksums) >= {"items", m.pixels_file}
    live = set(m.files())   # the pixels, embeddings and re-ranking (DBA) arrays of the same build
    assert sorted(p.name for p in index.glob("*.npy") if p.name not in live) == []
    assert not [p.name for p in index.iterdir() if p.name.startswith(".")]
    assert len(m.items) == images
    if chroma:
        held = opened.store.metadatas()
        assert set(held) == set(opened.rels)
        assert all(held[it["path"]]["sha256"] == it["sha256"] for it in m.items)


def _lines(proc: subprocess.Popen) -> tuple[list[str], threading.Thread]:
    """Collect a process's stderr lines as they come (a thread), so a test can wait for one."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    return lines, reader


def _until(cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _run_pair(data: Path, index: Path, wait: bool, sizes: tuple[int, int], rng: random.Random,
              model: str = "none") -> dict:
    """A holds the lock and is frozen (SIGSTOP) at a random point of its build; B starts and
    waits or refuses; A goes on (SIGCONT). Two real builds overlap every time, whatever the load."""
    a = _build(data, index, "--model", model, "--pixel-size", str(sizes[0]))
    _wait_for_holder(index, a)
    time.sleep(rng.uniform(0, 0.4))   # somewhere in A's scan, decode, array writes or Chroma sync
    a.send_signal(signal.SIGSTOP)
    try:
        b = _build(data, index, "--model", model, "--pixel-size", str(sizes[1]),
                   *(["--lock-wait", "300"] if wait else []))
        lines, reader = _lines(b)
        _until(lambda: b.poll() is not None or any("waiting up to" in x for x in lines), "B to wait or end")
    finally:
        a.send_signal(signal.SIGCONT)
    _, err_a = a.communicate(timeout=600)
    b.wait(timeout=600)
    reader.join(timeout=30)
    err_b = "".join(lines)
    assert "Traceback" not in err_a + err_b, err_a + err_b
    assert a.returncode == 0, err_a
    lock = str(index / LOCK_NAME)
    if wait:
        assert b.returncode == 0, err_b
        assert f"waiting up to 300 s for the build lock {lock}, held by pid {a.pid}" in err_b, err_b
        assert "got the build lock" in err_b
        final = sizes[1]
    else:
        assert b.returncode == 2, err_b
        line = err_b.strip().splitlines()[-1]
        assert line.startswith(f"error: another build of this index is running (pid {a.pid}, started "), line
        assert f"it holds the lock {lock}" in line and "--lock-wait SECONDS" in line
        final = sizes[0]
    return {"final": final, "b_rc": b.returncode, "message": line if not wait else
            next(x for x in err_b.splitlines() if "waiting up to" in x)}


def test_ten_pairs_of_concurrent_pixel_builds_always_leave_a_consistent_index(library, tmp_path, capsys):
    index = tmp_path / "index"
    outcomes, final, rng = [], None, random.Random(14)
    for run in range(RUNS):
        wait = run % 2 == 1
        # Pixel sizes other than the index's, so that each build decodes every image (no reuse).
        a_size = next(x for x in (24, 32, 40) if x != final)
        sizes = (a_size, next(x for x in (24, 32, 40) if x not in (a_size, final)))
        res = _run_pair(library, index, wait, sizes, rng)
        final = res["final"]
        consistent(index, res["final"], 300)
        outcomes.append(("waited" if wait else "refused", res["b_rc"], res["final"]))
    with capsys.disabled():
        print(f"\n[concurrent builds] {RUNS} runs (second build, its exit code, final pixel size): {outcomes}"
              f"\n  e.g. {res['message']}")
    assert len(outcomes) == RUNS


def test_concurrent_builds_with_a_model_keep_chroma_and_the_manifest_in_step(tmp_path):
    data = make_tiny_library(tmp_path / "data", n_train=8, n_test=1)
    index = tmp_path / "index"
    for wait in (True, False):
        res = _run_pair(data, index, wait, (32, 24), random.Random(5), model="effnet")
        consistent(index, res["final"], 24, chroma=True)


def test_a_killed_holder_never_blocks_the_next_build(tiny_library, tmp_path):
    index = tmp_path / "index"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from retrieval.lock import index_lock\n"
                               f"with index_lock({str(index)!r}):\n print('held', flush=True); time.sleep(600)"],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(IndexLocked, match=rf"pid {holder.pid}, started .*holds the lock {index / LOCK_NAME}"):
        with index_lock(index):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (index / LOCK_NAME).exists()          # the stale file stays; its lock went with the process
    build = _build(tiny_library, index, "--model", "none")
    _, err = build.communicate(timeout=300)
    assert build.returncode == 0, err
    assert LookalikeIndex.open(index).manifest.pixel_size == 32


def test_a_waiting_build_gives_up_after_its_timeout(tiny_library, tmp_path):
    index = tmp_path / "index"
    with index_lock(index):
        with pytest.raises(IndexError_, match=r"after waiting 0.5 s"):
            from retrieval.indexing import build_index
            build_index(tiny_library, index, model="none", lock_wait=0.5)
    assert not (index / "manifest.json").exists()
