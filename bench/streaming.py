"""Streaming: building an index holds index rows in memory, never the decoded library.

A synthetic library of large JPEGs (side x 3/4 side pixels, smooth random content) is indexed
with pixels + effnet + Chroma at two sizes, each build in a fresh process. The decoded library
grows by side * 3/4 side * 3 bytes per image; the build's peak memory grows only by what the index
keeps per image (a pixel row, an embedding, Chroma's entries), because images are decoded in a
bounded pipeline (a few per worker thread for the pixels, two batches for the model).

    python -m bench.streaming [--sizes 256 1024] [--side 2048]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.atomic import write_bytes
from retrieval.indexing import build_index

from .common import add_check, add_table, in_child, print_result, result, stopwatch

CACHE = Path(tempfile.gettempdir()) / "lookalike-bench" / "streaming"
CLASSES = ("a", "b", "c", "d")


def make_library(root: Path, n: int, side: int) -> int:
    """n JPEGs of side x 3/4 side under root/train/<class>/ (kept between runs); returns bytes on disk."""
    rng = np.random.default_rng(0)
    h = side * 3 // 4
    total = 0
    for i in range(n):
        path = root / "train" / CLASSES[i % len(CLASSES)] / f"{i:05d}.jpg"
        if not path.is_file():
            small = rng.integers(0, 256, size=(h // 64 + 1, side // 64 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((side, h), Image.Resampling.BICUBIC)
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            write_bytes(path, buf.getvalue())
        total += path.stat().st_size
    return total


def build_here(lib: str, index: str, model: str) -> dict[str, float]:
    t0 = time.perf_counter()
    build_index(Path(lib), Path(index), pixel_size=32, model=model, evaluate=False)
    return {"seconds": time.perf_counter() - t0}


def run(sizes: tuple[int, ...] = (256, 1024), side: int = 2048, model: str = "effnet", cache: str | None = None) -> dict:
    sizes = tuple(sorted(sizes))
    cache_dir = Path(cache) if cache else CACHE
    h = side * 3 // 4
    res = result("streaming", "Streaming: index-build memory against the size of the decoded library",
                 {"sizes": list(sizes), "side": side, "model": model})
    rows, builds = [], {}
    with stopwatch(res), tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            lib = cache_dir / f"{side}px-{n}"
            on_disk = make_library(lib, n, side)
            b = in_child("streaming", "build_here", lib=str(lib), index=str(Path(tmp) / f"i{n}"), model=model)
            decoded_mb = n * side * h * 3 / 2**20
            builds[n] = {**b, "decoded_mb": decoded_mb, "jpeg_mb": on_disk / 2**20}
            rows.append([n, f"{side}x{h}", f"{on_disk / 2**20:.0f}", f"{decoded_mb:,.0f}", f"{b['seconds']:.0f}",
                         f"{b['cpu_s']:.0f}", f"{b['peak_mb']:.0f}"])
    add_table(res, f"`build_index` with pixels (32x32) + {model} + Chroma, each build in a fresh process; peak is "
                   "that process's resident peak (Python, torch, the model and Chroma included).",
              ["images", "image size", "JPEG on disk (MB)", "decoded library (MB)", "build (s)", "CPU (s)",
               "peak RSS (MB)"], rows)
    lo, hi = sizes[0], sizes[-1]
    per_image_mb = (builds[hi]["peak_mb"] - builds[lo]["peak_mb"]) / max(1, hi - lo)
    decoded_per_image = side * h * 3 / 2**20
    res["figures"] = {"builds": {str(k): v for k, v in builds.items()}, "peak_mb_per_image": per_image_mb}
    bounded = builds[hi]["peak_mb"] < builds[hi]["decoded_mb"] / 2 and per_image_mb < decoded_per_image / 10
    add_check(res, "streaming: build memory grows with index rows, not decoded images", "bounded",
              f"peak +{1024 * per_image_mb:.0f} KB per image vs {decoded_per_image:.1f} MB decoded per image; "
              f"{builds[hi]['peak_mb']:.0f} MB peak for a {builds[hi]['decoded_mb'] / 1024:.1f} GB decoded library",
              bounded)
    if per_image_mb > 0:
        ram_gb = 24
        res["notes"].append(f"At +{1024 * per_image_mb:.0f} KB per image, a library of these photos whose decoded size "
                            f"is {ram_gb} GB ({int(ram_gb * 1024 / decoded_per_image):,} images) would peak near "
                            f"{(builds[hi]['peak_mb'] + per_image_mb * (ram_gb * 1024 / decoded_per_image - hi)) / 1024:.1f} GB "
                            "(linear extrapolation of the two builds).")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--side", type=int, default=2048)
    args = ap.parse_args()
    print_result(run(tuple(args.sizes), args.side))


if __name__ == "__main__":
    main()
