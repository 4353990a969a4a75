"""A generated corpus of bad and awkward images, each with the outcome every stage must give it.

Nothing here is a hand-picked file: every case is built from scratch with Pillow or by hand (a
PNG header, an HTML page), so the corpus is the same on every machine. Each `Case` says whether
`retrieval.images.load_image` must accept it (and what must then hold: RGB out, rotation applied,
first frame taken, transparency on white) or reject it (and which words the message carries), and
what the cleaner does with it (a 49x49 image is a valid image but too small for the library).

    python tests/bad_images.py OUT_DIR        # write the corpus to OUT_DIR and print the table

tests/test_bad_image_corpus.py runs every stage over it: library scan + index build, cleaner, CLI
search, app upload and the downloader.
"""
from __future__ import annotations

import io
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

RED, BLUE, WHITE = (220, 20, 20), (20, 20, 220), (255, 255, 255)
BOMB_SIDE = 30000          # declared 30000 x 30000 = 900 Mpx, about 2.7 GB decoded as RGB
HUGE_SIZE = (8000, 6000)   # 48 Mpx: large but legitimate (a modern phone photo)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    """Left half one colour, right half another: orientation and transparency are visible."""
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def _png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


# -- the files -------------------------------------------------------------------------------------

def zero_bytes() -> bytes:
    return b""


def text_as_jpg() -> bytes:
    return b"Shopping list:\n- milk\n- eggs\nThis is a text file that was renamed to .jpg.\n"


