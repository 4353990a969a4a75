"""Do the deep similarity maps (retrieval.explain_deep) fall on the object? Measured on the sample
library's Tux Paint photos, which are cut-outs flattened on white, so each has an object mask.

Pairs: every Tux Paint library image as the query, and each Tux Paint library image in its top 5
by effnet-cosine (the query itself left out), ranked with the index's stored vectors.
Maps: over the result, against the query's stored vector; over the query, against the result's
stored vector. Two kinds: the app's map (retrieval.explain_deep; for effnet each position's exact
share of the cosine through GeM pooling) and, for comparison, the plain cosine between the features
at each position and the other vector. Each map is upsampled (bilinear) to the part of the image the
network saw, at the resolution the build decodes.
Object mask: the pixels with any channel below WHITE, plus the white regions the object encloses
(everything not connected to the image border through near-white pixels).
Mass, in three variants (all printed; the app colours the map itself, so "positive part" of the app's
map is the headline; effnet's maps have no negative values, so it is the map as it is):
  positive part    share of sum(max(map, 0)) on the object
  above minimum    share of sum(map - min(map)) on the object (the contrast the colour scale shows)
  hottest quarter  share of the hottest 25% of the image's pixels that lie on the object
Chance: the object's share of the image area (what a flat map would put on it). The baseline is
computed in the same process, per pair, from the same masks. Target: mass >= 1.5x chance.

`python -m bench.explain_mass [--index INDEX] [--data DATA]`  (default index: bench.common.SAMPLE_INDEX,
an effnet index of the sample library, built or brought up to date first)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from retrieval.attribution import read_attribution
from retrieval.explain_deep import Features, cosine_map, decode_library_image, features
from retrieval.methods import Method
from retrieval.scoring import bootstrap_ci
from retrieval.search import LookalikeIndex

from .common import SAMPLE_INDEX, sample_effnet_index

TUX_SOURCE = "tuxpaint"   # the attribution source of the Tux Paint stamps: "tuxpaint-stamps-default"
WHITE = 235               # a pixel with every channel at or above this is background
TOP_K = 5
TARGET = 1.5
VARIANTS = ("positive part", "above minimum", "hottest quarter")
KINDS = ("app", "cosine")   # the app's map (explain_deep), the plain cosine of each position


@dataclass(frozen=True)
class Seen:
    """One library image as the network saw it: its features and the object mask of that part."""

    features: Features
    mask: np.ndarray   # (H, W) bool over the covered part of the decoded image


def object_mask(image: Image.Image) -> np.ndarray:
    """Non-white pixels, plus the white the object encloses (not reached from the border)."""
    arr = np.asarray(image.convert("RGB"))
    marks = Image.fromarray(np.where((arr < WHITE).any(axis=2), 255, 0).astype(np.uint8), "L")
    padded = Image.new("L", (marks.width + 2, marks.height + 2), 0)
    padded.paste(marks, (1, 1))
    ImageDraw.floodfill(padded, (0, 0), 128, thresh=0)
    return np.asarray(padded)[1:-1, 1:-1] != 128


def seen(index: LookalikeIndex, row: int) -> Seen:
    image = decode_library_image(index, row)
    feats = features(index, image)
    left, top, right, bottom = feats.box
    w, h = image.size
    crop = image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
    return Seen(feats, object_mask(crop))


def upsampled(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.asarray(Image.fromarray(grid.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR))


def shares(grid: np.ndarray, mask: np.ndarray) -> list[float]:
    """The map's share on the object, per variant (VARIANTS' order)."""
    up = upsampled(grid, mask.shape)
    out = []
    for weights in (np.maximum(up, 0.0), up - up.min()):
        total = float(weights.sum())
        out.append(float(weights[mask].sum()) / total if total > 0 else float(mask.mean()))
    hot = up >= np.quantile(up, 0.75)
    out.append(float((hot & mask).sum()) / max(1, int(hot.sum())))
    return out


def tux_rows(index: LookalikeIndex, data: Path) -> list[int]:
    records = read_attribution(data).records
    files = {r["file"] for r in records if str(r.get("source", "")).startswith(TUX_SOURCE) and "file" in r}
    return [i for i, rel in enumerate(index.rels) if rel in files]


def pairs(index: LookalikeIndex, rows: list[int], source: str) -> list[tuple[int, int]]:
    """(query row, result row) for each Tux Paint result in a Tux Paint query's top 5."""
    vectors = np.asarray(index.matrix(source).data)[rows]
    ranked = index.rank(vectors, Method(source, "cosine"), TOP_K, [{r} for r in rows])
    tux = set(rows)
    return [(q, r) for q, hits in zip(rows, ranked) for r, _ in hits if r in tux]


