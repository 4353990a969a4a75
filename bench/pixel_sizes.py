"""Which pixel size? P@5, mAP and query time per size on the sample library (the README's table).

    python bench/pixel_sizes.py [--data data] [--sizes 8 16 32 64 128 448]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine_info, median_ms, sample_library, timed

from retrieval.evaluate import evaluate_index
from retrieval.indexing import build_index
from retrieval.search import LookalikeIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 448])
    args = ap.parse_args()
    data = sample_library(args.data)
    query = sorted((data / "test").rglob("*.jpg"))[0]
    print(f"# pixel size table\n{machine_info()}\n")
    print("| size | best metric | P@5 | mAP | pixel-l1 P@5 / mAP | pixel-corr P@5 / mAP | median query, pixel-l1 (ms) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            idx = Path(tmp) / str(size)
            build_index(data, idx, pixel_size=size, model="none", evaluate=False)
            index = LookalikeIndex.open(idx)
            rep = evaluate_index(index)["methods"]
            best = max(rep, key=lambda m: rep[m]["map"])
            ms = median_ms(timed(lambda: index.search(query, "pixel-l1", 5), repeat=15))
            l1, corr = rep["pixel-l1"], rep["pixel-corr"]
            print(f"| {size} | {best} | {rep[best]['p@5']:.3f} | {rep[best]['map']:.3f} | "
                  f"{l1['p@5']:.3f} / {l1['map']:.3f} | {corr['p@5']:.3f} / {corr['map']:.3f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
