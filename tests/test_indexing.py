"""retrieval/indexing.py: incremental builds (rows reused by content hash, only new or changed images
read), stale array and temporary files removed, the pixel size checked, and builds interrupted at
any point (SIGKILLed at random, or stopped between the Chroma sync and the manifest) that leave an
index which opens consistently or refuses with a clear error until the next build repairs it.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_library
from reliability_support import ENV, KILL_SEED, ROOT, change_library, index_state
from retrieval import atomic
from retrieval.cli import main as cli_main
from retrieval.errors import LookalikeError
from retrieval.indexing import build_index, check_pixel_size
from retrieval.manifest import Manifest
from retrieval.paths import MANIFEST
from retrieval.search import LookalikeIndex

pytestmark = pytest.mark.usefixtures("watchdog")

KILLS = int(os.environ.get("LOOKALIKE_KILLS", "2"))   # kills per phase of the SIGKILL test


def _same_index(a: Path, b: Path) -> None:
    ma, mb = Manifest.read(a), Manifest.read(b)
    assert ma.items == mb.items and ma.skipped == mb.skipped
    assert np.array_equal(np.load(a / ma.pixels_file), np.load(b / mb.pixels_file))
    assert np.allclose(np.load(a / ma.embedder.file), np.load(b / mb.embedder.file), atol=1e-5)


def _progress(index: Path) -> tuple:
    """What a build has written so far: (array files, Chroma files, manifest mtime)."""
    names = tuple(sorted(p.name for p in index.glob("*.npy"))) if index.is_dir() else ()
    chroma = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in (index / "chroma").glob("*")
                          if p.is_file())) if (index / "chroma").is_dir() else ()
    manifest = (index / MANIFEST).stat().st_mtime_ns if (index / MANIFEST).exists() else 0
    return names, chroma, manifest


def test_index_build_killed_at_random_points_opens_consistently_or_is_repaired(tmp_path, capsys):
    """`build_index.py index --model effnet` SIGKILLed at random points of a first build and of a
    rebuild after the library changed. A kill lands a random 0-0.6 s after a randomly chosen step
    shows on disk (new arrays, a Chroma write, the manifest), so each one hits the build while it
    writes rather than during start-up. After every kill the index is absent, consistent, or
    refuses with a clear error; the next complete run gives what an uninterrupted build gives."""
    data = make_tiny_library(tmp_path / "data", n_train=4, n_test=1)
    query = next((data / "test").rglob("*.jpg"))
    rng = random.Random(KILL_SEED)
    index = tmp_path / "index"
    cmd = [sys.executable, "build_index.py", "index", "--data", str(data), "--index", str(index), "--model", "effnet"]
    states = []

    def killed_run() -> None:
        step = rng.randrange(3)          # 0: new arrays, 1: a Chroma write, 2: the manifest
        before = _progress(index)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _progress(index)[step] == before[step]:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        states.append((("arrays", "chroma", "manifest")[step], "finished" if proc.returncode == 0 else "killed",
                       index_state(index, query)))

    def complete_run(ref: Path) -> None:
        # The next run, in this process (the same build_index the CLI calls; the kills above are
        # the real CLI). Chroma's client cache is dropped first: a client opened here earlier
        # would not see what the killed processes wrote.
        from chromadb.api.shared_system_client import SharedSystemClient
        SharedSystemClient.clear_system_cache()
        build_index(data, index, model="effnet")
        assert index_state(index, query) == "ok"
        build_index(data, ref, model="effnet", evaluate=False)     # an uninterrupted build, for comparison
        _same_index(index, ref)

    killed_run()                                                    # a first build
    complete_run(tmp_path / "ref")
    for p in sorted((data / "train" / "red").glob("*.jpg"))[:2]:    # the library changes: a rebuild
        p.unlink()
    for i in range(2):
        Image.new("RGB", (90, 70), (230, 20 + 40 * i, 20)).save(data / "train" / "red" / f"new{i}.jpg")
    Image.new("RGB", (90, 70), (10, 10, 10)).save(data / "train" / "blue" / "train_0.jpg")
    for _ in range(KILLS):
        killed_run()
    complete_run(tmp_path / "ref2")
    final = Manifest.read(index)
    live = set(final.files())
    assert len(live) == 9   # pixels, embeddings, two DBA arrays, effnet's transform, k-reciprocal graph (two), two maps
    assert not [p.name for p in index.iterdir() if p.name.startswith(".") or (p.suffix == ".npy" and p.name not in live)]
    with capsys.disabled():
        print(f"\n[reliability] SIGKILL seed {KILL_SEED} (LOOKALIKE_KILL_SEED): (kill after, run, state) {states}")
    assert all(s in ("absent", "ok") or s.startswith("refused: ") for *_, s in states), (KILL_SEED, states)


def test_build_stopped_between_chroma_and_manifest_refuses_hnsw_until_repaired(effnet_tiny, monkeypatch, capsys):
    """The window where Chroma already holds the new rows but the manifest is still the old one.
    Before this was guarded, HNSW answered from collections that no longer matched the manifest
    (dropping some results silently); now the old manifest is marked first and HNSW refuses."""
    change_library(effnet_tiny.data)
    write = Manifest.write

    def stop_at_final_write(self, index_dir):
        if not (self.chroma and self.chroma.syncing):
            raise KeyboardInterrupt     # as if killed right after the Chroma sync
        write(self, index_dir)

    monkeypatch.setattr(Manifest, "write", stop_at_final_write)
    with pytest.raises(KeyboardInterrupt):
        build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    monkeypatch.undo()
    state = index_state(effnet_tiny.index, effnet_tiny.query)
    assert state.startswith("refused: ") and "rerun the build to repair" in state
    index = LookalikeIndex.open(effnet_tiny.index)             # the exact methods still answer
    assert len(index.search(effnet_tiny.query, "effnet-cosine", 5)[0]) == 5
    capsys.readouterr()
    assert cli_main(["search", str(effnet_tiny.query), "--index", str(effnet_tiny.index),
                     "--method", "effnet-hnsw-l2"]) == 2
    assert "stopped while it was updating the Chroma collections" in capsys.readouterr().err
    build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    assert index_state(effnet_tiny.index, effnet_tiny.query) == "ok"
    assert "train/red/added.jpg" in LookalikeIndex.open(effnet_tiny.index).rels


# -- incremental builds, stale files, settings --------------------------------------------------------

@pytest.mark.parametrize("size", [4, 32, 1024])
def test_check_pixel_size_accepts_whole_numbers_from_4_to_1024(size):
    assert check_pixel_size(size) == size


@pytest.mark.parametrize("size", [3, 0, -32, 1025, 32.0, "32", None], ids=repr)
def test_check_pixel_size_refuses_anything_else_with_the_bounds(size):
    with pytest.raises(LookalikeError, match=r"pixel size must be a whole number from 4 to 1024, got "):
        check_pixel_size(size)


def test_a_rebuild_reads_only_the_changed_image_and_reuses_every_other_row(tiny_library, tmp_path):
    """One image rewritten and one renamed: the rebuild decodes the rewritten one only. The renamed
    file keeps its row (matched by content hash) and every unchanged row is copied byte for byte."""
    index = tmp_path / "index"
    first = build_index(tiny_library, index, model="none", evaluate=False)
    old = Manifest.read(index)
    old_rows = dict(zip((it["sha256"] for it in old.items), np.load(index / old.pixels_file)))
    changed = tiny_library / "train" / "green" / "train_1.jpg"
    Image.new("RGB", (90, 70), (20, 20, 20)).save(changed)
    shutil.move(tiny_library / "train" / "blue" / "train_2.jpg", tiny_library / "train" / "blue" / "moved.jpg")

    second = build_index(tiny_library, index, model="none", evaluate=False)
    assert first["images"] == second["images"] == 18 and first["pixels_decoded"] == 18   # the train split
    assert second["pixels_decoded"] == 1 and second["pixels_reused"] == 17 and second["embedded"] == 0
    new = Manifest.read(index)
    rows = dict(zip((it["path"] for it in new.items), np.load(index / new.pixels_file)))
    assert "train/blue/moved.jpg" in rows and "train/blue/train_2.jpg" not in rows
    for it in new.items:
        if it["path"] == "train/green/train_1.jpg":
            assert it["sha256"] not in old_rows                  # a new hash, decoded afresh
            assert rows[it["path"]].mean() < 60                  # the dark replacement, not the old green
        else:
            assert np.array_equal(rows[it["path"]], old_rows[it["sha256"]]), it["path"]
    assert build_index(tiny_library, index, model="none", evaluate=False)["pixels_decoded"] == 0


def test_a_rebuild_removes_stale_arrays_and_leftover_temporary_files(tiny_library, tmp_path):
    """What a killed build leaves (arrays no manifest names, hidden temporaries of atomic writes) is
    removed by the next build; other files in the folder are not touched. Every array a build writes
    carries that build's token (pixels-32.TOKEN.npy, dba-pixels.TOKEN.npy), so after it only the
    new token's arrays may remain."""
    index = tmp_path / "index"
    build_index(tiny_library, index, model="none", evaluate=False)
    first = Manifest.read(index).pixels_file
    planted = [index / "pixels-32.0badf00d.npy", index / f".{MANIFEST}.k2j3h4g5.tmp",
               index / f".{first}.a1b2c3d4.npy"]
    for path in planted:
        path.write_bytes(b"half written")
    (index / "notes.txt").write_text("mine")
    (index / ".keep").write_text("")
    change_library(tiny_library)

    build_index(tiny_library, index, model="none", evaluate=False)
    final = Manifest.read(index)
    token = final.pixels_file.split(".")[-2]
    assert final.pixels_file != first and not (index / first).exists()
    arrays = {p.name for p in index.glob("*.npy")}
    assert final.pixels_file in arrays and all(name.endswith(f".{token}.npy") for name in arrays), arrays
    assert not [p.name for p in planted if p.exists()]
    assert (index / "notes.txt").read_text() == "mine" and (index / ".keep").exists()
    assert atomic.remove_leftovers(index) == 0
