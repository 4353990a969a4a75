"""Which image formats the decoder opens, and what one decode costs, read from the header alone.

`retrieval.images` opens every file with `Image.open(fp, formats=OPENERS)`, so no other Pillow plugin
ever sees the bytes: EPS and PostScript (which run Ghostscript), PDF, PSD, the scientific and game
formats are refused by name before any of their code runs. The EPS opener is also taken out of
Pillow's registry at import, so no other `Image.open` in the process can hand a file to Ghostscript.

The cost figures are measured (Pillow 12, on a 2-vCPU server; peak RSS growth per pixel while one
file decodes) and rounded up: what the format's own decoder holds on top of Pillow's image.
"""
from __future__ import annotations

import struct
from typing import IO

from PIL import Image

# Formats opened, as Pillow names them. JPEG opens MPO too (phones and cameras write MPO: a JPEG
# with extra frames); PNG covers APNG.
OPENERS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "JPEG2000", "ICO")
ALLOWED = frozenset(OPENERS) | {"MPO"}
ALLOWED_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF, JPEG 2000 or ICO"
EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".webp", ".gif", ".bmp",
                        ".tif", ".tiff", ".avif", ".avifs", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx", ".ico"})

MAX_FRAMES = 10_000        # frames or pages: past this a file is not a photo (counting stops here)
J2K_MAX_PIXELS = 4_000_000  # JPEG 2000 is decoded at 1/2, 1/4, ... until it fits (~0.1 s/Mpx, 2 vCPU)
ICO_MAX_SIDE = 1024        # an icon's real frame; an ICO may hold a PNG of any size

# Decoder working memory in bytes per pixel, on top of Pillow's image (measured, rounded up):
# WebP's animation decoder keeps two RGBA canvases and a copy (16 B/px in all, 4 of them Pillow's);
# AVIF holds YUV planes (up to 16-bit) and an RGB buffer (9.4 B/px measured for 8-bit 4:2:0);
# OpenJPEG holds an int32 plane per component (19.4 B/px for RGB); a progressive JPEG holds its
# DCT coefficients (2 B per sample); libtiff reads a whole strip; Pillow's BMP RLE decoder a byte
# per pixel. PNG, GIF and baseline JPEG decode row by row into the image.
_PER_PIXEL = {"WEBP": 12, "AVIF": 12}
_PER_SAMPLE = {"JPEG2000": 5}

# Refused formats that Pillow cannot name (it has no opener for them) but a user may send.
_MAGIC = ((b"%PDF-", "PDF"), (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"8BPS", "PSD"),
          (b"<?xml", None), (b"<svg", None))
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"}
_PROGRAMS = ("EPS",)       # Pillow plugins that start another program to decode


def disable_program_plugins() -> None:
    """Take openers that start other programs (EPS: Ghostscript) out of Pillow's registry."""
    Image.init()
    for fmt in _PROGRAMS:
        Image.OPEN.pop(fmt, None)
        if fmt in Image.ID:
            Image.ID.remove(fmt)


def sniff(prefix: bytes) -> tuple[str | None, bool]:
    """(format name, allowed) for the first 16+ bytes of a file Pillow could not open with OPENERS;
    (None, False) when nothing recognises them. Only each plugin's `accept` test runs: no plugin
    code that parses or decodes."""
    for magic, name in _MAGIC:
        if prefix.startswith(magic):
            return name, False
    if prefix[4:8] == b"ftyp" and prefix[8:12] in _HEIF_BRANDS:
        return "HEIC", False
    Image.init()
    for fmt, (_factory, accept) in list(Image.OPEN.items()):
        try:
            if accept is not None and accept(prefix[:16]):
                return fmt, fmt in ALLOWED
        except Exception:   # an accept test that trips on odd bytes names nothing
            continue
    return None, False


def frames_at_most(img: Image.Image, limit: int = MAX_FRAMES) -> int:
    """The number of frames or pages, counted no further than limit + 1.

    Pillow's `n_frames` walks every page of a TIFF (parsing each) and every frame of a GIF: 72 s
    for a 10 MB TIFF of 100,000 pages. Here TIFF and GIF are walked by their block structure only,
    and stop past the limit; the other formats state their frame count in the header."""
    if img.format not in ("TIFF", "GIF"):
        return int(getattr(img, "n_frames", 1) or 1)
    fp = getattr(img, "fp", None)   # an ImageFile's open file; an image made in memory has none
    if fp is None:
        return 1
    where = fp.tell()
    try:
        return (_tiff_pages if img.format == "TIFF" else _gif_frames)(fp, limit)
    finally:
        fp.seek(where)


def _tiff_pages(fp: IO[bytes], limit: int) -> int:
    """Follow the chain of IFD offsets (each IFD: entry count, entries, next offset)."""
    fp.seek(0)
    head = fp.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(order + "H", head[2:4])[0] == 43
    count_fmt, entry, off_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    offset = struct.unpack(order + off_fmt, head[8:16] if big else head[4:8])[0]
    count_size, off_size = struct.calcsize(count_fmt), struct.calcsize(off_fmt)
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) <= limit:
        seen.add(offset)
        fp.seek(offset)
        raw = fp.read(count_size)
        if len(raw) < count_size:
            break
        fp.seek(offset + count_size + struct.unpack(order + count_fmt, raw)[0] * entry)
        nxt = fp.read(off_size)
        offset = struct.unpack(order + off_fmt, nxt)[0] if len(nxt) == off_size else 0
    return max(1, len(seen))


