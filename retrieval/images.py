"""The one place where image files are opened.

Everything that reads an image (library scan, query upload, index build, cleaner) goes through
`load_image`, so EXIF rotation, first-frame GIFs, transparency and the decompression-bomb guard
behave the same everywhere.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

# Decompression-bomb guard, set deliberately: 64 Mpx covers 8000x6000 photos (48 Mpx) with room to
# spare, while a 30000x30000 declared image (900 Mpx, ~2.7 GB decoded) is refused before decoding.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

MIN_SIDE = 1  # the library accepts any size; the cleaner applies its own (50 px) minimum
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})

ImageSource = Union[str, os.PathLike, bytes, Image.Image]


def is_image_name(name: str) -> bool:
    """True for visible files with a supported image extension."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _open(source: ImageSource, label: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(f"{label}: the upload is empty (0 bytes)")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"{label}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{label}: the file is empty (0 bytes)")
    return Image.open(path)


def flatten_to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any mode to RGB; transparent pixels become `background` (white), not black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit modes span 0..65535 whatever the content (a dark exposure stays dark); plain "I"
        # (32-bit) carries no range, so values above 255 are taken as 16-bit, others as 8-bit.
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_image(source: ImageSource, name: str | None = None, *, draft: int | None = None) -> Image.Image:
    """Open, decode fully, apply EXIF orientation, take the first frame and return RGB.

    draft: for a model that resizes to `draft` px anyway, let the JPEG decoder scale by 1/2, 1/4 or
    1/8 while decoding (DCT scaling), keeping both sides >= draft: a 12 Mpx photo then decodes in a
    fraction of the time. Other formats, and images already near that size, decode as usual.
    Raises ImageError with a specific reason; never returns a half-decoded image.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(source, label)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{label}: {img.width}x{img.height} is too large "
                    f"({img.width * img.height / 1e6:.0f} Mpx, limit {MAX_PIXELS / 1e6:.0f} Mpx)"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if draft and img.format == "JPEG" and min(img.size) >= 2 * draft:
                img.draft("RGB", (draft, draft))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return flatten_to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow names its own hard limit (twice ours); say what the file declares and our limit.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"it declares {int(declared[1]) / 1e6:.0f} Mpx" if declared else str(exc)
        raise ImageError(f"{label}: refused as a possible decompression bomb ({what}, the limit is "
                         f"{MAX_PIXELS / 1e6:.0f} Mpx)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from None


def resize_pixels(img: Image.Image, size: int) -> np.ndarray:
    """The seed's preprocessing: squash to size x size RGB (no crop), as a uint8 array."""
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
