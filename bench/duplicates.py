"""Near-duplicate thresholds: precision and recall of the groups on a synthetic set (sample library).

    python -m bench.duplicates [--data data] [--photos 100]

Each of `photos` sample-library photos (seeded pick) gets four copies: resized to half, recompressed
at JPEG quality 30, cropped by 10% (the central 90% of each side) and brightened by 20%. The
other photos of the same classes are the distractors (same kind of thing, different photo). A
true group is one photo and its four copies. Scores are pairwise (clustering) precision and recall:
a pair counts when both images land in one predicted group. Features: the offline effnet
embeddings (what `duplicates` uses on an effnet index) and the pHash of 32x32 thumbnails (what it
uses on a pixel-only index, and what `clean --near-duplicates` uses).
"""
from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from retrieval.duplicates import DEFAULT_THRESHOLDS, ZOOMS, group_vectors, normalised, pair_scores, phash_features
from retrieval.images import load_image, resize_pixels
from retrieval.library import scan_split

from .common import add_check, add_table, cli, result, sample_library

THRESHOLDS = {"effnet": (0.76, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.94),
              "phash": (0.80, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94),
              "phash-plain": (0.80, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94)}
WHAT = {"effnet": "effnet embeddings (cosine)",
        "phash": f"pHash of 32x32 thumbnails, with zoomed variants {ZOOMS} (what a pixel-only index uses)",
        "phash-plain": "plain pHash, no zoomed variants (for comparison)"}
TARGET_P, TARGET_R = 0.95, 0.90


def variants(img: Image.Image) -> dict[str, bytes]:
    """The four near-duplicate copies of one photo, encoded as files would be."""
    w, h = img.size

    def png(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    jpeg = io.BytesIO()
    img.save(jpeg, "JPEG", quality=30)
    dx, dy = round(w * 0.05), round(h * 0.05)
    return {"half.png": png(img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)),
            "q30.jpg": jpeg.getvalue(),
            "crop.png": png(img.crop((dx, dy, w - dx, h - dy))),
            "bright.png": png(ImageEnhance.Brightness(img).enhance(1.2))}


def synthetic_set(lib: Path, out: Path, photos: int, seed: int = 0) -> tuple[list[Path], list[list[int]]]:
    """Write the set under `out`: (every file, true groups as row lists)."""
    items = scan_split(lib, "train") + scan_split(lib, "test")
    picked = random.Random(seed).sample(items, min(photos, len(items)))
    classes = {it.label for it in picked}
    picked_rels = {it.rel for it in picked}
    paths: list[Path] = []
    groups: list[list[int]] = []
    for n, it in enumerate(picked):
        folder = out / f"{n:03d}"
        folder.mkdir(parents=True)
        original = folder / ("original" + Path(it.rel).suffix)
        original.write_bytes(it.path(lib).read_bytes())
        rows = [len(paths)]
        paths.append(original)
        for name, data in variants(load_image(original)).items():
            (folder / name).write_bytes(data)
            rows.append(len(paths))
            paths.append(folder / name)
        groups.append(rows)
    distractors = [it for it in items if it.label in classes and it.rel not in picked_rels]
    for it in distractors:
        paths.append(it.path(lib))
    return paths, groups


def features(paths: list[Path]) -> dict[str, tuple[list[np.ndarray], bool]]:
    from retrieval.embedders import load_embedder

    embedder = load_embedder("effnet")
    vectors = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    for ok, vecs in embedder.encode_files(paths, batch_size=32):
        vectors[list(ok)] = vecs
    grey = np.stack([np.asarray(resize_pixels(load_image(p), 32), dtype=np.float32) @ [0.299, 0.587, 0.114]
                     for p in paths])
    return {"effnet": ([normalised(vectors)], False), "phash": (phash_features(grey), True),
            "phash-plain": (phash_features(grey)[:1], True)}


def run(data: str | None = None, photos: int = 100, seed: int = 0) -> dict:
    lib = sample_library(data)
    res = result("duplicates", "Near-duplicates: precision and recall of the groups per threshold (synthetic set)",
                 {"data": str(lib), "photos": photos, "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        paths, truth = synthetic_set(lib, Path(tmp), photos, seed)
        feats = features(paths)
    n_dup = sum(len(g) for g in truth)
    res["figures"] = {"images": len(paths), "groups": len(truth), "distractors": len(paths) - n_dup}
    for kind, (unit, as_hash) in feats.items():
        default_t = DEFAULT_THRESHOLDS.get(kind)
        rows = []
        for t in THRESHOLDS[kind]:
            groups = group_vectors(unit, t, as_hash=as_hash)
            p, r = pair_scores([g.rows for g in groups], truth)
            default = " (default)" if default_t is not None and abs(t - default_t) < 1e-9 else ""
            rows.append([f"{t:.2f}{default}", len(groups), f"{p:.3f}", f"{r:.3f}"])
            res["figures"][f"{kind}@{t:.2f}"] = {"precision": p, "recall": r, "groups": len(groups)}
        add_table(res, f"{WHAT[kind]}: {len(paths)} images ({len(truth)} photos x 5 + {len(paths) - n_dup} "
                       "distractors of the same classes); pairwise precision / recall of the predicted groups.",
                  ["threshold", "groups found", "precision", "recall"], rows)
        if default_t is None:
            continue
        d = res["figures"][f"{kind}@{default_t:.2f}"]
        add_check(res, f"{kind} at the default threshold {default_t:.2f}",
                  f"precision >= {TARGET_P}, recall >= {TARGET_R}",
                  f"precision {d['precision']:.3f}, recall {d['recall']:.3f}",
                  d["precision"] >= TARGET_P and d["recall"] >= TARGET_R)
    return res


if __name__ == "__main__":
    cli(run)
