"""A seeded, bounded fuzzer for the one decoder (issue 19, item 6): mutated files of every allowed
format either decode to a valid RGB image or raise ImageError, never anything else.

Small valid files of each format (several variants: progressive JPEG, MPO, 16-bit and palette PNG,
APNG, animated GIF and WebP, LZW and multi-page TIFF, bitmap and PNG icons, ...) are mutated with a
fixed seed: bit flips, truncation, inserted and deleted bytes, header fields set to extreme values,
a slice copied over another, and for PNG the chunk CRCs fixed afterwards so the damage reaches
the decoder. FUZZ_FILES files per format; the counts per format are printed (and written to
$LOOKALIKE_FUZZ_REPORT as JSON when set). A failing file is kept under the test's tmp_path.

Fails before round 3: malformed GIF and TIFF files made Pillow raise IndexError, TypeError and
friends, which load_image let through (and QOI/other formats' decoders were reachable).
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import zlib
from collections import Counter
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import ImageError
from retrieval.images import check_image, load_image

SEED = 19
FUZZ_FILES = int(os.environ.get("LOOKALIKE_FUZZ_FILES", "1000"))
COUNTS: dict[str, Counter] = {}


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _picture(size: tuple[int, int] = (48, 32), mode: str = "RGB") -> Image.Image:
    """A small picture with edges and a gradient, so every codec has something to code."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], -1).astype(np.uint8)
    rgb[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = (250, 10, 10)
    img = Image.fromarray(rgb, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def _frames(n: int, mode: str = "RGB") -> list[Image.Image]:
    return [_picture((40, 30), mode).rotate(30 * i) for i in range(n)]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "JPEG": lambda: [_save(_picture(), "JPEG", quality=80), _save(_picture(), "JPEG", progressive=True),
                     _save(_picture(mode="L"), "JPEG"), _save(_picture(mode="CMYK"), "JPEG")],
    "MPO": lambda: [_save(_picture(), "MPO", save_all=True, append_images=[_picture().rotate(90)])],
    "PNG": lambda: [_save(_picture(), "PNG"), _save(_picture(mode="RGBA"), "PNG"),
                    _save(_picture(mode="P"), "PNG", transparency=0),
                    _save(Image.fromarray((np.arange(48 * 32, dtype=np.uint16) * 40).reshape(32, 48)), "PNG"),
                    _save(_frames(3)[0], "PNG", save_all=True, append_images=_frames(3)[1:])],
    "WEBP": lambda: [_save(_picture(), "WEBP", quality=70), _save(_picture(mode="RGBA"), "WEBP", lossless=True),
                     _save(_frames(3)[0], "WEBP", save_all=True, append_images=_frames(3)[1:])],
    "GIF": lambda: [_save(_picture(mode="P"), "GIF"),
                    _save(_frames(4, "P")[0], "GIF", save_all=True, append_images=_frames(4, "P")[1:],
                          duration=40, loop=0, comment=b"fuzz")],
    "BMP": lambda: [_save(_picture(), "BMP"), _save(_picture(mode="P"), "BMP"), _save(_picture(mode="1"), "BMP")],
    "TIFF": lambda: [_save(_picture(), "TIFF"), _save(_picture(), "TIFF", compression="tiff_lzw"),
                     _save(_picture(mode="RGBA"), "TIFF", compression="tiff_adobe_deflate"),
                     _save(_frames(3)[0], "TIFF", save_all=True, append_images=_frames(3)[1:]),
                     _save(_picture(mode="I;16"), "TIFF")],
    "AVIF": lambda: [_save(_picture(), "AVIF", quality=50, speed=10),
                     _save(_picture(mode="RGBA"), "AVIF", quality=50, speed=10)],
    "JPEG2000": lambda: [_save(_picture(), "JPEG2000"), _save(_picture(), "JPEG2000", no_jp2=True, irreversible=True),
                         _save(_picture(mode="L"), "JPEG2000", num_resolutions=2)],
    "ICO": lambda: [_save(_picture(), "ICO", sizes=[(32, 32), (16, 16)]),
                    _save(_picture(), "ICO", sizes=[(32, 32)], bitmap_format="bmp")],
}

_VALUES = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF, 0x8000, 0x7FFFFFFF, 0xFFFFFFFF)


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so a mutation inside a chunk reaches the decoder."""
    out, pos = bytearray(data[:8]), 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            out += data[pos:]
            return bytes(out)
        out += data[pos:end] + struct.pack(">I", zlib.crc32(data[pos + 4:end]) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out + data[pos:])


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random mutations of a file's bytes."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        at = rng.randrange(len(buf)) if buf else 0
        if op == 0:                                       # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:                                     # truncation
            del buf[rng.randrange(1, max(2, len(buf))):]
        elif op == 2:                                     # inserted bytes
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3:                                     # deleted bytes
            del buf[at:at + rng.randint(1, 16)]
        elif op == 4:                                     # a header field set to an extreme value
            width = rng.choice((1, 2, 4))
            value = rng.choice(_VALUES + (rng.getrandbits(32),)) & ((1 << 8 * width) - 1)
            i = rng.randrange(max(1, min(len(buf), 128) - width))
            buf[i:i + width] = value.to_bytes(width, rng.choice(("little", "big")))
        else:                                             # a slice copied over another
            n = rng.randint(1, 64)
            src = rng.randrange(max(1, len(buf) - n))
            buf[at:at + n] = buf[src:src + n]
    out = bytes(buf)
    return _fix_png_crcs(out) if out[:8] == b"\x89PNG\r\n\x1a\n" and rng.random() < 0.6 else out


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    lines = [f"{fmt}: {c['files']} files, {c['decoded']} decoded, {c['refused']} ImageError, {c['other']} other"
             for fmt, c in sorted(COUNTS.items())]
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\n[fuzz seed {SEED}] " + "; ".join(lines))
    if os.environ.get("LOOKALIKE_FUZZ_REPORT"):
        with open(os.environ["LOOKALIKE_FUZZ_REPORT"], "w") as f:
            json.dump({fmt: dict(c) for fmt, c in COUNTS.items()}, f, indent=1)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_mutated_files_decode_or_raise_image_error(fmt, tmp_path):
    seeds = SEEDS[fmt]()
    for data in seeds:                     # the unmutated seeds are valid files of that format
        assert Image.open(io.BytesIO(data)).format == fmt
        assert load_image(data).mode == "RGB"
    rng = random.Random(f"{SEED}-{fmt}")
    counts = COUNTS.setdefault(fmt, Counter())
    other = []
    for i in range(FUZZ_FILES):
        data = mutate(seeds[i % len(seeds)], rng)
        counts["files"] += 1
        try:
            if i % 3 == 2:
                w, h, _ = check_image(data, name=f"{fmt}-{i}")
                assert w >= 1 and h >= 1
            else:
                img = load_image(data, name=f"{fmt}-{i}", reduce_to=16 if i % 3 else None)
                arr = np.asarray(img)
                assert img.mode == "RGB" and arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) >= 1
            counts["decoded"] += 1
        except ImageError as exc:
            assert str(exc).startswith(f"{fmt}-{i}: ")
            counts["refused"] += 1
        except Exception as exc:   # noqa: BLE001 - what the fuzzer is looking for
            counts["other"] += 1
            (tmp_path / f"{fmt}-{i}.bin").write_bytes(data)
            other.append(f"{fmt}-{i}: {type(exc).__name__}: {exc}")
    assert not other, f"{len(other)} files raised other than ImageError (kept in {tmp_path}):\n" + "\n".join(other[:20])
