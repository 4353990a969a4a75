"""What the library maps cost (retrieval.projection, retrieval.map_figure): at index time the PCA,
the t-SNE fit and the neighbour agreement, with peak memory; at query time loading the stored map,
placing a query (one search, no refit) and drawing the figure; ratios against the fit in the same
process (load vs fit, placement vs a refit).

Vectors at Fashion-MNIST scale (--n, up to 60,000 train images): the pixel source is the real
pixels as the index stores them at 28x28 (grey in three channels, uint8); the deep source is the
stand-in of bench.reciprocal_cost (the same images through a fixed random 784 -> 1280 layer with
ReLU, unit rows), because embedding 60,000 images with the backbone takes hours on 2 cores.
Queries: the first test images. First, the whole build step (retrieval.projection.build_maps, both
sources, into a temporary folder) on a built index's own vectors, fitted and then reused: --index's,
or by default an effnet index of the sample library in bench.common.SAMPLE_INDEX (built on first use,
brought up to date on later ones).

    python -m bench.map_cost [--n 2000 10000 60000] [--index INDEX] [--queries 20]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval import atomic
from retrieval.manifest import array_checksum
from retrieval.map_figure import map_figure, point_at
from retrieval.metrics import PreparedMatrix, top_k
from retrieval.projection import (PLACE_NEIGHBOURS, LibraryMap, Placed, fit_map, map_input, measure, place,
                                  search_metric)

from .common import SAMPLE_INDEX, PeakMemory, sample_effnet_index


def fashion(n: int, queries: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """(library vectors per source, query vectors per source, labels) for the first n train images."""
    from collect.fashion_mnist import load_split

    from .reciprocal_cost import fashion_vectors
    train, labels = load_split("train")
    test, _ = load_split("test")

    def rgb(x: np.ndarray) -> np.ndarray:
        return np.repeat(x[..., None], 3, axis=-1).reshape(len(x), -1)
    lib = {"pixel": rgb(train[:n]), "effnet": fashion_vectors("train", n)}
    qs = {"pixel": rgb(test[:queries]), "effnet": fashion_vectors("test", queries)}
    return lib, qs, labels[:n].astype(str)


def timed(fn, *args):
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        out = fn(*args)
    return out, time.perf_counter() - t0, mem.peak_mb


def source_cost(source: str, data: np.ndarray, queries: np.ndarray, labels: np.ndarray,
                folder: Path) -> tuple[LibraryMap, Placed]:
    """Fit, measure, store, load and place for one source; prints one table row."""
    reduced, t_pca, m_pca = timed(map_input, data, source)
    xy, t_fit, m_fit = timed(fit_map, reduced, len(data) >= 10_000)
    shares, t_agree, m_agree = timed(measure, source, data, xy, labels)
    path = folder / f"map-{source}.npy"
    atomic.save_npy(path, xy)
    want = array_checksum(xy)
    t0 = time.perf_counter()
    loaded = np.load(path)
    assert array_checksum(loaded) == want   # what load_maps checks
    t_load = time.perf_counter() - t0
    matrix, metric = PreparedMatrix(data), search_metric(source)
    higher = metric == "cosine"
    t0 = time.perf_counter()
    placed = []
    for q in queries:   # the search's ranking, then the median of the nearest rows' points
        rows = top_k(matrix.scores(q, metric), PLACE_NEIGHBOURS, higher)
        placed.append(Placed(source, place(loaded, list(rows), set()), list(rows[:5])))
    t_place = (time.perf_counter() - t0) / len(queries)
    refit = t_pca + t_fit
    print(f"| {source} | {len(data):,} | {data.shape[1]} | {t_pca:.1f} | {t_fit:.1f} | {t_agree:.1f} | "
          f"{max(m_pca, m_fit, m_agree):,.0f} | {path.stat().st_size / 2**20:.2f} | {1000 * t_load:.1f} | "
          f"{1000 * t_place:.1f} | {refit / t_load:,.0f}x | {refit / t_place:,.0f}x | "
          f"{shares[0]:.3f} / {shares[1]:.3f} ({shares[2]:,}) |", flush=True)
    return LibraryMap(source, source, loaded, shares[0], shares[1], shares[2]), placed[0]


def figure_cost(maps: list[LibraryMap], labels: np.ndarray, placed: list[Placed]) -> None:
    t0 = time.perf_counter()
    image, geometry = map_figure(maps, list(labels))
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    map_figure(maps, list(labels), placed)
    t_placed = time.perf_counter() - t0
    x, y = geometry.panels[0].points[0]
    t0 = time.perf_counter()
    for _ in range(100):
        point_at(geometry, float(x), float(y))
    t_click = (time.perf_counter() - t0) / 100
    print(f"\nfigure of {len(labels):,} points per panel ({image.size[0]}x{image.size[1]} px): "
          f"{t_base:.2f} s, {t_placed:.2f} s with a placed query; a click -> row {1000 * t_click:.2f} ms", flush=True)


def sample(index_dir: Path) -> None:
    """The build step as the index build runs it, on a built index's vectors: a first fit, then a reuse."""
    from retrieval.projection import build_maps
    from retrieval.search import LookalikeIndex
    index = LookalikeIndex.open(index_dir)
    emb = index.matrix(index.sources()[-1]).data if index.manifest.embedder else None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        record = build_maps(Path(tmp), index.manifest, None, "fit", np.asarray(index.pixels.data), emb)
        t_fit = time.perf_counter() - t0
        index.manifest.maps = record
        index.manifest.checksums.update({f: array_checksum(np.load(Path(tmp) / f)) for f in record.files()})
        t0 = time.perf_counter()
        build_maps(Path(tmp), index.manifest, index.manifest, "reuse", np.asarray(index.pixels.data), emb)
        t_reuse = time.perf_counter() - t0
    print(f"\n{index_dir}: {len(index.rels)} images, sources {', '.join(record.sources)}: build_maps "
          f"{t_fit:.2f} s when fitting (openTSNE import included), {t_reuse:.2f} s when reused", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[], help="Fashion-MNIST library sizes, e.g. 2000 60000")
    ap.add_argument("--index", type=Path, default=None,
                    help="time the build step on this index's vectors (default: an effnet index of the sample "
                         f"library in {SAMPLE_INDEX}, built on first use and brought up to date on later ones)")
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args(argv)
    sample(sample_effnet_index(args.index))
    for n in args.n:
        lib, qs, labels = fashion(n, args.queries)
        print(f"\nFashion-MNIST, {n:,} train images; times in wall seconds, memory = peak RSS of the process\n\n"
              "| source | images | dims | PCA-50 (s) | t-SNE fit (s) | agreement (s) | peak RSS (MB) | map file (MiB) | "
              "load (ms) | place a query (ms) | refit / load | refit / place | agreement full / map (counted) |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            results = [source_cost(s, lib[s], qs[s], labels, Path(tmp)) for s in ("pixel", "effnet")]
        figure_cost([m for m, _ in results], labels, [p for _, p in results])


if __name__ == "__main__":
    main()
