"""The k-fold protocol, and the re-ranking's k x alpha tuning on it.

Train and test are pooled and split into k seeded, class-stratified folds; every image queries the
images of the other folds. With 45 test images a mAP difference of 0.003 is noise; with every image
a query the interval shrinks several-fold. Nothing on the library side sees the query's fold:
re-ranking's library side (DBA, the space statistics) is recomputed per fold from the other folds
alone (`kfold_library_side`), which a test checks. Which protocol scores an index is decided in one
place, retrieval.evaluate.run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence, TypedDict

import numpy as np
from tqdm import tqdm

from .errors import ImageError, LibraryError, LookalikeError
from .evaluation_file import KfoldReport, Scores
from .images import load_image
from .library import NothingToEvaluate, file_sha256, scan_split
from .methods import Method
from .metrics import PreparedMatrix
from .rerank import ALPHAS, KS as RERANK_KS, LibrarySide, Settings, library_side, rerank_scores, space_rows
from .scoring import KS, SEED, chance, method_scores
from .search import LookalikeIndex

log = logging.getLogger(__name__)

FOLDS = 5
TOO_FEW_CLASSES = "k-fold evaluation needs a labelled library with at least 2 classes; skipped"


@dataclass
class Pool:
    """Every labelled image (train rows from the index, then test images), with each source's vectors."""

    labels: np.ndarray
    rels: list[str]
    shas: list[str]
    vectors: dict[str, np.ndarray]
    pixel_size: int