def truncated_jpeg() -> bytes:
    data = _encode(_halves((320, 240), RED, BLUE), "JPEG", quality=90)
    return data[: len(data) // 2]


def png_bad_crc() -> bytes:
    """A valid PNG whose IDAT chunk had a byte flipped in transit: its CRC no longer matches."""
    good = _encode(_halves((64, 64), RED, BLUE), "PNG")
    pos = good.index(b"IDAT") + 4 + 10           # a byte inside the IDAT data
    return good[:pos] + bytes([good[pos] ^ 0xFF]) + good[pos + 1:]


def svg() -> bytes:
    return (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200">'
            b'<circle cx="100" cy="100" r="80" fill="red"/></svg>\n')


def html_error_page() -> bytes:
    return (b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n<body><h1>Forbidden</h1>"
            b"<p>You don't have permission to access this resource.</p><hr><address>nginx</address></body></html>\n")


def decompression_bomb() -> bytes:
    """A real PNG header declaring 30000x30000 RGB, with one tiny compressed row: 69 bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * 64))) + _png_chunk(b"IEND", b""))


def huge_legit() -> bytes:
    """8000x6000 JPEG (48 Mpx): the left half red, the right half blue, a white disc in the middle."""
    small = _halves((800, 600), RED, BLUE)
    ImageDraw.Draw(small).ellipse((300, 200, 500, 400), fill=WHITE)
    return _encode(small.resize(HUGE_SIZE, Image.Resampling.NEAREST), "JPEG", quality=80)


def one_by_one() -> bytes:
    return _encode(Image.new("RGB", (1, 1), RED), "PNG")


def forty_nine() -> bytes:
    return _encode(_halves((49, 49), RED, BLUE), "JPEG", quality=95)


def cmyk_jpeg() -> bytes:
    """CMYK (0, 255, 255, 0) is red; many print-shop and stock photos are CMYK JPEGs."""
    return _encode(Image.new("CMYK", (96, 64), (0, 255, 255, 0)), "JPEG", quality=95)


def png16() -> bytes:
    """16-bit greyscale: a horizontal ramp 0..65535 (a scanner or a scientific camera)."""
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (64, 1))
    return _encode(Image.fromarray(ramp), "PNG")


def png16_dark() -> bytes:
    """16-bit greyscale whose values all stay below 256 (a dark exposure): still nearly black."""
    ramp = np.tile(np.linspace(0, 200, 128).astype(np.uint16), (64, 1))
    return _encode(Image.fromarray(ramp), "PNG")


def palette_transparent() -> bytes:
    """Palette PNG: left half transparent (index 0), right half opaque blue."""
    img = Image.new("P", (80, 60), 0)
    img.putpalette([0, 0, 0, *BLUE] + [0] * (254 * 3))
    img.paste(1, (40, 0, 80, 60))
    return _encode(img, "PNG", transparency=0)


def la_png() -> bytes:
    """Grey + alpha: left half transparent black, right half opaque mid grey."""
    return _encode(_halves((80, 60), (0, 0), (128, 255), mode="LA"), "PNG")


def animated_gif() -> bytes:
    """Three frames: red, blue, green. The first frame must be the one used."""
    frames = [Image.new("RGB", (80, 60), c).convert("P") for c in (RED, BLUE, (20, 200, 20))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def webp() -> bytes:
    return _encode(_halves((96, 64), RED, BLUE), "WEBP", quality=90)


def webp_alpha() -> bytes:
    """WebP with transparency: left half transparent, right half opaque blue."""
    return _encode(_halves((96, 64), (0, 0, 0, 0), (*BLUE, 255), mode="RGBA"), "WEBP", lossless=True)


def exif_rotated() -> bytes:
    """Stored 120x60 (left red, right blue) with EXIF Orientation 6: shown rotated 90 degrees
    clockwise, i.e. 60x120 with red on top."""
    img = _halves((120, 60), RED, BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes())


def png_named_jpg() -> bytes:
    return _encode(_halves((80, 60), RED, BLUE), "PNG")


# -- what must hold for accepted files ----------------------------------------------------------------

def _near(pixel: tuple[int, ...], want: tuple[int, ...], tol: int = 40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, want))


def _check(size: tuple[int, int] | None = None, **points: tuple[tuple[float, float], tuple[int, int, int]]):
    """A check: RGB, optional exact size, and colours at fractional (x, y) positions."""
    def check(img: Image.Image) -> None:
        assert img.mode == "RGB", img.mode
        if size is not None:
            assert img.size == size, img.size
        for label, ((fx, fy), want) in points.items():
            xy = (min(img.width - 1, int(fx * img.width)), min(img.height - 1, int(fy * img.height)))
            got = img.getpixel(xy)
            assert _near(got, want), f"{label}: pixel {xy} is {got}, expected about {want}"
    return check


def _ramp_check(peak: int):
    def check(img: Image.Image) -> None:
        assert img.mode == "RGB" and img.size == (128, 64)
        row = np.asarray(img)[0, :, 0].astype(int)
        assert row[0] <= 2 and abs(row[-1] - peak) <= 2, (row[0], row[-1])
        assert np.all(np.diff(row) >= 0), "the ramp must stay monotonic"
    return check


@dataclass(frozen=True)
class Case:
    """One file of the corpus and the outcome every stage must give it."""

    name: str                     # file name, extension as a user or a web server would give it
    what: str                     # one line for the README table
    make: Callable[[], bytes]
    accepted: bool                # load_image returns an image (True) or raises ImageError (False)
    message: str = ""             # rejected: a regex the ImageError message must match
    check: Callable[[Image.Image], None] | None = None   # accepted: what must hold
    clean: str = "ok"             # the cleaner's verdict: ok, too_small, too_large, corrupt or not_image
    content_type: str = "image/jpeg"   # what the downloader test's server sends with it
    library: bool = True          # has an image extension, so the library scan lists it


CASES: tuple[Case, ...] = (
    Case("zero-bytes.jpg", "zero-byte file", zero_bytes, False, r"empty \(0 bytes\)", clean="not_image"),
    Case("text.jpg", "text file named .jpg", text_as_jpg, False, "not an image", clean="not_image"),
    Case("truncated.jpg", "truncated JPEG (first half only)", truncated_jpeg, False, "corrupt or truncated",
         clean="corrupt"),
    Case("bad-crc.png", "PNG with a corrupt IDAT chunk (CRC mismatch)", png_bad_crc, False,
         "corrupt or truncated", clean="corrupt", content_type="image/png"),
    Case("drawing.svg", "SVG (vector, not decoded)", svg, False, "not an image", clean="not_image",
         content_type="image/svg+xml", library=False),
    Case("error-page.jpg", "HTML error page saved as .jpg", html_error_page, False, "not an image",
         clean="not_image"),
    Case("bomb.png", f"decompression bomb: PNG declaring {BOMB_SIDE}x{BOMB_SIDE} (900 Mpx)", decompression_bomb,
         False, "too large|decompression bomb", clean="too_large", content_type="image/png"),
    Case("huge-8000x6000.jpg", "huge legitimate JPEG 8000x6000 (48 Mpx)", huge_legit, True,
         check=_check(HUGE_SIZE, left=((0.1, 0.1), RED), right=((0.9, 0.1), BLUE), middle=((0.5, 0.5), WHITE))),
    Case("1x1.png", "1x1 image", one_by_one, True, check=_check((1, 1), only=((0, 0), RED)), clean="too_small",
         content_type="image/png"),
    Case("49x49.jpg", "49x49 image (below the cleaner's 50 px)", forty_nine, True,
         check=_check((49, 49), left=((0.1, 0.5), RED), right=((0.9, 0.5), BLUE)), clean="too_small"),
    Case("cmyk.jpg", "CMYK JPEG", cmyk_jpeg, True, check=_check((96, 64), centre=((0.5, 0.5), (255, 0, 0)))),
    Case("gray16.png", "16-bit greyscale PNG (ramp 0..65535)", png16, True, check=_ramp_check(255),
         content_type="image/png"),
    Case("gray16-dark.png", "16-bit greyscale PNG, dark (all values < 256)", png16_dark, True,
         check=_ramp_check(1), content_type="image/png"),
    Case("palette-alpha.png", "palette PNG with a transparent colour", palette_transparent, True,
         check=_check((80, 60), transparent=((0.2, 0.5), WHITE), opaque=((0.8, 0.5), BLUE)),
         content_type="image/png"),
    Case("gray-alpha.png", "LA (grey + alpha) PNG", la_png, True,
         check=_check((80, 60), transparent=((0.2, 0.5), WHITE), opaque=((0.8, 0.5), (128, 128, 128))),
         content_type="image/png"),
    Case("animated.gif", "animated GIF, 3 frames (red, blue, green)", animated_gif, True,
         check=_check((80, 60), first_frame=((0.5, 0.5), RED)), content_type="image/gif"),
    Case("photo.webp", "WebP", webp, True, check=_check((96, 64), left=((0.1, 0.5), RED), right=((0.9, 0.5), BLUE)),
         content_type="image/webp"),
    Case("alpha.webp", "WebP with transparency", webp_alpha, True,
         check=_check((96, 64), transparent=((0.1, 0.5), WHITE), opaque=((0.9, 0.5), BLUE)),
         content_type="image/webp"),
    Case("exif-rotated.jpg", "EXIF-rotated JPEG (Orientation 6)", exif_rotated, True,
         check=_check((60, 120), top=((0.5, 0.1), RED), bottom=((0.5, 0.9), BLUE))),
    Case("png-named.jpg", "PNG bytes with a .jpg name", png_named_jpg, True,
         check=_check((80, 60), left=((0.1, 0.5), RED), right=((0.9, 0.5), BLUE))),
)

ACCEPTED = tuple(c for c in CASES if c.accepted)
REJECTED = tuple(c for c in CASES if not c.accepted)


# -- round 2: files that are cheap to send and used to be expensive to take (issue 14) ---------------
# Every one is a valid image; the outcome they must get is "answered within the memory budget"
# (tests/test_hardening.py, bench/load/hostile_memory.py), not a refusal.

def wide_jpeg() -> bytes:
    """65000x3 JPEG (about 150 kB): a model's resize used to scale its short side to 256 (5.5 Gpx)."""
    row = np.linspace(0, 255, 65000).astype(np.uint8)
    return _encode(Image.fromarray(np.stack([np.stack([row, 255 - row, row], -1)] * 3)), "JPEG", quality=90)


def tall_jpeg() -> bytes:
    """3x65000: the same, standing up."""
    return _encode(Image.open(io.BytesIO(wide_jpeg())).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90)


def line_png() -> bytes:
    """1,000,000x1 PNG (a few kB): asked for a 256,000,000x256 resize and ended in MemoryError."""
    return _encode(Image.fromarray((np.arange(1_000_000) % 256).astype(np.uint8)[None, :], "L"), "PNG")


def deep_png() -> bytes:
    """8000x8000 16-bit greyscale PNG (64 Mpx, about 140 kB): a smooth ramp, so it compresses.
    Its decode used four float64 copies of the image (1.6 GB per request)."""
    ramp = np.linspace(0, 65535, 8000).astype(np.uint16)
    return _encode(Image.fromarray(np.tile(ramp, (8000, 1))), "PNG")


ROUND2: tuple[Case, ...] = (
    Case("wide-65000x3.jpg", "65000x3 JPEG", wide_jpeg, True, check=_check((65000, 3))),
    Case("tall-3x65000.jpg", "3x65000 JPEG", tall_jpeg, True, check=_check((3, 65000))),
    Case("line-1000000x1.png", "1,000,000x1 PNG", line_png, True, check=_check((1_000_000, 1)),
         content_type="image/png"),
    Case("deep-16bit-8000x8000.png", "64 Mpx 16-bit greyscale PNG", deep_png, True,
         check=_check((8000, 8000), left=((0.0, 0.5), (0, 0, 0)), right=((0.999, 0.5), (255, 255, 255))),
         content_type="image/png"),
)


# -- round 3: formats that run programs or cost more than their header says (issue 19) ---------------
# Refused by name (EPS, PDF), by frame count (100,000 pages), by an icon's real size; or accepted
# with their decode bounded (JPEG 2000 at a lower resolution level, RGBA counted at 8 B/px).

PAGES = 100_000


def looping_eps() -> bytes:
    """An EPS whose PostScript never ends: Ghostscript would spin until killed."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
            b"{ 1 pop } loop\nshowpage\n%%EOF\n")


def file_reading_eps() -> bytes:
    """An EPS that prints a server file onto the page (Ghostscript rendered it without an error)."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 200 50\n%%EndComments\n"
            b"/Courier findfont 8 scalefont setfont 10 20 moveto\n"
            b"(/etc/passwd) (r) file 100 string readstring pop show\nshowpage\n%%EOF\n")


