"""Decoding and preprocessing per image, beside the model: the models' own per-image transform
(baseline) against ours (JPEG draft decoding + the PIL steps per image, ToTensor and Normalize
once per batch), on the sample photos and on 12 Mpx phone-sized JPEGs.

Both sides start from the file and end with the normalised float batch the model takes; one torch
thread, so the figure is CPU time per image (what decoding takes away from the model on a small
machine). Agreement: cosine between the vectors of the two paths, since draft decoding is a
different (DCT-domain) downscale of the same photo.

    python -m bench.decode [--models effnet clip] [--photos 96] [--big 12]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from retrieval.atomic import write_bytes
from retrieval.images import is_image_name, load_image

from .common import add_table, fmt_ratio, print_result, result, sample_library, stopwatch, timed

BIG = (4000, 3000)   # a 12 Mpx phone photo
CACHE = Path(tempfile.gettempdir()) / "lookalike-bench" / "decode"


def make_embedder(kind: str):
    if kind == "clip":
        from retrieval.embedders.openclip import OpenClipEmbedder
        return OpenClipEmbedder.random_init("ViT-B-32", device="cpu")
    from retrieval.embedders.backbone import EffnetEmbedder
    return EffnetEmbedder(device="cpu")


def big_jpegs(photos: list[Path], n: int, out: Path) -> list[Path]:
    """Sample photos scaled up to 4000x3000 and saved at quality 90 (kept between runs)."""
    paths = []
    for i, src in enumerate(photos[:n]):
        path = out / f"big{i:03d}.jpg"
        if not path.is_file():
            buf = io.BytesIO()
            load_image(src).resize(BIG, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
            write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def per_image_ms(fn: Callable[[], object], n: int, repeat: int) -> float:
    return 1000 * statistics.median(timed(fn, repeat=repeat, warmup=1)) / n


def run(models: tuple[str, ...] = ("effnet", "clip"), photos: int = 96, big: int = 12, repeats: int = 3,
        data: str | None = None) -> dict:
    lib = sample_library(data)
    files = sorted(p for p in (lib / "train").rglob("*") if p.is_file() and is_image_name(p.name)
                   and p.suffix.lower() in (".jpg", ".jpeg"))
    CACHE.mkdir(parents=True, exist_ok=True)
    sets = {f"sample photos ({photos}, mostly 300-500 px)": files[:photos],
            f"12 Mpx JPEGs ({big}, {BIG[0]}x{BIG[1]})": big_jpegs(files, big, CACHE)}
    res = result("decode", "Decoding and preprocessing per image: the model's transform versus ours",
                 {"models": list(models), "photos": photos, "big": big, "repeats": repeats})
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with stopwatch(res):
            for kind in models:
                emb = make_embedder(kind)
                for label, paths in sets.items():
                    def theirs() -> torch.Tensor:
                        return torch.stack([emb.preprocess(load_image(p)) for p in paths])

                    def ours() -> torch.Tensor:
                        return emb.split.normalise(torch.stack([emb._decode(p) for p in paths]), torch.float32)

                    base = per_image_ms(theirs, len(paths), repeats)
                    fast = per_image_ms(ours, len(paths), repeats)
                    a, b = emb._embed(theirs()), emb._embed(ours())
                    cos = np.sum(a * b, axis=1)
                    rows.append([kind, label, f"{base:.1f}", f"{fast:.1f}", fmt_ratio(base / fast),
                                 f"{cos.mean():.4f} (min {cos.min():.4f})"])
                    res["figures"][f"{kind}/{label.split(' (')[0]}"] = {"baseline_ms": base, "ours_ms": fast,
                                                                        "cos_mean": float(cos.mean())}
                del emb
    finally:
        torch.set_num_threads(threads)
    add_table(res, "Milliseconds per image from file to normalised tensor, one thread (median of "
                   f"{repeats} passes). Baseline: full decode and the model's own per-image transform; ours: "
                   "JPEG draft decoding, the PIL steps per image, one scale-and-shift per batch.",
              ["model", "images", "baseline (ms)", "ours (ms)", "speed-up", "cosine of the vectors"], rows)
    res["notes"].append("The 12 Mpx files are sample photos scaled up (smoother than camera photos, so "
                        "their JPEGs decode a little faster than real ones of that size).")
    if "clip" in models:
        res["notes"].append("CLIP has random weights here (none can be downloaded), and random-weight features "
                            "hardly move with small pixel changes: its agreement column says little; the "
                            "backbone's (real ImageNet weights) is the one to read.")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["effnet", "clip"])
    ap.add_argument("--photos", type=int, default=96)
    ap.add_argument("--big", type=int, default=12)
    args = ap.parse_args()
    print_result(run(tuple(args.models), args.photos, args.big))


if __name__ == "__main__":
    main()
