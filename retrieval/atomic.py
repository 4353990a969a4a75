"""Atomic file writes: write a temporary file in the target folder, fsync, then rename.

A reader (or a process killed half-way) therefore sees either the old file or the new one, never a
half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def atomic_path(target: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: Path, obj: Any) -> None:
    write_bytes(target, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def save_npy(target: Path, array: np.ndarray) -> None:
    with atomic_path(target, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)