def dos_eps() -> bytes:
    """The binary "DOS EPS" wrapper (magic C5 D0 D3 C6) around the looping PostScript."""
    ps = looping_eps()
    return b"\xc5\xd0\xd3\xc6" + struct.pack("<6I", 30, len(ps), 0, 0, 0, 0) + b"\xff\xff" + ps


def pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def _tiff_ifd(width: int, height: int, data_at: int, next_at: int, *, skip_width: bool = False) -> bytes:
    """One little-endian IFD of an 8-bit greyscale strip image."""
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, data_at), (278, 3, 1, height), (279, 4, 1, width * height)]
    if skip_width:
        tags = tags[1:]
    return (struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
            + struct.pack("<I", next_at))


def many_page_tiff(pages: int = PAGES) -> bytes:
    """A TIFF of `pages` 1x1 pages, about 10 MB for 100,000: Pillow's n_frames parsed every one."""
    ifd = len(_tiff_ifd(1, 1, 0, 0))
    first = 8 + 1                                     # header, then one shared pixel byte
    out = [b"II*\x00" + struct.pack("<I", first) + b"\x80"]
    for i in range(pages):
        at = first + i * ifd
        out.append(_tiff_ifd(1, 1, 8, at + ifd if i + 1 < pages else 0))
    return b"".join(out)