def _gif_frames(fp: IO[bytes], limit: int) -> int:
    """Count image descriptors, skipping extensions and image data by their sub-block lengths."""
    fp.seek(10)
    flags = fp.read(3)[:1]
    if flags and flags[0] & 0x80:
        fp.seek(3 << ((flags[0] & 7) + 1), 1)            # the global colour table
    frames = 0
    while frames <= limit:
        kind = fp.read(1)
        if kind == b"\x2c":                               # image descriptor
            desc = fp.read(9)
            if len(desc) < 9:
                break
            frames += 1
            if desc[8] & 0x80:
                fp.seek(3 << ((desc[8] & 7) + 1), 1)      # local colour table
            fp.seek(1, 1)                                 # LZW minimum code size
        elif kind == b"\x21":                             # extension: label, then sub-blocks
            fp.seek(1, 1)
        else:                                             # trailer, end of data or garbage
            break
        while (size := fp.read(1)) and size != b"\x00":
            fp.seek(size[0], 1)
    return max(1, frames)


def is_ico(prefix: bytes) -> bool:
    return prefix[:4] == b"\x00\x00\x01\x00"


def ico_largest_frame(fp: IO[bytes]) -> tuple[int, int]:
    """The largest real frame of an ICO. Its directory says at most 256x256, but each entry points
    to a PNG or a bitmap that states its own size (an 8000x8000 PNG fits), and Pillow decodes the
    largest one inside Image.open: so this is read from the file before it is opened."""
    head = fp.read(6)
    count = struct.unpack("<H", head[4:6])[0] if len(head) == 6 else 0
    offsets = []
    for _ in range(count):
        entry = fp.read(16)
        if len(entry) < 16:
            break
        offsets.append(struct.unpack("<I", entry[12:16])[0])
    best = (0, 0)
    for offset in offsets:
        fp.seek(offset)
        size = _frame_size(fp.read(24))
        best = max(best, size, key=lambda s: s[0] * s[1])
    return best


def _frame_size(head: bytes) -> tuple[int, int]:
    """(width, height) stated by an ICO frame: a PNG's IHDR, or a bitmap header (whose height
    counts the AND mask too)."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if len(head) >= 12 and struct.unpack("<I", head[:4])[0] >= 40:
        w, h = struct.unpack("<ii", head[4:12])
        return abs(w), abs(h) // 2
    if len(head) >= 8:                                     # the old 12-byte core header
        w, h = struct.unpack("<HH", head[4:8])
        return w, h // 2
    return 0, 0


def j2k_reduction(size: tuple[int, int], side: int | None, max_pixels: int | None = None) -> int:
    """How many halvings JPEG 2000 is decoded at: enough to fit max_pixels (J2K_MAX_PIXELS), and
    more while the shorter side stays >= side (a query or a model needs no more)."""
    w, h = size
    max_pixels = J2K_MAX_PIXELS if max_pixels is None else max_pixels
    r = 0
    while (-(-w >> r)) * (-(-h >> r)) > max_pixels:
        r += 1
    while side and min(w, h) >> (r + 1) >= side:
        r += 1
    return r


def decoder_bytes(img: Image.Image, size: tuple[int, int]) -> int:
    """Memory the format's decoder holds besides Pillow's image, for a decode at `size`."""
    pixels = size[0] * size[1]
    bands = len(img.getbands())
    fmt = img.format or ""
    if fmt in _PER_PIXEL:
        return pixels * _PER_PIXEL[fmt]
    if fmt in _PER_SAMPLE:
        return pixels * bands * _PER_SAMPLE[fmt]
    if fmt in ("JPEG", "MPO") and ("progressive" in img.info or "progression" in img.info):
        # coefficients for the whole image, at its full size even when draft() scales the output
        return img.width * img.height * len(getattr(img, "layer", None) or img.getbands()) * 2
    if fmt == "TIFF":
        return _tiff_strip_bytes(img)
    if fmt == "BMP":
        return pixels
    return 0


def _tiff_strip_bytes(img: Image.Image) -> int:
    """libtiff reads a strip (or a tile) at the file's own sample size: 8 bytes a pixel for 16-bit
    RGBA, however Pillow stores the result."""
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = max(bits) if isinstance(bits, tuple) and bits else int(bits or 8)
    samples = int(tags.get(277, len(img.getbands())) or 1)
    row = img.width * samples * -(-bits // 8)
    if 322 in tags and 323 in tags:      # tiled: one tile at a time
        return int(tags[322]) * int(tags[323]) * samples * -(-bits // 8)
    rows = min(img.height, int(tags.get(278, img.height) or img.height))
    return row * rows
