"""Disk full and read-only index folders during a rebuild: simulated (the writer in retrieval/atomic.py
patched to hit ENOSPC at the n-th write, or refused EROFS / EACCES), and for real on a tmpfs and a
read-only bind mount when the tests run as root and may mount. Each time the build stops with a clear
message and no traceback, and the previous index is intact (or, past the Chroma sync, refuses HNSW
until the next build repairs it). See docs/reliability.md, "Faults".
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import build_index as build_cli
from conftest import make_tiny_library
from reliability_support import change_library, index_state, tree
from retrieval import atomic
from retrieval.errors import IndexError_, StorageError
from retrieval.indexing import build_index
from retrieval.manifest import Manifest
from retrieval.paths import MANIFEST
from retrieval.search import LookalikeIndex

pytestmark = pytest.mark.usefixtures("watchdog")


def _index_files(index: Path) -> dict[str, str]:
    return tree(index, skip=("chroma/",))


def _intact(fixture: SimpleNamespace, before: dict[str, str], items: list) -> None:
    assert _index_files(fixture.index) == before          # same manifest, arrays, evaluation; no temp files
    assert index_state(fixture.index, fixture.query) == "ok"
    assert Manifest.read(fixture.index).items == items


class _DiskFullAt:
    """os for retrieval.atomic whose fsync on the n-th atomic write finds the disk full: the temp
    file is cut to half its size first, as a real ENOSPC leaves it."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0
        self.__dict__.update({k: v for k, v in vars(os).items() if not k.startswith("__")})
        self.fsync = self._fsync

    def _fsync(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.n:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync(fd)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_disk_full_mid_build_is_a_clear_error_and_the_index_is_intact(effnet_tiny, monkeypatch, capsys, nth):
    """Simulated: the n-th atomic write of a rebuild (1 pixels, 2 embeddings, 3 the manifest's
    syncing mark) hits ENOSPC. The rebuild stops with a message; the old index is untouched."""
    before, items = _index_files(effnet_tiny.index), Manifest.read(effnet_tiny.index).items
    change_library(effnet_tiny.data)
    monkeypatch.setattr(atomic, "os", _DiskFullAt(nth))
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(effnet_tiny.data), "--index", str(effnet_tiny.index), "--model", "effnet"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err
    assert re.search(r"error: could not write .*: the disk is full .* the previous version of the file, if any, "
                     r"is unchanged", err), err
    _intact(effnet_tiny, before, items)


def test_disk_full_at_the_final_manifest_leaves_exact_search_and_a_repairable_hnsw(effnet_tiny, monkeypatch):
    """ENOSPC on the new manifest itself, after Chroma was synced: the old manifest, arrays and
    evaluation stay (exact methods answer as before), the new arrays are removed, and HNSW refuses
    until the next build repairs it."""
    before = _index_files(effnet_tiny.index)
    change_library(effnet_tiny.data)
    monkeypatch.setattr(atomic, "os", _DiskFullAt(4))
    with pytest.raises(StorageError, match="the disk is full"):
        build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    monkeypatch.undo()
    after = _index_files(effnet_tiny.index)   # only the manifest changed: it is marked `syncing`
    assert {k: v for k, v in after.items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}
    assert Manifest.read(effnet_tiny.index).chroma.syncing is True
    state = index_state(effnet_tiny.index, effnet_tiny.query)
    assert state.startswith("refused: ") and "repair" in state
    build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    assert index_state(effnet_tiny.index, effnet_tiny.query) == "ok"


@pytest.mark.parametrize("how", ["access", "EROFS", "EACCES"])
def test_read_only_index_folder_is_a_clear_error_and_the_index_is_intact(effnet_tiny, monkeypatch, capsys, how):
    """Simulated (root ignores chmod): os.access says no, or creating the temp file fails with
    EROFS / EACCES, as a read-only mount or a folder without write permission does."""
    before, items = _index_files(effnet_tiny.index), Manifest.read(effnet_tiny.index).items
    change_library(effnet_tiny.data)
    if how == "access":
        monkeypatch.setattr("retrieval.indexing.os.access", lambda path, mode: False)
        want = "cannot write to the index folder"
    else:
        code = getattr(errno, how)

        def refuse(*a, **k):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
        want = "read-only" if how == "EROFS" else "permission denied"
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(effnet_tiny.data), "--index", str(effnet_tiny.index), "--model", "none"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == 2 and want in err and "Traceback" not in err, err
    _intact(effnet_tiny, before, items)


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path("/tmp") / f"lookalike-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True, timeout=10).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True, timeout=10)
        return ok
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and permission to mount (tmpfs, bind)")


@pytest.fixture
def mount_point(tmp_path):
    """A folder to mount on; whatever is mounted there is unmounted afterwards (lazily if busy)."""
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    for _ in range(3):
        if subprocess.run(["mountpoint", "-q", str(point)]).returncode != 0:
            break
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@needs_mount
def test_real_disk_full_on_a_tmpfs(mount_point, capsys):
    """A real 12 MB tmpfs: build an index on it, fill the disk, rebuild after a library change."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)], check=True, timeout=10)
    data = make_tiny_library(mount_point / "data", n_train=4, n_test=1)
    index = mount_point / "index"
    fixture = SimpleNamespace(data=data, index=index, query=next((data / "test").rglob("*.jpg")))
    build_index(data, index, model="effnet", evaluate=False)
    before, items = _index_files(index), Manifest.read(index).items
    change_library(data)
    with open(mount_point / "filler", "wb") as fh:   # fill every last block
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert shutil.disk_usage(mount_point).free < 65536
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(data), "--index", str(index), "--model", "effnet"])
    err = capsys.readouterr().err
    assert rc == 2 and "the disk is full" in err and "Traceback" not in err, err
    assert _index_files(index) == before and Manifest.read(index).items == items
    exact = LookalikeIndex.open(index).search(fixture.query, "effnet-cosine", 5)[0]
    assert len(exact) == 5
    (mount_point / "filler").unlink()
    assert build_cli.main(["index", "--data", str(data), "--index", str(index), "--model", "effnet"]) == 0
    assert index_state(index, fixture.query) == "ok" and "train/red/added.jpg" in LookalikeIndex.open(index).rels


@needs_mount
def test_real_read_only_bind_mount(effnet_tiny, mount_point, capsys):
    """The index folder bind-mounted read-only: the build refuses, exact search works, and HNSW
    (Chroma writes to its folder even to read it) fails with a message that says so."""
    before = _index_files(effnet_tiny.index)
    subprocess.run(["mount", "--bind", str(effnet_tiny.index), str(mount_point)], check=True, timeout=10)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(mount_point)], check=True, timeout=10)
    change_library(effnet_tiny.data)
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(effnet_tiny.data), "--index", str(mount_point), "--model", "effnet"])
    assert rc == 2 and "cannot write to the index folder" in capsys.readouterr().err
    index = LookalikeIndex.open(mount_point, data_dir=effnet_tiny.data)
    assert len(index.search(effnet_tiny.query, "effnet-cosine", 5)[0]) == 5
    with pytest.raises(IndexError_, match="Chroma writes to its folder even to read it"):
        index.search(effnet_tiny.query, "effnet-hnsw-cosine", 5)
    assert _index_files(effnet_tiny.index) == before
