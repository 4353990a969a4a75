"""The one place where image files are opened.

Everything that reads an image (library scan, query upload, index build, cleaner, downloader, Hub
pull) goes through `load_image` or `check_image`, so the format allowlist, EXIF rotation,
first-frame GIFs, transparency and the memory and time bounds behave the same everywhere. Only the
formats of `retrieval.image_formats` are opened (no EPS, hence no Ghostscript); every decode is
sized from the header before it starts; and whatever the decoder raises reaches the caller as an
ImageError with its reason, never as a traceback.
"""
from __future__ import annotations

import ctypes
import io
import logging
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import image_formats as formats
from .errors import ImageError
from .image_formats import EXTENSIONS as IMAGE_EXTENSIONS
from .image_formats import MAX_FRAMES

log = logging.getLogger(__name__)
formats.disable_program_plugins()   # no Image.open anywhere in the process reaches Ghostscript
MMAP_THRESHOLD = 4 << 20


def _return_freed_images_to_the_system() -> None:
    """Keep every allocation of MMAP_THRESHOLD or more out of the heap, so a decoded image's memory
    goes back to the system when it is freed.

    glibc raises its mmap threshold (up to 32 MB) each time a large block is freed, so later image
    buffers (Pillow allocates 16 MB blocks) come from the heap, whose fragments outlive the decode:
    six concurrent hostile uploads then peaked 550 MB over the decode pool and kept 600 MB after.
    A fixed threshold (what MALLOC_MMAP_THRESHOLD_ sets; left alone when that is set) stops it."""
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    if not libc or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(-3, MMAP_THRESHOLD)   # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)


_return_freed_images_to_the_system()

# Decompression-bomb guard, set deliberately: 64 Mpx covers 8000x6000 photos (48 Mpx) with room to
# spare, while a 30000x30000 declared image (900 Mpx, ~2.7 GB decoded) is refused before decoding.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

MIN_SIDE = 1  # the library accepts any size; the cleaner applies its own (50 px) minimum

# Memory is bounded by the work, not by what a file declares (docs/reliability.md, "Round 2").
# One image may hold at most DECODE_BUDGET_BYTES decoded, at the bytes per pixel Pillow stores for
# its mode (1 for L/P, 2 for 16-bit grey, 4 for RGB and the rest): a 64 Mpx RGB photo is exactly
# that. A decode reserves what it will hold (the decoded image, its RGB copy and the decoder's own
# buffers: _plan) from one per-process pool, DECODE_POOL_BYTES, so concurrent requests and build
# threads together never hold more than the pool in decodes: the rest wait their turn (and give
# up after DECODE_WAIT_S with a clear message). LOOKALIKE_DECODE_POOL_MB sets the pool.
DECODE_BUDGET_BYTES = MAX_PIXELS * 4
# What one decode may take in all: its image, the RGB copy and the format's own decoder buffers
# (image_formats.decoder_bytes: a progressive JPEG's coefficients, WebP's canvases, OpenJPEG's
# planes). A file over it is refused from its header; one under it reserves that much from the pool.
DECODE_COST_BYTES = 3 * DECODE_BUDGET_BYTES
DECODE_POOL_BYTES = int(float(os.environ.get("LOOKALIKE_DECODE_POOL_MB", "1024")) * 2 ** 20)
DECODE_WAIT_S = 60.0
# A model's resize (shorter side to 224-256) sees at most this aspect ratio: a longer image is
# centre-cropped first, so a 1,000,000x1 file cannot ask for a 256,000,000x256 resize.
MAX_ASPECT = 4.0
MAX_RESIZED_PIXELS = 4_000_000   # the most pixels any preprocessing step may produce
# A query is decoded no larger than it needs: every method resizes to at most 256 px (models) or
# the index's pixel size, so load_image(reduce_to=QUERY_SIDE) lets JPEG decode at 1/2..1/8 scale
# and divides other formats down right after decoding, keeping the shorter side >= QUERY_SIDE.
QUERY_SIDE = 512

ImageSource = Union[str, os.PathLike, bytes, Image.Image]


def is_image_name(name: str) -> bool:
    """True for visible files with a supported image extension."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Bytes Pillow holds for a decoded image of this size and mode."""
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return int(width) * int(height) * per_pixel


