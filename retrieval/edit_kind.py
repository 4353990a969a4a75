"""What kind of copy a near-duplicate is, told from its pixels against its group's kept image.

The grouping (retrieval.duplicates) says two photos are alike; this module says how one differs
from the other, where that can be told, for the people who decide what to keep. Only the members
of a group are read, each once: its displayed size from the file's header (EXIF orientation
applied) and its pixels through `retrieval.images.load_image`, the project's one decoder, at a
reduced size (`DRAFT`: JPEGs decode at 1/2 to 1/8 scale; nothing here needs more).

The rule, in order (measured on sample-library photos with bench/duplicates.py's copies: half
size, JPEG quality 30, a 10% crop, +20% brightness; 120 photos, one of 480 copies misread, a crop
also called brightened):
1. the same bytes (the index's sha256): "same file" (decided by the caller, nothing decoded);
2. the best-aligned thumbnails (below) correlate under `SAME_CONTENT`: "edited" and nothing
   more (changed beyond these edits, or another shot of the same scene); resized, recompressed,
   cropped and brightened copies scored 0.966 or more;
3. the aspect ratio differs by over 1% (`ASPECT_TOLERANCE`) and more than a resize's rounding,
   or a central part of one image matches the other clearly better than the whole does
   (`CROP_GAIN`; 64x64 grey thumbnails, normalised correlation, central parts at `ZOOMS`):
   "cropped". On that set a crop's best part
   scored at least 0.036 above the whole; a resized or recompressed copy's whole scored best;
4. else a different pixel size: "resized";
5. the mean grey level of the pixels that neither image clips differs by over `BRIGHTNESS_LEVELS`
   of 255: "brightened" (or "darkened"). Recompressing or resizing moved it by under 1 level;
   +20% brightness by 9 or more (clipped white backgrounds left out);
6. nothing of the above, the same pixel size and other bytes: "recompressed" (re-saved).
Edits combine: "cropped + brightened".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .image_formats import OPENERS
from .images import load_image

SAME_FILE, RESIZED, RECOMPRESSED, CROPPED = "same file", "resized", "recompressed", "cropped"
BRIGHTENED, DARKENED, EDITED = "brightened", "darkened", "edited"
THUMB = 64                   # grey thumbnails compared, THUMB x THUMB (squashed, like the pixel index)
DRAFT = 256                  # decode size asked of load_image: both sides stay >= this
ASPECT_TOLERANCE = 0.01      # aspect ratios within 1% are the same shape
ZOOMS = (1.0, 0.95, 0.9, 0.85, 0.8)   # central parts tried when looking for a crop
CROP_GAIN = 0.02             # a part must beat the whole by this much correlation to be a crop
SAME_CONTENT = 0.9           # below this best correlation the content itself differs
BRIGHTNESS_LEVELS = 4.0      # mean grey shift (of 255) that makes a copy brightened or darkened
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Look:
    """What the rule needs of one image: its displayed size and its pixels at a reduced size."""

    width: int
    height: int
    image: Image.Image

    @property
    def aspect(self) -> float:
        return self.width / max(self.height, 1)


def look(path: Path, name: str | None = None) -> Look:
    """Read one image for the rule; raises ImageError (from load_image) when it cannot be decoded."""
    image = load_image(path, name=name, draft=DRAFT)   # the decoder's checks first, then the header
    with Image.open(path, formats=OPENERS) as header:
        width, height = header.size
        turned = header.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    return Look(height, width, image) if turned else Look(width, height, image)


def grey(image: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """A region of an image (default: all of it) as a THUMB x THUMB grey thumbnail."""
    region = image.crop(tuple(round(v) for v in box)) if box else image   # type: ignore[arg-type]
    return np.asarray(region.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float32)


def central_box(image: Image.Image, aspect: float, zoom: float) -> tuple[float, float, float, float]:
    """The central box of `image` with aspect ratio `aspect`, the largest that fits, times `zoom`."""
    w, h = image.size
    bw, bh = (w, w / aspect) if w / aspect <= h else (h * aspect, h)
    bw, bh = max(bw * zoom, 1.0), max(bh * zoom, 1.0)
    return ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)


def same_shape(a: Look, b: Look) -> bool:
    """The same aspect ratio within 1%, or within the rounding of a resize (a pixel on each side:
    halving 99x300 gives 49x150, 2% off)."""
    big, small = (a, b) if a.width * a.height >= b.width * b.height else (b, a)
    off = abs(small.width * big.height - big.width * small.height)
    return off <= max(ASPECT_TOLERANCE * big.width * small.height, big.width + big.height)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two thumbnails: 1 for the same picture whatever its brightness
    and contrast; two flat images correlate 1 with each other and 0 with anything else."""
    a, b = a - a.mean(), b - b.mean()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < 1e-3 or nb < 1e-3:
        return 1.0 if na < 1e-3 and nb < 1e-3 else 0.0
    return float((a * b).sum() / (na * nb))


@dataclass(frozen=True)
class Alignment:
    """The whole-image correlation, and the best over the central parts tried (with its thumbnails)."""

    whole: float
    best: float
    kept: np.ndarray
    member: np.ndarray


def align(kept: Look, member: Look) -> Alignment:
    """Compare the wholes, then central parts of each (with the other's shape) against the other whole."""
    gk, gm = grey(kept.image), grey(member.image)
    whole = correlation(gk, gm)
    best = (whole, gk, gm)
    alike = same_shape(kept, member)
    for zoom in ZOOMS:
        if alike and zoom == 1.0:
            continue                     # that part is the whole
        for part_of_kept in (True, False):
            if part_of_kept:
                a, b = grey(kept.image, central_box(kept.image, member.aspect, zoom)), gm
            else:
                a, b = gk, grey(member.image, central_box(member.image, kept.aspect, zoom))
            c = correlation(a, b)
            if c > best[0]:
                best = (c, a, b)
    return Alignment(whole, best[0], best[1], best[2])


def brightness_shift(kept: np.ndarray, member: np.ndarray) -> float:
    """Mean grey difference (member - kept) over the pixels neither image clips (a white
    background stays white when brightened); all pixels when fewer than 5% are unclipped."""
    unclipped = (np.maximum(kept, member) < 250) & (np.minimum(kept, member) > 5)
    if unclipped.mean() < 0.05:
        return float(member.mean() - kept.mean())
    return float((member - kept)[unclipped].mean())


def edit_kind(kept: Look, member: Look) -> tuple[str, ...]:
    """The edits that turn the kept image into `member`, by the rule of the module docstring
    (steps 2-6; the caller has already told byte-identical files apart)."""
    a = align(kept, member)
    if a.best < SAME_CONTENT:
        return (EDITED,)     # no crop or size change explains it: say no more than that
    edits: list[str] = []
    if not same_shape(kept, member) or a.best > a.whole + CROP_GAIN:
        edits.append(CROPPED)
    elif (member.width, member.height) != (kept.width, kept.height):
        edits.append(RESIZED)
    shift = brightness_shift(a.kept, a.member)
    if abs(shift) > BRIGHTNESS_LEVELS:
        edits.append(BRIGHTENED if shift > 0 else DARKENED)
    return tuple(edits) or (RECOMPRESSED,)
