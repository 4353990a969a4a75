"""Precision@k and mAP per method, under two protocols.

* `test` (the original): every test image is a query against the train library.
* `kfold`: train and test are pooled and split into k seeded, class-stratified folds; every image
  queries the images of the other folds. With 45 test images a mAP difference of 0.003 is noise;
  with every image a query the interval shrinks several-fold. Nothing on the library side sees the
  query's fold: re-ranking's library side (DBA, the space statistics) is recomputed per fold from
  the other folds alone (`kfold_library_side`), which a test checks.

A hit is relevant when it has the query's class. AP is computed over the whole ranking of the
library (for HNSW methods, over the whole library too: n_results = library size), so mAP compares
methods on their full orderings, not just the first page. Every mAP comes with a bootstrap
confidence interval over queries, and AP per class.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from .errors import ImageError
from .images import load_image
from .library import NothingToEvaluate, scan_split
from .search import LookalikeIndex
from .errors import LibraryError, LookalikeError
from .library import file_sha256
from .metrics import PreparedMatrix
from .rerank import ALPHAS, KS as RERANK_KS, LibrarySide, Settings, library_side, rerank_scores, space_rows
from .search import Method

log = logging.getLogger(__name__)

KS = (1, 5, 10)
FOLDS = 5
SEED = 0
BOOTSTRAP = 1000
KFOLD_MAX_IMAGES = 5000     # above this the build skips k-fold (N^2 scores per method); the CLI still runs it


def average_precision(relevant: np.ndarray, n_relevant: int) -> float:
    """AP of one ranking: mean of precision@i over the ranks i that hold a relevant item."""
    if n_relevant == 0:
        return 0.0
    hits = np.flatnonzero(relevant)
    return float(np.sum((np.arange(len(hits)) + 1) / (hits + 1)) / n_relevant)


def evaluate_index(index: LookalikeIndex, *, data_dir: Path | None = None,
                   methods: Sequence[str] | None = None, ks: Sequence[int] = KS) -> dict[str, Any]:
    """Evaluate `methods` (default: every method the index offers) on DATA/test."""
    data_dir = Path(data_dir) if data_dir else index.data_dir
    queries = scan_split(data_dir, "test")
    images, labels, skips = [], [], []
    for q in queries:
        path = q.path(data_dir)
        try:
            images.append(load_image(path))
        except ImageError as exc:
            log.warning("query skipped: %s", exc)
            continue
        labels.append(q.label)
        skips.append(index.self_rows(path))
    if not labels:  # e.g. a test/ whose only image is corrupt: say so instead of stacking nothing
        raise NothingToEvaluate(f"none of the {len(queries)} test images under {data_dir / 'test'} "
                                "could be read, so there are no queries; evaluation skipped")
    lib_labels = index.labels
    n_rel = np.array([(lib_labels == lab).sum() for lab in labels])
    n = len(lib_labels)
    report: dict[str, Any] = {
        "queries": len(labels), "library": n, "classes": len(set(lib_labels)),
        "pixel_size": index.manifest.pixel_size,
        "model": (index.manifest.embedder or {}).get("spec"),
        "chance": {**{f"p@{k}": float(np.mean(n_rel / n)) for k in ks}, "map": float(np.mean(n_rel / n))},
        "methods": {},
    }
    vectors: dict[str, np.ndarray] = {}
    for name in tqdm(methods or index.methods, desc="evaluate", unit="method", leave=False):
        m = index.parse_method(name)
        if m.source not in vectors:
            vectors[m.source] = index.query_vectors(images, m.source)
        t0 = time.perf_counter()
        ranked = index.rank(vectors[m.source], m, n, skips)
        per_query_ms = 1000 * (time.perf_counter() - t0) / max(1, len(labels))
        rel = [lib_labels[[i for i, _ in hits]] == lab for hits, lab in zip(ranked, labels)]
        report["methods"][name] = {**method_stats(rel, n_rel, np.array(labels), ks),
                                   "ms_per_query": per_query_ms}
    report["protocol"] = "test"
    return report


def bootstrap_ci(aps: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = SEED,
                 level: float = 0.95) -> list[float]:
    """Percentile interval of the mean AP when the queries are resampled with replacement."""
    aps = np.asarray(aps, dtype=np.float64)
    if len(aps) == 0:
        return [0.0, 0.0]
    draws = np.random.default_rng(seed).integers(0, len(aps), size=(n_boot, len(aps)))
    means = aps[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def method_stats(relevant: Sequence[np.ndarray], n_rel: Sequence[int] | np.ndarray, labels: np.ndarray,
                 ks: Sequence[int] = KS) -> dict[str, Any]:
    """P@k, mAP, its bootstrap interval and AP per class from each query's relevance vector."""
    aps = np.array([average_precision(r, int(nr)) for r, nr in zip(relevant, n_rel)])
    out: dict[str, Any] = {f"p@{k}": float(np.mean([r[:k].sum() / k for r in relevant])) for k in ks}
    out["map"] = float(aps.mean()) if len(aps) else 0.0
    out["map_ci"] = bootstrap_ci(aps)
    out["ap_per_class"] = {str(c): float(aps[labels == c].mean()) for c in sorted(set(labels.tolist()))}
    return out