class _DecodePool:
    """A byte budget shared by every decode in the process (see DECODE_POOL_BYTES)."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._cond = threading.Condition()

    def reserve(self, nbytes: int, label: str, wait_s: float = DECODE_WAIT_S) -> int:
        nbytes = min(nbytes, self.total)   # one image never waits for more than the whole pool
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self.used + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ImageError(f"{label}: the server is busy decoding other large images "
                                     f"({self.used / 2 ** 20:.0f} MB of its {self.total / 2 ** 20:.0f} MB "
                                     "decode budget in use); try again in a moment")
                self._cond.wait(left)
            self.used += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


DECODE_POOL = _DecodePool(DECODE_POOL_BYTES)


def cap_aspect(img: Image.Image, max_ratio: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side to `max_ratio` x the short side (images within it are returned
    as they are). Models crop the centre after their resize anyway; this crop comes first, so the
    resize's cost and result are bounded whatever aspect ratio a file declares."""
    w, h = img.size
    if min(w, h) < 1 or max(w, h) <= max_ratio * min(w, h):
        return img
    if w > h:
        keep = max(1, int(h * max_ratio))
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    keep = max(1, int(w * max_ratio))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale -> L, in bands of rows and in integers: the working memory is one band,
    not the four float64 copies of the whole image that a 64 Mpx 16-bit PNG used to cost."""
    w, h = img.size
    step = max(1, (1 << 22) // max(w, 1))   # about 4 Mpx per band
    bands = [(y, min(h, y + step)) for y in range(0, h, step)]
    if img.mode.startswith("I;16"):
        peak = 65535
    else:   # plain "I" (32-bit) carries no range: values above 255 are taken as 16-bit
        top = max((int(np.asarray(img.crop((0, a, w, b))).max(initial=0)) for a, b in bands), default=0)
        peak = 65535 if top > 255 else 255
    out = np.empty((h, w), dtype=np.uint8)
    for a, b in bands:
        band = np.asarray(img.crop((0, a, w, b))).astype(np.int64)
        out[a:b] = np.clip(band * 255 // peak, 0, 255)
    return Image.fromarray(out, "L")


def _open(source: ImageSource, label: str) -> Image.Image:
    """Open lazily with the allowed formats only; a refused format is named, not tried."""
    if isinstance(source, Image.Image):
        if isinstance(source, ImageFile.ImageFile) and source.format not in formats.ALLOWED:
            raise _unsupported(source.format, label)
        return source
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(f"{label}: the upload is empty (0 bytes)")
        fp: Union[io.BytesIO, Path] = io.BytesIO(source)
    else:
        fp = Path(source)
        if not fp.is_file():
            raise ImageError(f"{label}: no such file")
        if fp.stat().st_size == 0:
            raise ImageError(f"{label}: the file is empty (0 bytes)")
    with (fp.open("rb") if isinstance(fp, Path) else io.BytesIO(source)) as f:   # type: ignore[arg-type]
        prefix = f.read(32)
        if formats.is_ico(prefix):   # Pillow decodes an icon inside Image.open: size it first
            f.seek(0)
            _check_icon(formats.ico_largest_frame(f), label)
    try:
        return Image.open(fp, formats=formats.OPENERS)
    except UnidentifiedImageError:
        name, allowed = formats.sniff(prefix)
        if name and not allowed:
            raise _unsupported(name, label) from None
        if name:
            raise ImageError(f"{label}: corrupt or truncated image (its {name} header cannot be read)") from None
        raise ImageError(f"{label}: not an image (no known image format)") from None


def _check_icon(size: tuple[int, int], label: str) -> None:
    if max(size) > formats.ICO_MAX_SIDE:
        raise ImageError(f"{label}: an ICO holding a {size[0]}x{size[1]} image is over the "
                         f"{formats.ICO_MAX_SIDE}x{formats.ICO_MAX_SIDE} limit for icons; "
                         "save that image as PNG or JPEG")


def _unsupported(fmt: str | None, label: str) -> ImageError:
    return ImageError(f"{label}: unsupported image format ({fmt}); convert it to {formats.ALLOWED_NAMES}")


def flatten_to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any mode to RGB; transparent pixels become `background` (white), not black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit modes span 0..65535 whatever the content (a dark exposure stays dark); plain "I"
        # (32-bit) carries no range, so values above 255 are taken as 16-bit, others as 8-bit.
        img = _grey_to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if img.mode != "RGBA":
            img = img.convert("RGBA")
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img)   # RGBA onto RGB, masked by its own alpha: no copy of either
        return canvas
    return img.convert("RGB")


def _open_first_frame(source: ImageSource, label: str) -> Image.Image:
    """Open lazily, refuse from the header alone what is over the limits, stay on the first frame.

    The frame count is bounded (image_formats.frames_at_most), never Pillow's `n_frames`, which
    walks every page of a TIFF; a freshly opened file is on its first frame already."""
    img = _open(source, label)
    _check_size(img, label)
    if formats.frames_at_most(img, MAX_FRAMES) > MAX_FRAMES:
        raise ImageError(f"{label}: a {img.format} with more than {MAX_FRAMES:,} frames or pages is not "
                         "taken (only its first would be used); save that frame on its own")
    if isinstance(source, Image.Image) and getattr(img, "tell", lambda: 0)() != 0:
        img.seek(0)
    return img


def _plan(img: Image.Image, copies: int, side: int | None, label: str) -> int:
    """Fix the decode size (JPEG draft, JPEG 2000 resolution level) and return the bytes the decode
    will hold: the format's own buffers plus `copies` images at Pillow's bytes per pixel. Refused
    here, before anything is decoded, when that is over DECODE_COST_BYTES."""
    size = img.size
    if img.format == "JPEG2000":
        level = formats.j2k_reduction(img.size, side)
        if level:
            # Jpeg2KImageFile's decode level shadows Image.reduce(), the method Pillow's types declare.
            img.reduce = level   # type: ignore[assignment]
            half = (1 << level) >> 1
            size = ((img.size[0] + half) >> level, (img.size[1] + half) >> level)   # Pillow's rounding
    own = formats.decoder_bytes(img, size)   # before draft(): coefficients stay at full size
    if side and img.format in ("JPEG", "MPO") and min(img.size) >= 2 * side:
        img.draft("RGB", (side, side))
        size = img.size
    cost = own + copies * decoded_bytes(*size, img.mode)   # an ICO is decoded by now (Image.open)
    if cost > DECODE_COST_BYTES:
        raise ImageError(f"{label}: a {img.format} of {img.width}x{img.height} would take {cost / 2 ** 20:.0f} MB "
                         f"to decode, over the {DECODE_COST_BYTES / 2 ** 20:.0f} MB per-image budget; "
                         "scale it down or save it as JPEG or PNG first")
    return cost


def _load(img: Image.Image, label: str) -> None:
    """Decode; a JPEG 2000 that cannot be decoded at the level _plan chose says why."""
    level = getattr(img, "_reduce", 0) if img.format == "JPEG2000" else 0
    try:
        img.load()
    except OSError:
        if not level:
            raise
        raise ImageError(f"{label}: this JPEG 2000 is decoded at 1/{1 << level} of its size (at most "
                         f"{formats.J2K_MAX_PIXELS / 1e6:.0f} Mpx), and it is either corrupt or lacks the "
                         "resolution levels for that; save it as PNG or JPEG") from None


def load_image(source: ImageSource, name: str | None = None, *, draft: int | None = None,
               reduce_to: int | None = None) -> Image.Image:
    """Open, decode fully, apply EXIF orientation, take the first frame and return RGB.

    draft: for a model that resizes to `draft` px anyway, let the JPEG decoder scale by 1/2, 1/4 or
    1/8 while decoding (DCT scaling), keeping both sides >= draft: a 12 Mpx photo then decodes in a
    fraction of the time. JPEG 2000 is decoded at a lower resolution level the same way; other
    formats, and images already near that size, decode as usual.
    reduce_to: also divide any other format down by a whole factor right after decoding, keeping
    the shorter side >= reduce_to (queries: QUERY_SIDE), so the RGB copy and the conversions of
    a 64 Mpx upload cost a fraction of its decode.
    Raises ImageError with a specific reason, whatever the decoder raised; never returns a
    half-decoded image.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open_first_frame(source, label)
            held = DECODE_POOL.reserve(_plan(img, 2, draft or reduce_to, label), label)
            try:
                _load(img, label)
                if reduce_to:
                    img = _reduce_early(img, reduce_to)
                img = ImageOps.exif_transpose(img) or img
                return flatten_to_rgb(img)
            finally:
                DECODE_POOL.release(held)
    except ImageError:
        raise
    except Exception as exc:   # noqa: BLE001 - the decoder boundary: every failure gets its reason
        raise _classify(exc, label) from None


