"""Atomic file writes: write a temporary file in the target folder, fsync, then rename.

A reader (or a process killed half-way) therefore sees either the old file or the new one, never a
half-written file. A write that fails (disk full, read-only folder) raises `StorageError`, a
LookalikeError whose message says what to do, and leaves the old file as it was. A process killed
during a write can leave its hidden temporary file behind; `remove_leftovers` clears those on the
next run of the stage that owns the folder.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import StorageError

# mkstemp names: "." + target name + "." + 8 random characters + suffix (see atomic_path).
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|npy)$")


def _reason(exc: OSError) -> str:
    # numpy's tofile reports a short write as a bare OSError("N requested and M written").
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "requested and" in str(exc):
        return "the disk is full"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


@contextmanager
def atomic_path(target: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    tmp_path: Path | None = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, target)
        except StorageError:
            raise
        except OSError as exc:
            err = StorageError(f"could not write {target}: {_reason(exc)} ({exc}). Free some disk space or "
                               "make the folder writable, then run the command again; the previous "
                               "version of the file, if any, is unchanged")
            err.errno = exc.errno
            raise err from exc
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: Path, obj: Any) -> None:
    write_bytes(target, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def save_npy(target: Path, array: np.ndarray) -> None:
    with atomic_path(target, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def remove_leftovers(folder: Path, *, recursive: bool = False) -> int:
    """Delete the temporary files of writes that a killed process left in `folder`; returns how many.

    Only names of the form atomic_path creates are touched. Run it at the start of a stage that is
    the only writer of the folder (two writers at once would delete each other's temporaries).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in (folder.rglob(".*") if recursive else folder.glob(".*")):
        if _TEMP_NAME.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
