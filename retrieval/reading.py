"""One read per library file in an index build: bytes -> sha256 -> pixel row and model input.

Why: a library can change while a build runs. Reading a file once, and deriving its content hash,
its pixel row and its model input from those same bytes, means a file replaced mid-build is indexed
as one version or the other, never a mixture, and the hash recorded is that version's, so the next
build sees the change. A file that disappears or cannot be read is skipped with its reason (see
retrieval.library.UNREAD_KINDS) instead of failing the build.

The scan hashed every file already; a file whose rows can be reused (same hash in the old index)
is not read again, since that hash is what its reused rows came from. Every other file is read here,
once; when its bytes no longer match the scan's hash it gets both a fresh pixel row and a fresh
vector from the bytes just read, whatever the old index could have lent it.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .errors import ImageError
from .images import DECODE_BUDGET_BYTES, load_image, resize_pixels
from .library import os_reason, skip_kind

# A file larger than this cannot decode within the per-image budget (retrieval.images), so it is
# refused before its bytes are read into memory.
MAX_READ_BYTES = 2 * DECODE_BUDGET_BYTES
CHUNK = 1024   # jobs handed to the pixel thread pool at a time


class Skip(ImageError):
    """A file the build skips: `kind` is the short reason the summaries count by."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass
class Job:
    """A file to read: its row in the build's item list, and what the old index cannot lend it."""

    row: int
    path: Path
    rel: str
    sha256: str        # the scan's hash
    pixels: bool       # needs a pixel row even when unchanged
    vector: bool       # needs a vector even when unchanged


@dataclass
class Reads:
    """What the pass produced, by item row."""

    sha256: dict[int, str] = field(default_factory=dict)
    pixels: dict[int, np.ndarray] = field(default_factory=dict)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    failed: dict[int, Skip] = field(default_factory=dict)
    changed: list[int] = field(default_factory=list)          # rows whose bytes differed from the scan's
    guard: list[tuple[int, Any]] = field(default_factory=list)  # (row, model input) for the bf16 guard


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or Skip with why they cannot be had."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_READ_BYTES:
                raise Skip("file too large", f"the file is {size / 2 ** 20:.0f} MB, over the "
                           f"{MAX_READ_BYTES / 2 ** 20:.0f} MB that an image within the decode budget can take")
            return fh.read(MAX_READ_BYTES + 1)
    except FileNotFoundError:
        raise Skip("disappeared during the build", "disappeared during the build (deleted or moved)") from None
    except PermissionError:
        raise Skip("permission denied", "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise Skip("cannot be read", f"cannot be read ({os_reason(exc)})") from None


def _refused(exc: ImageError, rel: str, changed: bool) -> Skip:
    """The Skip for a decoder refusal, its reason without the name (the record holds the path)."""
    reason = str(exc)
    reason = reason[len(rel) + 2:] if reason.startswith(f"{rel}: ") else reason
    if changed:   # half-written, or replaced by something else: a rerun may well index it
        return Skip("changed during the build", f"changed during the build and could not be decoded ({reason})")
    return Skip(skip_kind(reason), reason)


def read_one(job: Job, size: int, prepare: Callable[[bytes, str], Any] | None) -> tuple[str, np.ndarray | None, Any]:
    """(sha256, pixel row or None, model input or None) from one read of the file."""
    data = read_bytes(job.path)
    sha = hashlib.sha256(data).hexdigest()
    changed = sha != job.sha256
    if not data:
        raise Skip("changed during the build", "changed during the build: now empty") if changed \
            else Skip("the file is empty", "the file is empty (0 bytes)")
    try:
        row = resize_pixels(load_image(data, name=job.rel), size).reshape(-1) if job.pixels or changed else None
        tensor = prepare(data, job.rel) if prepare is not None and (job.vector or changed) else None
    except ImageError as exc:
        raise _refused(exc, job.rel, changed) from None
    return sha, row, tensor


def _keep(reads: Reads, job: Job, sha: str, row: np.ndarray | None) -> None:
    reads.sha256[job.row] = sha
    if row is not None:
        reads.pixels[job.row] = row
    if sha != job.sha256:
        reads.changed.append(job.row)


def read_pixels(jobs: list[Job], size: int, reads: Reads, *, with_model: bool,
                workers: int | None = None) -> list[Job]:
    """Read the jobs that need no vector (pixel rows only), in a thread pool. With a model, a file
    whose bytes changed since the scan needs a new vector too: those jobs are returned, to be read
    again (pixels and vector from that one read) by read_and_embed."""
    again: list[Job] = []

    def one(job: Job) -> tuple[Job, Any]:
        try:
            return job, read_one(job, size, None)
        except Skip as exc:
            return job, exc.with_traceback(None)   # kept by the thousand: no frames held

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 2)) as pool, \
            tqdm(total=len(jobs), desc="pixels", unit="img", disable=len(jobs) < 50, leave=False) as bar:
        for start in range(0, len(jobs), CHUNK):   # pool.map submits all it is given at once
            for job, got in pool.map(one, jobs[start:start + CHUNK]):
                if isinstance(got, Skip):
                    reads.failed[job.row] = got
                elif with_model and got[0] != job.sha256:
                    again.append(Job(job.row, job.path, job.rel, job.sha256, True, True))
                else:
                    _keep(reads, job, got[0], got[1])
            bar.update(min(CHUNK, len(jobs) - start))
    return again


def read_and_embed(jobs: list[Job], size: int, embedder: Any, reads: Reads, batch_size: int) -> None:
    """Read the jobs that need a vector, streaming their model inputs through the embedder
    (Embedder.encode_files with this module's decode): each file's pixel row, hash and vector
    come from the same bytes."""
    from .embedders.precision import GUARD_SAMPLE   # the bf16 guard's sample: keep those inputs
    guard = set(np.unique(np.linspace(0, len(jobs) - 1, min(GUARD_SAMPLE, len(jobs))).round().astype(int)).tolist()) \
        if getattr(embedder, "precision", "fp32") == "bf16" and jobs else set()
    position = {id(job): n for n, job in enumerate(jobs)}
    pending: dict[int, tuple[str, np.ndarray | None]] = {}

    def decode(job: Job) -> Any:
        sha, row, tensor = read_one(job, size, embedder.prepare_bytes)
        pending[job.row] = (sha, row)
        if position[id(job)] in guard:
            reads.guard.append((job.row, tensor))
        return tensor

    def skipped(n: int, exc: ImageError) -> None:
        reads.failed[jobs[n].row] = (exc if isinstance(exc, Skip) else Skip(skip_kind(str(exc)), str(exc))
                                     ).with_traceback(None)

    # Each job decodes twice from its bytes (full size for the pixel row, the model's draft size for
    # its input): more decode threads than encode_files' default where the cores allow.
    workers = max(2, min(8, (os.cpu_count() or 2) // 2))
    for ok, vecs in embedder.encode_files(jobs, batch_size=batch_size, workers=workers, decode=decode,
                                          on_skip=skipped):
        for n, vec in zip(ok, vecs):
            job = jobs[n]
            sha, row = pending.pop(job.row)
            _keep(reads, job, sha, row)
            reads.vectors[job.row] = vec
    reads.guard = [(r, t) for r, t in reads.guard if r in reads.vectors]