def _classify(exc: Exception, label: str) -> ImageError:
    """The ImageError for whatever Pillow (or a codec under it) raised while opening or decoding.

    Beyond Pillow's usual OSError and SyntaxError, malformed files make it raise IndexError (GIF,
    QOI), TypeError (a TIFF without a dimension tag), RuntimeError (AVIF), struct.error,
    ZeroDivisionError and MemoryError: each is a reason to skip the file, not a crash."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow names its own hard limit (twice ours); say what the file declares and our limit.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"it declares {int(declared[1]) / 1e6:.0f} Mpx" if declared else str(exc)
        return ImageError(f"{label}: refused as a possible decompression bomb ({what}, the limit is "
                          f"{MAX_PIXELS / 1e6:.0f} Mpx)")
    if isinstance(exc, UnidentifiedImageError):
        return ImageError(f"{label}: not an image (no known image format)")
    if isinstance(exc, FileNotFoundError):   # removed between the listing and the read
        return ImageError(f"{label}: no such file")
    if isinstance(exc, (PermissionError, IsADirectoryError)):
        return ImageError(f"{label}: cannot be read ({exc.strerror or exc})")
    if isinstance(exc, MemoryError):
        return ImageError(f"{label}: too large to decode in the memory left to this process; "
                          "try again later or scale it down")
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        return ImageError(f"{label}: corrupt or truncated image ({str(exc)[:200]})")
    log.debug("decoder raised %s on %s", type(exc).__name__, label, exc_info=exc)
    return ImageError(f"{label}: corrupt or truncated image (the decoder failed: "
                      f"{type(exc).__name__}: {str(exc)[:200]})")


def _reduce_early(img: Image.Image, side: int) -> Image.Image:
    """Divide a decoded image by the largest whole factor that keeps its shorter side >= side
    (box filter, Image.reduce); EXIF orientation is carried over for exif_transpose."""
    factor = min(img.size) // side
    if factor < 2:
        return img
    exif = img.getexif()
    if img.mode in ("I;16", "I;16B", "I;16L"):
        img = _grey_to_8bit(img)          # reduce does not take 16-bit modes; L is a quarter of RGB
    elif img.mode in ("P", "PA", "1"):
        img = flatten_to_rgb(img)         # nor palettes: transparency goes onto white first
    out = img.reduce(factor)
    if exif.get(0x0112):
        out.info["exif"] = exif.tobytes()
    return out


def _check_size(img: Image.Image, label: str) -> None:
    """Refuse, from the header alone, images over the pixel limit or the per-image decode budget."""
    if img.width * img.height > MAX_PIXELS:
        raise ImageError(
            f"{label}: {img.width}x{img.height} is too large "
            f"({img.width * img.height / 1e6:.0f} Mpx, limit {MAX_PIXELS / 1e6:.0f} Mpx)"
        )
    need = decoded_bytes(*img.size, img.mode)
    if need > DECODE_BUDGET_BYTES:
        raise ImageError(f"{label}: {img.width}x{img.height} in mode {img.mode} would take "
                         f"{need / 2 ** 20:.0f} MB to decode, over the {DECODE_BUDGET_BYTES / 2 ** 20:.0f} MB "
                         "per-image budget; scale it down first")


def check_image(source: ImageSource, name: str | None = None) -> tuple[int, int, str]:
    """Decode fully (catching truncation and corruption) but convert nothing: (width, height, mode).

    For checks that only need to know a file is a usable image (the downloader): the same
    refusals as `load_image`, at the memory of the decoded file alone, with no RGB copy."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open_first_frame(source, label)
            _plan(img, 2, None, label)    # the same refusals as load_image ...
            held = DECODE_POOL.reserve(_plan(img, 1, None, label), label)   # ... at one copy's memory
            try:
                _load(img, label)
            finally:
                DECODE_POOL.release(held)
            return img.width, img.height, img.mode
    except ImageError:
        raise
    except Exception as exc:   # noqa: BLE001 - the same boundary as load_image
        raise _classify(exc, label) from None


def resize_pixels(img: Image.Image, size: int) -> np.ndarray:
    """The seed's preprocessing: squash to size x size RGB (no crop), as a uint8 array."""
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