def stratified_folds(labels: np.ndarray, k: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """Fold id per image: each class shuffled (seeded) and dealt round-robin, so every fold holds
    about 1/k of every class (classes of 10 images keep 8 in the library of each fold)."""
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise LookalikeError(f"k-fold needs at least 2 folds, got {k!r}")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        folds[idx] = (np.arange(len(idx)) + start) % k   # rotate the start: fold sizes stay even
        start += len(idx)
    return folds


def method_sources(index: LookalikeIndex, methods: Sequence[str] | None = None) -> list[str]:
    """The vector sources the k-fold methods among `methods` (default: all) need in the pool."""
    return sorted({m.source for m in _kfold_methods(index, methods)})


def _kfold_methods(index: LookalikeIndex, methods: Sequence[str] | None) -> list[Method]:
    """The exact methods: HNSW ones approximate them and are scored under the test protocol
    (k-fold would need a Chroma collection per fold)."""
    parsed = [index.parse_method(x) for x in (methods or index.methods)]
    return [m for m in parsed if not m.hnsw]


def labelled_pool(index: LookalikeIndex, data_dir: Path | None = None,
                  sources: Sequence[str] | None = None) -> Pool | None:
    """Train rows straight from the index (nothing re-embedded) plus the decoded test images; None
    (see TOO_FEW_CLASSES) when they hold fewer than 2 classes."""
    data_dir = Path(data_dir) if data_dir else index.data_dir
    try:
        tests = scan_split(data_dir, "test")
    except LibraryError:
        tests = []
    images, rels, labels = [], [], []
    for q in tests:
        try:
            images.append(load_image(q.path(data_dir)))
        except ImageError as exc:
            log.warning("k-fold: skipped %s", exc)
            continue
        rels.append(q.rel)
        labels.append(q.label)
    all_labels = np.array(list(index.labels) + labels)
    if len({x for x in all_labels.tolist() if x}) < 2:
        return None
    vectors = {}
    for src in list(sources or index.sources()):
        lib = np.asarray(index.matrix(src).data)
        vectors[src] = np.concatenate([lib, index.query_vectors(images, src).astype(lib.dtype)]) if images else lib
    shas = [it["sha256"] for it in index.manifest.items] + [file_sha256(data_dir / r) for r in rels]
    return Pool(all_labels, list(index.rels) + rels, shas, vectors, index.manifest.pixel_size)


def build_pool(index: LookalikeIndex, data_dir: Path | None = None,
               sources: Sequence[str] | None = None) -> Pool:
    """`labelled_pool`, refusing (NothingToEvaluate) a library with fewer than 2 classes."""
    pool = labelled_pool(index, data_dir, sources)
    if pool is None:
        raise NothingToEvaluate(TOO_FEW_CLASSES)
    return pool


def kfold_library_side(pool: Pool, source: str, folds: np.ndarray, fold: int, settings: Settings,
                       with_dba: bool = True, with_kr: bool = False) -> LibrarySide:
    """Re-ranking's library side for `fold` (the transform, DBA, the k-reciprocal graph): computed
    from the rows of the other folds ONLY."""
    lib = folds != fold
    return library_side(pool.vectors[source][lib], settings, pool.pixel_size if source == "pixel" else None,
                        with_dba, with_kr)


def fold_scores(pool: Pool, m: Method, settings: Settings | None, lib: np.ndarray, queries: np.ndarray,
                side: LibrarySide | None, exclude: Sequence[set[int]] | None = None) -> np.ndarray:
    """(Q, L) scores, higher = more similar, of raw query vectors (any, e.g. refined ones) against
    the library rows `lib` (a mask), through `side` for a re-ranked method; `exclude` holds library
    columns (positions among the `lib` rows) each query's expansion and k-reciprocal step may not use."""
    vec = pool.vectors[m.source]
    if not m.reranked:
        scores = PreparedMatrix(vec[lib]).scores(queries, m.metric).reshape(len(queries), -1)
        return scores if m.higher_is_better else -scores
    assert settings is not None and side is not None, "a re-ranked method comes with its settings and side"
    rows = space_rows(queries, settings, pool.pixel_size if m.source == "pixel" else None, side.transform)
    return rerank_scores(rows, side, settings, m.dba, m.qe, exclude, use_kr=m.kr)


def _fold_scores(pool: Pool, m: Method, settings: Settings | None, lib: np.ndarray, q: np.ndarray,
                 side: LibrarySide | None) -> np.ndarray:
    """(Q, L) scores, higher = more similar, of the fold's queries against the other folds."""
    return fold_scores(pool, m, settings, lib, pool.vectors[m.source][q], side)


def aps_from_scores(scores: np.ndarray, q_labels: np.ndarray, lib_labels: np.ndarray,
                    skip: np.ndarray, ks: Sequence[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """AP and P@k per query over the full ranking (ties broken by row order, as top_k does);
    `skip` (Q, L) marks library rows a query may not count (its own duplicates)."""
    key = np.where(skip, np.inf, -scores)
    order = np.argsort(key, axis=1, kind="stable")
    rel = (lib_labels[order] == q_labels[:, None]) & ~np.take_along_axis(skip, order, axis=1)
    n_rel = rel.sum(axis=1)
    prec = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    aps = np.where(n_rel > 0, (prec * rel).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    return aps, {k: rel[:, :k].sum(axis=1) / k for k in ks}


def kfold_method_aps(pool: Pool, m: Method, folds: np.ndarray, settings: Settings | None,
                     ks: Sequence[int] = KS) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per-image AP (and P@k) of one method, each image queried against the other folds."""
    aps = np.zeros(len(pool.labels))
    pk = {k: np.zeros(len(pool.labels)) for k in ks}
    shas = np.array(pool.shas)
    for f in np.unique(folds):
        q, lib = folds == f, folds != f
        side = None
        if m.reranked:
            assert settings is not None, "a re-ranked method is evaluated with its settings"
            side = kfold_library_side(pool, m.source, folds, int(f), settings, m.dba, m.kr)
        scores = _fold_scores(pool, m, settings, lib, q, side)
        skip = shas[q][:, None] == shas[lib][None, :]
        a, p = aps_from_scores(scores, pool.labels[q], pool.labels[lib], skip, ks)
        aps[q] = a
        for k in ks:
            pk[k][q] = p[k]
    return aps, pk


def evaluate_kfold(index: LookalikeIndex, *, methods: Sequence[str] | None = None, folds: int = FOLDS,
                   seed: int = SEED, data_dir: Path | None = None, ks: Sequence[int] = KS,
                   pool: Pool | None = None) -> KfoldReport:
    """The k-fold protocol over the exact methods among `methods` (default: every method offered).
    Raises NothingToEvaluate (without a `pool`) for a library with fewer than 2 classes."""
    parsed = _kfold_methods(index, methods)
    pool = pool or build_pool(index, data_dir, sorted({m.source for m in parsed}))
    fold_of = stratified_folds(pool.labels, folds, seed)
    n_rel = np.array([(pool.labels[fold_of != fold_of[i]] == lab).sum() for i, lab in enumerate(pool.labels)])
    n_lib = np.array([(fold_of != fold_of[i]).sum() for i in range(len(pool.labels))])
    scores: dict[str, Scores] = {}
    for m in tqdm(parsed, desc="k-fold", unit="method", leave=False):
        t0 = time.perf_counter()
        settings = index.rerank_settings(m.source) if m.reranked else None
        aps, pk = kfold_method_aps(pool, m, fold_of, settings, ks)
        scores[m.name] = method_scores(aps, pk, pool.labels)
        scores[m.name]["seconds"] = round(time.perf_counter() - t0, 2)
    embedder = index.manifest.embedder
    return KfoldReport(
        protocol="kfold", folds=folds, seed=seed, queries=len(pool.labels), library=int(np.mean(n_lib)),
        classes=len(set(pool.labels.tolist())), pixel_size=index.manifest.pixel_size,
        model=embedder.spec if embedder else None, chance=chance(float(np.mean(n_rel / n_lib)), ks),
        rerank={src: index.rerank_settings(src).to_json() for src in {m.source for m in parsed if m.reranked}},
        methods=scores)


K1S = (20, 30, 40, 50)        # the k-reciprocal grid: k1 (reciprocal neighbours) ...
K2S = (1, 3, 6, 10)           # ... k2 (local query expansion) ...
LAMS = (0.1, 0.3, 0.5)        # ... and lambda (weight of the original distance)
PCAS = (0, 64, 128, 256)      # the transform's basis sizes tried (0: centring only)
PLATEAU = 0.01                # a chosen cell's neighbours are within this of it


class TuneTable(TypedDict):
    """One source's k x alpha grid of k-fold mAP, the best cell, and the refinements toggled there;
    for a source with k-reciprocal re-ranking its k1 x k2 x lambda grid, and the transforms tried."""

    source: str
    metric: str
    grid: dict[str, dict[str, float]]   # "+qe" / "+dba+qe" (/ "+dba+qe+kr") -> "k/alpha" -> mAP
    best: dict[str, float]              # {"k", "alpha", "map", "worst_neighbour"}: the last grid's plateau cell
    refinements: dict[str, float]       # "plain ...", "as chosen", "with(out) sqrt", "with(out) flip" -> mAP
    recorded: dict[str, Any]            # the settings the manifest records
    reciprocal: dict[str, float]        # "k1/k2/lambda" -> mAP of +dba+qe+kr (at the recorded k, alpha)
    plateau: dict[str, float]           # the +kr cell chosen on a plateau: k1, k2, lam, map, worst_neighbour
    transforms: dict[str, float]        # "none", "centre", "pca-64", ... -> mAP of +dba+qe


def plateau_cell(grid: dict[tuple, float]) -> tuple[tuple, float]:
    """The best cell among those whose neighbours (one step along one axis) are all within PLATEAU
    of it: a plateau, not a lone peak (without any, the cell whose worst neighbour is best).
    Returns it and its worst neighbour's value."""
    axes = [sorted({cell[i] for cell in grid}) for i in range(len(next(iter(grid))))]

    def worst(cell: tuple) -> float:
        values = [grid[cell]]
        for i, axis in enumerate(axes):
            at = axis.index(cell[i])
            for j in (at - 1, at + 1):
                if 0 <= j < len(axis):
                    values.append(grid.get(cell[:i] + (axis[j],) + cell[i + 1:], grid[cell]))
        return min(values)
    flat = [c for c in grid if grid[c] - worst(c) <= PLATEAU + 1e-9]
    chosen = max(flat, key=lambda c: (grid[c], worst(c))) if flat else max(grid, key=lambda c: (worst(c), grid[c]))
    return chosen, worst(chosen)


def _reciprocal_grid(pool: Pool, fold_of: np.ndarray, base: Settings,
                     plain: Method) -> tuple[dict[str, float], dict[str, float]]:
    """+dba+qe+kr's k-fold mAP over K1S x K2S x LAMS, and the plateau cell."""
    m = replace(plain, dba=True, qe=True, kr=True)
    cells = {(k1, k2, lam): float(kfold_method_aps(pool, m, fold_of, replace(base, k1=k1, k2=k2, lam=lam))[0].mean())
             for k1 in K1S for k2 in K2S for lam in LAMS}
    (k1, k2, lam), worst = plateau_cell(cells)
    return ({f"{a}/{b}/{c:g}": v for (a, b, c), v in cells.items()},
            {"k1": k1, "k2": k2, "lam": lam, "map": cells[(k1, k2, lam)], "worst_neighbour": worst})


def _transform_row(pool: Pool, fold_of: np.ndarray, base: Settings, plain: Method) -> dict[str, float]:
    """+dba+qe's k-fold mAP without the library-side transform, with centring only, and with PCA."""
    m = replace(plain, dba=True, qe=True)
    tried = {"none": replace(base, centre=False, pca=0)}
    tried.update({("centre" if d == 0 else f"pca-{d}"): replace(base, centre=True, pca=d) for d in PCAS})
    return {name: float(kfold_method_aps(pool, m, fold_of, s)[0].mean()) for name, s in tried.items()}


def tune_table(index: LookalikeIndex, source: str, *, folds: int = FOLDS, seed: int = SEED,
               pool: Pool | None = None) -> TuneTable:
    """The k x alpha grid (k-fold mAP) of +qe and +dba+qe for one source, on its recorded space
    (flip / sqrt / metric), plus the refinements switched off one at a time at the best k, alpha."""
    pool = pool or build_pool(index, sources=[source])
    fold_of = stratified_folds(pool.labels, folds, seed)
    base = index.rerank_settings(source)
    plain = index.parse_method(f"{source}-{base.metric}")
    grid: dict[str, dict[str, float]] = {}
    suffixes = ("+qe", "+dba+qe") + (("+dba+qe+kr",) if base.k1 and source in index.reranker.record.reciprocal()
                                     else ())
    for suffix in suffixes:   # the last is the source's best re-ranking: its grid chooses k and alpha
        m = index.parse_method(plain.name + suffix)
        for k in RERANK_KS:
            for a in ALPHAS:
                s = replace(base, k=k, alpha=a)
                grid.setdefault(suffix, {})[f"{k}/{a:g}"] = float(kfold_method_aps(pool, m, fold_of, s)[0].mean())
    table = grid[suffixes[-1]]
    (k_best, a_best), worst = plateau_cell({(k, a): table[f"{k}/{a:g}"] for k in RERANK_KS for a in ALPHAS})
    best = f"{k_best}/{a_best:g}"
    chosen = replace(base, k=int(k_best), alpha=float(a_best))
    m = index.parse_method(plain.name + suffixes[-1])
    refinements = {f"plain {plain.name}": float(kfold_method_aps(pool, plain, fold_of, None)[0].mean()),
                   "as chosen": table[best]}
    toggles = [("sqrt", replace(chosen, sqrt=not chosen.sqrt))]
    if source == "pixel":
        toggles.append(("flip", replace(chosen, flip=not chosen.flip)))
    for what, s in toggles:
        on = getattr(s, what)
        refinements[f"{'with' if on else 'without'} {what}"] = float(kfold_method_aps(pool, m, fold_of, s)[0].mean())
    kr, plateau = _reciprocal_grid(pool, fold_of, base, plain) if base.k1 else ({}, {})
    transforms = _transform_row(pool, fold_of, base, plain) if source != "pixel" else {}
    return TuneTable(source=source, metric=base.metric, grid=grid,
                     best={"k": chosen.k, "alpha": chosen.alpha, "map": table[best], "worst_neighbour": worst},
                     refinements=refinements, recorded=base.to_json(), reciprocal=kr, plateau=plateau,
                     transforms=transforms)


def format_tune(table: TuneTable) -> str:
    """The tuning grid as Markdown: one row per k, one column per alpha, for each variant."""
    lines = []
    for suffix, cells in table["grid"].items():
        lines.append(f"\n{table['source']}-{table['metric']}{suffix}: k-fold mAP\n")
        lines.append("| k \\ alpha | " + " | ".join(f"{a:g}" for a in ALPHAS) + " |")
        lines.append("|---|" + "---|" * len(ALPHAS))
        for k in RERANK_KS:
            lines.append(f"| {k} | " + " | ".join(f"{cells[f'{k}/{a:g}']:.3f}" for a in ALPHAS) + " |")
    lines.append(f"\nbest {list(table['grid'])[-1]} on a plateau: k={table['best']['k']}, alpha={table['best']['alpha']:g} (mAP "
                 f"{table['best']['map']:.3f}, its neighbours >= {table['best']['worst_neighbour']:.3f}); "
                 f"recorded in the manifest: k={table['recorded']['k']}, alpha={table['recorded']['alpha']:g}")
    lines.append("refinements at the best k/alpha: " + ", ".join(f"{k} {v:.3f}" for k, v in table["refinements"].items()))
    if table["transforms"]:
        lines.append(f"library-side transform, {table['source']}-{table['metric']}+dba+qe at the recorded k/alpha: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in table["transforms"].items()))
    if table["reciprocal"]:
        lines += _format_reciprocal(table)
    return "\n".join(lines)


def _format_reciprocal(table: TuneTable) -> list[str]:
    """The k1 x k2 grid, one table per lambda, and the plateau cell."""
    lines = []
    for lam in LAMS:
        lines.append(f"\n{table['source']}-{table['metric']}+dba+qe+kr, lambda {lam:g}: k-fold mAP\n")
        lines.append("| k1 \\ k2 | " + " | ".join(str(k2) for k2 in K2S) + " |")
        lines.append("|---|" + "---|" * len(K2S))
        for k1 in K1S:
            lines.append(f"| {k1} | " + " | ".join(f"{table['reciprocal'][f'{k1}/{k2}/{lam:g}']:.3f}" for k2 in K2S) + " |")
    p, rec = table["plateau"], table["recorded"]
    lines.append(f"\nplateau +kr cell: k1={p['k1']:g}, k2={p['k2']:g}, lambda={p['lam']:g} (mAP {p['map']:.3f}, its "
                 f"neighbours >= {p['worst_neighbour']:.3f}); recorded: k1={rec['k1']}, k2={rec['k2']}, lambda={rec['lam']:g}")
    return lines