# -- the k-fold protocol ----------------------------------------------------------------------------
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


def build_pool(index: LookalikeIndex, data_dir: Path | None = None,
               sources: Sequence[str] | None = None) -> Pool:
    """Train rows straight from the index (nothing re-embedded) plus the decoded test images."""
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
        raise NothingToEvaluate("k-fold evaluation needs a labelled library with at least 2 classes; skipped")
    sources = list(sources or index.sources())
    vectors = {}
    for src in sources:
        matrix = index.pixels if src == "pixel" else index.embeddings
        assert matrix is not None, "index.sources() names the embedder only when there are embeddings"
        lib = matrix.data
        vectors[src] = np.concatenate([np.asarray(lib), index.query_vectors(images, src).astype(lib.dtype)]) \
            if images else np.asarray(lib)
    shas = [it["sha256"] for it in index.manifest.items] + [file_sha256(data_dir / r) for r in rels]
    return Pool(all_labels, list(index.rels) + rels, shas, vectors, index.manifest.pixel_size)


def kfold_library_side(pool: Pool, source: str, folds: np.ndarray, fold: int, settings: Settings,
                       with_dba: bool = True) -> LibrarySide:
    """Re-ranking's library side for `fold`: computed from the rows of the other folds ONLY."""
    lib = folds != fold
    return library_side(pool.vectors[source][lib], settings, pool.pixel_size if source == "pixel" else None, with_dba)


def _fold_scores(pool: Pool, m: Method, settings: Settings | None, lib: np.ndarray, q: np.ndarray,
                 side: LibrarySide | None) -> np.ndarray:
    """(Q, L) scores, higher = more similar, of the fold's queries against the other folds."""
    vec = pool.vectors[m.source]
    if not (m.dba or m.qe):
        scores = PreparedMatrix(vec[lib]).scores(vec[q], m.metric).reshape(int(q.sum()), -1)
        return scores if m.higher_is_better else -scores
    assert settings is not None and side is not None, "a re-ranked method comes with its settings and side"
    queries = space_rows(vec[q], settings, pool.pixel_size if m.source == "pixel" else None)
    return rerank_scores(queries, side, settings, m.dba, m.qe)