def measure(index: LookalikeIndex, data: Path) -> dict[str, np.ndarray]:
    """Per pair: chance and each variant's share, for the result's map and the query's map."""
    source = index.manifest.embedder.name if index.manifest.embedder else None
    if source is None:
        sys.exit("this index has no embeddings; build it with a model")
    rows = tux_rows(index, data)
    if not rows:
        sys.exit(f"no Tux Paint images in the library at {data} (by its ATTRIBUTION.json)")
    stored = np.asarray(index.matrix(source).data, np.float32)
    cache: dict[int, Seen] = {}
    out: dict[str, list] = {"pairs": [], "result chance": [], "query chance": []}
    out.update({f"{side} {kind}": [] for side in ("result", "query") for kind in KINDS})
    for q, r in pairs(index, rows, source):
        for row in (q, r):
            if row not in cache:
                cache[row] = seen(index, row)
        sq, sr = cache[q], cache[r]
        out["pairs"].append((q, r))
        out["result chance"].append(float(sr.mask.mean()))
        out["query chance"].append(float(sq.mask.mean()))
        out["result app"].append(shares(sr.features.map_against(stored[q]), sr.mask))
        out["query app"].append(shares(sq.features.map_against(stored[r]), sq.mask))
        out["result cosine"].append(shares(cosine_map(sr.features.local, stored[q]), sr.mask))
        out["query cosine"].append(shares(cosine_map(sq.features.local, stored[r]), sq.mask))
    return {k: np.asarray(v) for k, v in out.items()}


def ci(values: np.ndarray) -> str:
    lo, hi = bootstrap_ci(values)
    return f"{values.mean():.3f} [{lo:.3f}, {hi:.3f}]"


def report(m: dict[str, np.ndarray], tux: int, kind: str) -> list[str]:
    lines = [f"{len(m['pairs'])} pairs: Tux Paint query -> Tux Paint result in its top {TOP_K} by effnet-cosine "
             f"({tux} Tux Paint library images as queries, the query itself left out)",
             "mean over pairs with a 95% bootstrap interval (1,000 resamples of the pairs)", "",
             "| map | over | mass | share on the object | chance (object's area share) | ratio of means "
             "| mean per-pair ratio |", "|---|---|---|---|---|---|---|"]
    names = {"app": f"app ({kind})", "cosine": "plain cosine"}
    for map_kind in KINDS:
        for side in ("result", "query"):
            chance = m[f"{side} chance"]
            for j, variant in enumerate(VARIANTS):
                share = m[f"{side} {map_kind}"][:, j]
                lines.append(f"| {names[map_kind]} | {side} | {variant} | {ci(share)} | {ci(chance)} "
                             f"| {share.mean() / chance.mean():.2f}x | {ci(share / chance)}x |")
    share, chance = m["result app"][:, 0], m["result chance"]
    of_means, per_pair = share.mean() / chance.mean(), float((share / chance).mean())
    lines += ["", "headline: the app's map over the result, positive part (the map as the app colours it): "
              f"ratio of the means {of_means:.2f}x chance ({'meets' if of_means >= TARGET else 'misses'} the "
              f"{TARGET}x target); mean of the per-pair ratios {per_pair:.2f}x "
              f"({'meets' if per_pair >= TARGET else 'misses'} it). The ratio of means weighs every pair's "
              "pixels alike; the per-pair mean gives more weight to pairs with small objects."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=None,
                    help="an effnet (or CLIP) index of the sample library (default: an effnet index of data/ "
                         f"in {SAMPLE_INDEX}, built on first use and brought up to date on later ones)")
    ap.add_argument("--data", type=Path, default=None, help="the library root (default: as the index records)")
    args = ap.parse_args(argv)
    index_dir = sample_effnet_index(args.index)
    index = LookalikeIndex.open(index_dir, data_dir=args.data)
    data = index.data_dir
    measured = measure(index, data)
    kind = str(getattr(index.embedder, "region_kind", "cosine"))
    print(f"index {index_dir} ({len(index.rels)} images), library {data}\n")
    print("\n".join(report(measured, len(tux_rows(index, data)), kind)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