def tiff_second_page_without_width() -> bytes:
    """A TIFF whose first page (4x2 grey) is fine and whose second page lacks ImageWidth: walking
    the pages (n_frames) made Pillow raise TypeError, which crashed the build."""
    first = _tiff_ifd(4, 2, 8, 0)
    second_at = 16 + len(first)
    return (b"II*\x00" + struct.pack("<I", 16) + b"\x80" * 8 + _tiff_ifd(4, 2, 8, second_at)
            + _tiff_ifd(4, 2, 8, 0, skip_width=True))


def gif_cut_in_second_frame() -> bytes:
    """An animated GIF cut right after its second frame's image descriptor: walking the frames made
    Pillow raise IndexError. Its first frame (red) is whole."""
    first = _encode(Image.new("RGB", (80, 60), RED).convert("P"), "GIF")
    assert first.endswith(b"\x3b")                              # the trailer, replaced by frame 2
    return first[:-1] + b"\x2c" + struct.pack("<HHHHB", 0, 0, 80, 60, 0)


def rgba_png(side: int = 8000) -> bytes:
    """side x side RGBA PNG (64 Mpx at 8000, about 0.3 MB): left half transparent, right half blue."""
    return _encode(_halves((side, side), (0, 0, 0, 0), (*BLUE, 255), mode="RGBA"), "PNG", compress_level=1)


def ico_with_png(side: int = 8000) -> bytes:
    """An ICO whose directory says 256x256 while the PNG it holds is side x side."""
    png = _encode(Image.new("L", (side, side), 128), "PNG", compress_level=1)
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def small_ico() -> bytes:
    return _encode(_halves((64, 64), RED, BLUE), "ICO", sizes=[(64, 64)])


def jpeg2000(side: int = 7000, levels: int = 6) -> bytes:
    """A side x side JPEG 2000 (7000: 17 s and 2.4 GB per full decode); `levels` resolution levels
    (1: none below full size, so it cannot be decoded reduced)."""
    return _encode(_halves((side, side), RED, BLUE), "JPEG2000", irreversible=True, quality_layers=[80],
                   num_resolutions=levels)


