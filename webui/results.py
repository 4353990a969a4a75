"""What a results gallery shows, on the search tabs and on Compare alike: each hit framed green
(the query's class) or red (another class) where the query's class is known, a caption a visitor
can read (a percentage, or a difference on the 0-255 scale; the raw score stays in the data view),
and the words for why nothing is marked where the class is unknown.

The frame is drawn into a small copy of the library image, so its colour is the same in every
browser and in a screenshot; where nothing is marked the gallery gets the library file itself.
The copy is a JPEG file written once, atomically, under a folder of this process: Gradio rewrites
the cache file of a PIL image in place on every request, so two visitors shown the same framed
result raced (one was served the file while the other truncated it); a file is copied into
Gradio's cache under a temporary name and renamed, and never rewritten.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageOps

from retrieval.compare import NO_CLASSES, RIGHT_COLOUR, UNLABELLED_IMAGE, WRONG_COLOUR, Marks, readable_score
from retrieval.atomic import write_bytes
from retrieval.errors import ImageError
from retrieval.methods import Method
from retrieval.search import Hit

log = logging.getLogger(__name__)

RIGHT, WRONG = "✓", "✗"   # also in the caption, for whoever cannot tell red from green
THUMB_SIDE = 224          # the framed copy's longer side: a gallery cell is smaller than this
FRAME_SHARE = 0.045       # the frame's width as a share of that side (10 px at 224)
CACHE_THUMBS = 256        # decoded library thumbnails kept (about 150 KB each)

GalleryItem = tuple[str, str]
JPEG_QUALITY = 85
_frames_lock = threading.Lock()
_frames_dir: list[Path] = []   # this process's folder of framed copies, made on first use


def frames_folder() -> Path:
    """The folder of this process's framed copies (in the system's temp folder, which Gradio may
    serve from), removed when the process exits."""
    with _frames_lock:
        if not _frames_dir:
            folder = Path(tempfile.mkdtemp(prefix="lookalike-frames-"))
            atexit.register(shutil.rmtree, folder, True)
            _frames_dir.append(folder)
        return _frames_dir[0]


@functools.lru_cache(maxsize=CACHE_THUMBS)
def _thumbnail(path: str, stamp: int) -> Image.Image | None:
    """A library image reduced to THUMB_SIDE, decoded once per file version (`stamp`: its mtime)."""
    from retrieval.images import load_image
    try:
        img = load_image(path, name=Path(path).name, draft=THUMB_SIDE)
    except ImageError as exc:   # changed or damaged since the index was built: shown unframed
        log.info("no framed thumbnail: %s", exc)
        return None
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return img


def framed(path: Path | str, correct: bool | None) -> str:
    """The file a gallery shows for one hit: a framed thumbnail (a JPEG written once per file
    version and colour) when right or wrong is known, else the library file itself."""
    if correct is None:
        return str(path)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return str(path)
    key = hashlib.sha256(f"{path}\0{stamp}\0{correct}".encode()).hexdigest()[:32]
    target = frames_folder() / f"{key}.jpg"
    if target.is_file():
        return str(target)
    thumb = _thumbnail(str(path), stamp)
    if thumb is None:
        return str(path)
    border = max(4, round(FRAME_SHARE * THUMB_SIDE))
    image = ImageOps.expand(thumb, border=border, fill=RIGHT_COLOUR if correct else WRONG_COLOUR)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    write_bytes(target, buffer.getvalue())   # a temporary name, then renamed: never seen half-written
    return str(target)


def caption(hit: Hit, m: Method, dims: int, correct: bool | None, *, short: bool = False) -> str:
    """"✓ #1 bird · 92% alike": the mark, the rank, the class (the file name in an unlabelled
    library) and the readable score; `short`: "✓ bird 92%"."""
    mark = "" if correct is None else (RIGHT if correct else WRONG) + " "
    name = hit.label or Path(hit.rel).name
    if short:   # a small thumbnail: its place in the row is its rank
        return f"{mark}{name} {readable_score(m, hit.score, dims, short=True)}"
    return f"{mark}#{hit.rank} {name} · {readable_score(m, hit.score, dims)}"


def gallery(hits: Sequence[Hit], m: Method, dims: int, correct: Sequence[bool] | None,
            *, short: bool = False) -> list[GalleryItem]:
    marks: Sequence[bool | None] = correct if correct is not None else [None] * len(hits)
    return [(framed(h.path, c), caption(h, m, dims, c, short=short)) for h, c in zip(hits, marks)]


def unmarked_reason(label_from: str) -> str:
    """Why a query's results are not marked right or wrong, in a visitor's words."""
    if label_from == NO_CLASSES:
        return "this library has no classes (its images are not in class folders), so right and wrong cannot be told"
    if label_from == UNLABELLED_IMAGE:
        return "this library image has no class"
    return "the query is not a library or test image, so its class is unknown"


def marks_line(marks: Marks) -> str:
    """The status line's verdict: the query's class and P@k (green frames: right), or why none."""
    if marks.label is None or marks.correct is None:
        return f"not marked: {unmarked_reason(marks.label_from)}"
    right, k = sum(marks.correct), len(marks.correct)
    return (f"query class **{marks.label}** ({marks.label_from}) · **P@{k} {marks.p_at_k or 0.0:.2f}**: "
            f"{right} of {k} share it (green frames), {k - right} do not (red)")
