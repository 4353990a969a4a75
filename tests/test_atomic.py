"""retrieval/atomic.py: a write either replaces the whole file or leaves the old one as it was, leaves
no temporary file behind, and turns an OSError into a StorageError that says what went wrong and
what to do. remove_leftovers clears exactly the temporaries a killed writer leaves.

The unwritable targets here fail for root too (tests may run as root, which ignores chmod): a
folder path that runs through a regular file, and a target that is a folder.
"""
from __future__ import annotations

import errno
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval import atomic
from retrieval.errors import LookalikeError, StorageError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.bin"
    atomic.write_bytes(target, b"one")
    atomic.write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and _names(tmp_path) == ["out.bin"]


def test_write_bytes_creates_missing_folders(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    atomic.write_bytes(target, b"x")
    assert target.read_bytes() == b"x" and _names(tmp_path / "a" / "b") == ["out.bin"]


def test_the_old_file_stays_in_place_until_the_block_completes(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert tmp.parent == tmp_path and tmp.name.startswith(".manifest.json.") and tmp.name.endswith(".tmp")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new" and _names(tmp_path) == ["manifest.json"]


@pytest.mark.parametrize("exc", [RuntimeError("stopped"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, exc):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise exc
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["manifest.json"]


@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "the disk is full"),
    (errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied"),
    (errno.EPERM, "permission denied"), (errno.EIO, os.strerror(errno.EIO)),
])
def test_an_os_error_mid_write_is_a_storage_error_that_says_why(tmp_path, code, reason):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    with pytest.raises(StorageError) as err:
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(code, os.strerror(code))
    message = str(err.value)
    assert message.startswith(f"could not write {target}: {reason} ("), message
    assert "the previous version of the file, if any, is unchanged" in message
    assert err.value.errno == code
    assert isinstance(err.value, OSError) and isinstance(err.value, LookalikeError)
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["manifest.json"]


def test_numpys_short_write_reads_as_a_full_disk(tmp_path):
    """ndarray.tofile reports a short write as a bare OSError with no errno."""
    with pytest.raises(StorageError, match=r": the disk is full \(39936 requested and 8064 written\)"):
        with atomic.atomic_path(tmp_path / "x.npy", suffix=".npy"):
            raise OSError("39936 requested and 8064 written")
    assert _names(tmp_path) == []


def test_a_full_disk_at_fsync_keeps_the_old_array(tmp_path, monkeypatch):
    target = tmp_path / "pixels.npy"
    old = np.arange(12, dtype=np.uint8).reshape(3, 4)
    atomic.save_npy(target, old)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(StorageError, match="the disk is full"):
        atomic.save_npy(target, np.zeros((300, 4), dtype=np.uint8))
    monkeypatch.undo()
    assert np.array_equal(np.load(target), old) and _names(tmp_path) == ["pixels.npy"]


@pytest.mark.parametrize("where,code", [("file/out.json", errno.EEXIST), ("file/sub/out.json", errno.ENOTDIR),
                                        ("folder", errno.EISDIR)])
def test_an_unwritable_target_is_a_storage_error_even_for_root(tmp_path, where, code):
    """A folder path through a regular file, or a target that is a folder, fails for root too."""
    (tmp_path / "file").write_bytes(b"a regular file")
    (tmp_path / "folder").mkdir()
    target = tmp_path / where
    with pytest.raises(StorageError, match=f"^could not write {re.escape(str(target))}: ") as err:
        atomic.write_json(target, {"a": 1})
    assert err.value.errno == code
    assert (tmp_path / "file").read_bytes() == b"a regular file" and _names(tmp_path / "folder") == []
    assert _names(tmp_path) == ["file", "folder"]


def test_write_json_round_trips_and_keeps_unicode_readable(tmp_path):
    target = tmp_path / "manifest.json"
    obj = {"path": "train/café/ä.jpg", "values": [1, 2.5, None, True], "nested": {"k": "v"}}
    atomic.write_json(target, obj)
    text = target.read_text("utf-8")
    assert json.loads(text) == obj
    assert "café/ä.jpg" in text and text.endswith("}\n") and '\n "path"' in text   # indent=1, not escaped


@pytest.mark.parametrize("array", [np.arange(36, dtype=np.uint8).reshape(3, 12),
                                   np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5),
                                   np.zeros((0, 7), dtype=np.float32)], ids=["uint8", "float32", "empty"])
def test_save_npy_round_trips_shape_and_dtype(tmp_path, array):
    target = tmp_path / "rows.npy"
    atomic.save_npy(target, array)
    got = np.load(target, allow_pickle=False)
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)
    assert _names(tmp_path) == ["rows.npy"]


def test_save_npy_refuses_an_object_array_and_keeps_the_old_file(tmp_path):
    """No pickles in an index: an object array fails (ValueError, not a StorageError) before any rename."""
    target = tmp_path / "rows.npy"
    atomic.save_npy(target, np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        atomic.save_npy(target, np.array([{"a": 1}, None], dtype=object))
    assert np.array_equal(np.load(target), np.ones(3, dtype=np.float32)) and _names(tmp_path) == ["rows.npy"]


def test_a_reader_only_ever_sees_a_complete_version(tmp_path):
    """Two writers replace the file while a reader reads it: every read is one whole payload."""
    target = tmp_path / "shared.bin"
    atomic.write_bytes(target, bytes([0]) * 65536)

    def writer(first: int) -> None:
        for i in range(first, first + 40):
            atomic.write_bytes(target, bytes([i]) * 65536)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 100)]
    seen: set[int] = set()
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            data = target.read_bytes()
            assert len(data) == 65536 and data == data[:1] * 65536, "a partial or mixed file was read"
            seen.add(data[0])
    finally:
        for t in threads:
            t.join()
    assert target.read_bytes()[0] in (40, 139) and _names(tmp_path) == ["shared.bin"]
    assert len(seen) >= 2


def test_remove_leftovers_removes_what_a_killed_write_leaves_and_nothing_else(tmp_path):
    """The temporaries are named by atomic_path itself; files that only look similar are kept."""
    leftovers = []
    for target, suffix in ((tmp_path / "manifest.json", ".tmp"), (tmp_path / "pixels-32.ab12cd34.npy", ".npy"),
                           (tmp_path / "sub" / "photo.jpg", ".tmp")):
        with atomic.atomic_path(target, suffix=suffix) as tmp:
            leftovers.append(tmp)
    for path in leftovers:               # as a SIGKILL inside the block leaves them
        path.write_bytes(b"half written")
    kept = [tmp_path / name for name in (".gitignore", ".hidden.jpg", "visible.abcdefgh.tmp", ".x.ABCDEFGH.tmp",
                                         ".short.abc.tmp", ".x.abcdefgh.json")]
    for path in kept:
        path.write_bytes(b"keep")
    (tmp_path / ".folder.abcdefgh.tmp").mkdir()

    assert atomic.remove_leftovers(tmp_path) == 2                   # this folder only
    assert [p.exists() for p in leftovers] == [False, False, True]
    assert atomic.remove_leftovers(tmp_path, recursive=True) == 1   # and its subfolders
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_bytes() == b"keep" for p in kept) and (tmp_path / ".folder.abcdefgh.tmp").is_dir()
    assert (tmp_path / "manifest.json").is_file() and (tmp_path / "sub" / "photo.jpg").is_file()
    assert atomic.remove_leftovers(tmp_path, recursive=True) == 0
    assert atomic.remove_leftovers(tmp_path / "missing") == 0
