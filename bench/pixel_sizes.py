"""Which pixel size? P@5, mAP and query time per size on the sample library (the README's table).

    python -m bench.pixel_sizes [--data data] [--sizes 8 16 32 64 128 448]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from retrieval.evaluate import evaluate_index
from retrieval.indexing import build_index
from retrieval.search import LookalikeIndex

from .common import (add_table, fmt_ms, machine_info, median_ms, print_result, result, sample_library,
                     stopwatch, timed)

SIZES = (8, 16, 32, 64, 128, 448)


def run(data: str | None = None, sizes: tuple[int, ...] = SIZES, repeat: int = 15) -> dict:
    lib = sample_library(data)
    query = sorted((lib / "test").rglob("*.jpg"))[0]
    res = result("pixel_sizes", "Pixel size: retrieval quality and query time per size (sample library)",
                 {"data": str(lib), "sizes": list(sizes), "repeat": repeat})
    rows = []
    with stopwatch(res), tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            idx = Path(tmp) / str(size)
            build_index(lib, idx, pixel_size=size, model="none", evaluate=False)
            index = LookalikeIndex.open(idx)
            rep = evaluate_index(index)["methods"]
            best = max(rep, key=lambda m: rep[m]["map"])
            ms = median_ms(timed(lambda: index.search(query, "pixel-l1", 5), repeat=repeat))
            l1, corr = rep["pixel-l1"], rep["pixel-corr"]
            rows.append([size, best, f"{rep[best]['p@5']:.3f}", f"{rep[best]['map']:.3f}",
                         f"{l1['p@5']:.3f} / {l1['map']:.3f}", f"{corr['p@5']:.3f} / {corr['map']:.3f}", fmt_ms(ms)])
            res["figures"][str(size)] = {"best": best, "map": rep[best]["map"], "pixel_l1_ms": ms}
    add_table(res, f"Test split as queries against the train split; query time is the median of {repeat} "
                   "`pixel-l1` searches (k=5).",
              ["size", "best metric", "P@5", "mAP", "pixel-l1 P@5 / mAP", "pixel-corr P@5 / mAP",
               "median query, pixel-l1 (ms)"], rows)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = ap.parse_args()
    print(machine_info())
    print_result(run(args.data, tuple(args.sizes)))


if __name__ == "__main__":
    main()
