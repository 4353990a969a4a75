"""One build at a time per index folder: an exclusive `fcntl.flock` on INDEX/build.lock.

Two builds of one index folder used to delete each other's new arrays as stale, and the survivor
could write a manifest naming an array that no longer existed. The whole build (scan, arrays,
Chroma sync, manifest, evaluation) now runs under this lock.

Why flock on a lock file: the kernel drops the lock when its holder dies (SIGKILL, a crash, a
reboot), so a killed build never leaves a lock that blocks forever; the file itself stays behind
and is simply locked again by the next build. The holder writes its pid and start time into the
file, so the one that waits or refuses can say who holds it. A second build refuses at once, or
waits up to `wait_s` seconds (`--lock-wait` on the command line) and then refuses.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar, cast

from .errors import IndexError_, Remedy

log = logging.getLogger(__name__)

LOCK_NAME = "build.lock"
POLL_S = 0.2
F = TypeVar("F", bound=Callable[..., Any])


class IndexLocked(IndexError_):
    """Another build holds the index folder's lock."""


def _holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it (pid and start time), for the message."""
    try:
        info = json.loads(path.read_text("utf-8") or "{}")
        return f"pid {int(info['pid'])}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def _note_holder(fd: int) -> None:
    """Write our pid and start time into the lock file, for a waiter's message. Best effort: on a
    full disk the lock holds all the same, and the build goes on to its own clear disk-full error."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
    except OSError as exc:
        log.debug("could not note the lock holder: %s", exc)


@contextmanager
def index_lock(index_dir: Path, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold INDEX/build.lock exclusively for the block; IndexLocked when another build holds it
    for longer than `wait_s` seconds (0: refuse at once)."""
    index_dir = Path(index_dir)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(index_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise IndexError_(f"cannot write to the index folder {index_dir} (its build lock cannot be created: "
                          f"{exc.strerror or exc}); the existing index was left as it is") from None
    path = index_dir / LOCK_NAME
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
                    raise IndexLocked(
                        f"another build of this index is running ({_holder(path)}): it holds the lock "
                        f"{path}{waited}. Wait for it to finish, or let this build wait for the lock; "
                        "the index was not touched", remedy=Remedy.WAIT_FOR_BUILD) from None
                if not told:
                    log.warning("waiting up to %g s for the build lock %s, held by %s", wait_s, path, _holder(path))
                    told = True
                time.sleep(POLL_S)
        if told:
            log.warning("got the build lock %s; building", path)
        _note_holder(fd)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)   # the file stays (unlinking it would race a waiter); the lock goes
    finally:
        os.close(fd)   # closing the descriptor releases the flock


def locked_build(fn: F) -> F:
    """Decorator for build_index(data_dir, index_dir, ..., lock_wait=0.0): run it under index_lock.
    `fn` declares `lock_wait` itself, so its signature (and type checkers) know the argument."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with index_lock(Path(bound.arguments["index_dir"]), bound.arguments["lock_wait"]):
            return fn(*args, **kwargs)
    return cast(F, wrapper)