def tiff16_rgba() -> bytes:
    """16-bit RGBA TIFF, one strip: libtiff reads it at 8 bytes a pixel."""
    arr = np.zeros((60, 80, 4), np.uint16)
    arr[:, :40] = (0xDC00, 0x1400, 0x1400, 0xFFFF)
    arr[:, 40:] = (0x1400, 0x1400, 0xDC00, 0xFFFF)
    head = b"II*\x00" + struct.pack("<I", 8)
    data_at = 8 + 2 + 11 * 12 + 4 + 8
    tags = [(256, 3, 1, 80), (257, 3, 1, 60), (258, 3, 4, data_at - 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, data_at), (277, 3, 1, 4), (278, 3, 1, 60), (279, 4, 1, arr.nbytes), (284, 3, 1, 1),
            (338, 3, 1, 2)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    return head + ifd + struct.pack("<4H", 16, 16, 16, 16) + arr.astype("<u2").tobytes()


ROUND3: tuple[Case, ...] = (
    Case("eps-loop.jpg", "looping PostScript EPS named .jpg", looping_eps, False,
         r"unsupported image format \(EPS\)", clean="not_image"),
    Case("eps-reads-file.png", "EPS that reads /etc/passwd, named .png", file_reading_eps, False,
         r"unsupported image format \(EPS\)", clean="not_image", content_type="image/png"),
    Case("dos-eps.jpg", "DOS EPS (binary header) named .jpg", dos_eps, False,
         r"unsupported image format \(EPS\)", clean="not_image"),
    Case("document.jpg", "PDF named .jpg", pdf, False, r"unsupported image format \(PDF\)", clean="not_image"),
    Case("pages-100000.tif", f"TIFF with {PAGES:,} pages (10 MB)", many_page_tiff, False,
         "more than 10,000 frames or pages", clean="not_image", content_type="image/tiff"),
    Case("page2-no-width.tif", "TIFF whose second page lacks ImageWidth", tiff_second_page_without_width, True,
         check=_check((4, 2), only=((0.5, 0.5), (128, 128, 128))), content_type="image/tiff"),
    Case("gif-cut-frame2.gif", "animated GIF cut inside its second frame", gif_cut_in_second_frame, True,
         check=_check((80, 60), first_frame=((0.5, 0.5), RED)), content_type="image/gif"),
    Case("ico-8000-png.ico", "ICO holding an 8000x8000 PNG", ico_with_png, False, "limit for icons",
         clean="not_image", content_type="image/x-icon"),
    Case("icon.ico", "64x64 ICO", small_ico, True,
         check=_check((64, 64), left=((0.1, 0.5), RED), right=((0.9, 0.5), BLUE)), content_type="image/x-icon"),
    Case("rgba16.tif", "16-bit RGBA TIFF", tiff16_rgba, True,
         check=_check((80, 60), left=((0.1, 0.5), RED), right=((0.9, 0.5), BLUE)), content_type="image/tiff"),
)
# Large files for the memory benchmark (bench/load/hostile_memory.py); slow to make (J2K: 5 s).
ROUND3_HEAVY: tuple[Case, ...] = (
    Case("rgba-8000x8000.png", "8000x8000 RGBA PNG", rgba_png, True,
         check=_check((8000, 8000), transparent=((0.1, 0.5), WHITE), opaque=((0.9, 0.5), BLUE)),
         content_type="image/png"),
    Case("j2k-7000x7000.jp2", "7000x7000 JPEG 2000", jpeg2000, True,
         check=_check(None, left=((0.1, 0.5), RED), right=((0.9, 0.5), BLUE)), content_type="image/jp2"),
)


def write_corpus(folder: Path, cases: tuple[Case, ...] = CASES) -> dict[str, Path]:
    """Write every case (the first round's, unless told) into `folder`; returns {case name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for case in cases:
        (folder / case.name).write_bytes(case.make())
        out[case.name] = folder / case.name
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    paths = write_corpus(Path(argv[0]), CASES + ROUND2 + ROUND3)
    for case in CASES + ROUND2 + ROUND3:
        verdict = "accepted" if case.accepted else f"rejected ({case.message})"
        print(f"{case.name}\t{paths[case.name].stat().st_size} B\t{verdict}\t{case.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