def _aps_from_scores(scores: np.ndarray, q_labels: np.ndarray, lib_labels: np.ndarray,
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
        if m.dba or m.qe:
            assert settings is not None, "a re-ranked method is evaluated with its settings"
            side = kfold_library_side(pool, m.source, folds, int(f), settings, m.dba)
        scores = _fold_scores(pool, m, settings, lib, q, side)
        skip = shas[q][:, None] == shas[lib][None, :]
        a, p = _aps_from_scores(scores, pool.labels[q], pool.labels[lib], skip, ks)
        aps[q] = a
        for k in ks:
            pk[k][q] = p[k]
    return aps, pk


def evaluate_kfold(index: LookalikeIndex, *, methods: Sequence[str] | None = None, folds: int = FOLDS,
                   seed: int = SEED, data_dir: Path | None = None, ks: Sequence[int] = KS,
                   pool: Pool | None = None) -> dict[str, Any]:
    """The k-fold protocol over the exact methods (HNSW methods approximate exact ones and are
    evaluated under the test protocol: k-fold would need a Chroma collection per fold)."""
    names = [x for x in (methods or index.methods) if not index.parse_method(x).hnsw]
    parsed = [index.parse_method(x) for x in names]
    pool = pool or build_pool(index, data_dir, sorted({m.source for m in parsed}))
    fold_of = stratified_folds(pool.labels, folds, seed)
    n_rel = np.array([(pool.labels[fold_of != fold_of[i]] == lab).sum() for i, lab in enumerate(pool.labels)])
    n_lib = np.array([(fold_of != fold_of[i]).sum() for i in range(len(pool.labels))])
    report: dict[str, Any] = {
        "protocol": "kfold", "folds": folds, "seed": seed, "queries": len(pool.labels),
        "library": int(np.mean(n_lib)), "classes": len(set(pool.labels.tolist())),
        "pixel_size": index.manifest.pixel_size, "model": (index.manifest.embedder or {}).get("spec"),
        "chance": {**{f"p@{k}": float(np.mean(n_rel / n_lib)) for k in ks}, "map": float(np.mean(n_rel / n_lib))},
        "rerank": {src: index.rerank_settings(src).to_json() for src in {m.source for m in parsed if m.dba or m.qe}},
        "methods": {},
    }
    for m in tqdm(parsed, desc="k-fold", unit="method", leave=False):
        t0 = time.perf_counter()
        settings = index.rerank_settings(m.source) if (m.dba or m.qe) else None
        aps, pk = kfold_method_aps(pool, m, fold_of, settings, ks)
        report["methods"][m.name] = {**{f"p@{k}": float(pk[k].mean()) for k in ks}, "map": float(aps.mean()),
                                     "map_ci": bootstrap_ci(aps),
                                     "ap_per_class": {str(c): float(aps[pool.labels == c].mean())
                                                      for c in sorted(set(pool.labels.tolist()))},
                                     "seconds": round(time.perf_counter() - t0, 2)}
    return report


def tune_table(index: LookalikeIndex, source: str, *, folds: int = FOLDS, seed: int = SEED,
               pool: Pool | None = None) -> dict[str, Any]:
    """The k x alpha grid (k-fold mAP) of +qe and +dba+qe for one source, on its recorded space
    (flip / sqrt / metric), plus the refinements switched off one at a time at the best k, alpha."""
    pool = pool or build_pool(index, sources=[source])
    fold_of = stratified_folds(pool.labels, folds, seed)
    base = index.rerank_settings(source)
    name = f"{source}-{base.metric}"
    grid: dict[str, dict[str, float]] = {}
    for suffix in ("+qe", "+dba+qe"):
        m = index.parse_method(name + suffix)
        for k in RERANK_KS:
            for a in ALPHAS:
                s = replace(base, k=k, alpha=a)
                grid.setdefault(suffix, {})[f"{k}/{a:g}"] = float(kfold_method_aps(pool, m, fold_of, s)[0].mean())
    table = grid["+dba+qe"]
    best = max(table, key=lambda cell: table[cell])
    k_best, a_best = best.split("/")
    chosen = replace(base, k=int(k_best), alpha=float(a_best))
    plain = index.parse_method(f"{source}-{base.metric}")
    m = index.parse_method(name + "+dba+qe")
    refinements = {f"plain {plain.name}": float(kfold_method_aps(pool, plain, fold_of, None)[0].mean()),
                   "as chosen": grid["+dba+qe"][best]}
    toggles = [("sqrt", replace(chosen, sqrt=not chosen.sqrt))]
    if source == "pixel":
        toggles.append(("flip", replace(chosen, flip=not chosen.flip)))
    for what, s in toggles:
        on = getattr(s, what)
        refinements[f"{'with' if on else 'without'} {what}"] = float(kfold_method_aps(pool, m, fold_of, s)[0].mean())
    return {"source": source, "metric": base.metric, "grid": grid, "best": {"k": chosen.k, "alpha": chosen.alpha},
            "refinements": refinements, "recorded": base.to_json()}


def format_tune(table: dict[str, Any]) -> str:
    """The tuning grid as Markdown: one row per k, one column per alpha, for each variant."""
    lines = []
    for suffix, cells in table["grid"].items():
        lines.append(f"\n{table['source']}-{table['metric']}{suffix}: k-fold mAP\n")
        lines.append("| k \\ alpha | " + " | ".join(f"{a:g}" for a in ALPHAS) + " |")
        lines.append("|---|" + "---|" * len(ALPHAS))
        for k in RERANK_KS:
            lines.append(f"| {k} | " + " | ".join(f"{cells[f'{k}/{a:g}']:.3f}" for a in ALPHAS) + " |")
    lines.append(f"\nbest +dba+qe: k={table['best']['k']}, alpha={table['best']['alpha']:g}; "
                 f"recorded in the manifest: k={table['recorded']['k']}, alpha={table['recorded']['alpha']:g}")
    lines.append("refinements at the best k/alpha: " + ", ".join(f"{k} {v:.3f}" for k, v in table["refinements"].items()))
    return "\n".join(lines)


def evaluate_all(index: LookalikeIndex, *, max_kfold: int = KFOLD_MAX_IMAGES) -> dict[str, Any]:
    """What the build writes to evaluation.json: the test protocol, with the k-fold report under
    "kfold" (skipped, with the reason, above `max_kfold` images or without classes)."""
    report = evaluate_index(index)
    if len(index.rels) > max_kfold:
        report["kfold"] = {"skipped": f"library over {max_kfold} images; run python -m retrieval evaluate "
                                      f"--protocol kfold --save"}
        return report
    try:
        report["kfold"] = evaluate_kfold(index)
    except NothingToEvaluate as exc:
        report["kfold"] = {"skipped": str(exc)}
    return report


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table, best mAP first (with its 95% bootstrap interval where known), chance last."""
    ks = [key for key in report["chance"] if key.startswith("p@")]
    head = "| method | " + " | ".join(k.upper() for k in ks) + " | mAP | 95% CI |\n|---|" + "---|" * (len(ks) + 2)
    rows = sorted(report["methods"].items(), key=lambda kv: -kv[1]["map"])
    lines = [head] + [f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in ks) + f" | {r['map']:.3f} | "
                      + (f"{r['map_ci'][0]:.3f}–{r['map_ci'][1]:.3f}" if r.get("map_ci") else "") + " |"
                      for name, r in rows]
    lines.append("| *chance* | " + " | ".join(f"{report['chance'][k]:.3f}" for k in ks)
                 + f" | {report['chance']['map']:.3f} | |")
    if report.get("protocol") == "kfold":
        where = (f"{report['folds']}-fold (seed {report['seed']}): each of {report['queries']} images against the "
                 f"other folds (about {report['library']} images)")
    else:
        where = f"{report['queries']} queries against {report['library']} library images"
    return "\n".join(lines) + f"\n\n{where} in {report['classes']} classes."
