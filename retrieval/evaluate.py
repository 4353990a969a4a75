"""Precision@k and mAP per method, and the one policy that decides how an index is scored (`run`).

Two protocols:
* `test` (the original, here): every test image is a query against the train library.
* `kfold` (retrieval.kfold): train and test pooled into k seeded, class-stratified folds; every
  image queries the images of the other folds, so the intervals are far narrower.

A hit is relevant when it has the query's class. AP is computed over the whole ranking of the
library (for HNSW methods, over the whole library too: n_results = library size), so mAP compares
methods on their full orderings, not just the first page. Every mAP comes with a bootstrap
confidence interval over queries, and AP per class (retrieval.scoring).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .errors import ImageError, LibraryError, LookalikeError
from .evaluation_file import KfoldReport, Report, Scores, Skipped, SplitReport
from .images import load_image
from .kfold import FOLDS, TOO_FEW_CLASSES, TuneTable, evaluate_kfold, labelled_pool, method_sources, tune_table
from .library import NothingToEvaluate, evaluation_protocol, scan_split
from .scoring import KS, SEED, chance, method_scores
from .search import LookalikeIndex

log = logging.getLogger(__name__)

KFOLD_MAX_IMAGES = 5000     # above this the build skips k-fold (N^2 scores per method); asked for, it still runs
PROTOCOLS = ("auto", "test", "kfold", "both")
RUN_KFOLD_ALONE = "run the k-fold evaluation on its own to score it"


def average_precision(relevant: np.ndarray, n_relevant: int) -> float:
    """AP of one ranking: mean of precision@i over the ranks i that hold a relevant item."""
    if n_relevant == 0:
        return 0.0
    hits = np.flatnonzero(relevant)
    return float(np.sum((np.arange(len(hits)) + 1) / (hits + 1)) / n_relevant)


def method_stats(relevant: Sequence[np.ndarray], n_rel: Sequence[int] | np.ndarray, labels: np.ndarray,
                 ks: Sequence[int] = KS) -> Scores:
    """P@k, mAP, its bootstrap interval and AP per class from each query's relevance vector."""
    aps = np.array([average_precision(r, int(nr)) for r, nr in zip(relevant, n_rel)])
    precision_at = {k: np.array([r[:k].sum() / k for r in relevant]) for k in ks}
    return method_scores(aps, precision_at, labels)


@dataclass
class _Queries:
    """The test split's readable images, their classes, and the library rows each may not count
    (its own copies); `missing` says why there are none."""

    images: list[Any] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    skips: list[set[int]] = field(default_factory=list)
    missing: str | None = None


def _test_queries(index: LookalikeIndex, data_dir: Path) -> _Queries:
    try:
        listed = scan_split(data_dir, "test")
    except LibraryError:   # no test/ folder, or no images in it
        return _Queries(missing=f"the test split {data_dir / 'test'} holds no images, so there are no test queries")
    out = _Queries()
    for q in listed:
        path = q.path(data_dir)
        try:
            out.images.append(load_image(path))
        except ImageError as exc:
            log.warning("query skipped: %s", exc)
            continue
        out.labels.append(q.label)
        out.skips.append(index.self_rows(path))
    if not out.labels:  # e.g. a test/ whose only image is corrupt: say so instead of stacking nothing
        out.missing = (f"none of the {len(listed)} test images under {data_dir / 'test'} could be read, "
                       "so there are no queries; evaluation skipped")
    return out


def evaluate_index(index: LookalikeIndex, *, data_dir: Path | None = None,
                   methods: Sequence[str] | None = None, ks: Sequence[int] = KS) -> SplitReport:
    """Evaluate `methods` (default: every method the index offers) on DATA/test; NothingToEvaluate
    when it holds no readable image."""
    queries = _test_queries(index, Path(data_dir) if data_dir else index.data_dir)
    if queries.missing:
        raise NothingToEvaluate(queries.missing)
    return _score_split(index, queries, methods, ks)


def _score_split(index: LookalikeIndex, queries: _Queries, methods: Sequence[str] | None,
                 ks: Sequence[int]) -> SplitReport:
    lib_labels = index.labels
    n_rel = np.array([(lib_labels == lab).sum() for lab in queries.labels])
    n = len(lib_labels)
    scores: dict[str, Scores] = {}
    vectors: dict[str, np.ndarray] = {}
    for name in tqdm(methods or index.methods, desc="evaluate", unit="method", leave=False):
        m = index.parse_method(name)
        if m.source not in vectors:
            vectors[m.source] = index.query_vectors(queries.images, m.source)
        t0 = time.perf_counter()
        ranked = index.rank(vectors[m.source], m, n, queries.skips)
        per_query_ms = 1000 * (time.perf_counter() - t0) / max(1, len(queries.labels))
        rel = [lib_labels[[i for i, _ in hits]] == lab for hits, lab in zip(ranked, queries.labels)]
        scores[name] = method_stats(rel, n_rel, np.array(queries.labels), ks)
        scores[name]["ms_per_query"] = per_query_ms
    embedder = index.manifest.embedder
    return SplitReport(queries=len(queries.labels), library=n, classes=len(set(lib_labels)),
                       pixel_size=index.manifest.pixel_size, model=embedder.spec if embedder else None,
                       chance=chance(float(np.mean(n_rel / n)), ks), methods=scores, protocol="test")


# -- the policy: which protocol scores an index -----------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """What `run` produced: a report, or why there is none (`skipped`); `note` says why the test
    protocol gave way to k-fold; `tuning`, the k x alpha tables asked for with a k-fold report."""

    report: Report | None = None
    note: str | None = None
    skipped: str | None = None
    tuning: list[TuneTable] = field(default_factory=list)

    @property
    def protocol(self) -> str | None:
        """The report's own protocol: "test" (with k-fold under "kfold" where computed) or "kfold"."""
        return self.report["protocol"] if self.report is not None else None


def run(index: LookalikeIndex, protocol: str = "auto", *, methods: Sequence[str] | None = None,
        folds: int = FOLDS, seed: int = SEED, tune: bool = False) -> Evaluation:
    """Score the index under `protocol`, nothing raised for a library that cannot be scored:
    - "test": the test split as queries; without a usable one (none, or no readable image), k-fold
      instead, with a note saying why;
    - "both": the same, with the k-fold report under "kfold" ({"skipped": why} when it cannot run);
    - "auto" (the build's): "both", but k-fold is skipped, with the reason, above KFOLD_MAX_IMAGES;
    - "kfold": k-fold alone, over every labelled image.
    An unlabelled library (or one class only, for k-fold) is skipped with the reason. `tune`: with a
    k-fold report alone, also the re-ranking's k x alpha tables (one pool of vectors for both)."""
    if protocol not in PROTOCOLS:
        raise LookalikeError(f"evaluation protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "kfold":
        return _kfold_alone(index, methods, folds, seed, tune)
    how, why = evaluation_protocol(index.manifest.labels, index.rels, index.data_dir)
    if how is None:
        return Evaluation(skipped=why)
    if how == "test":
        queries = _test_queries(index, index.data_dir)
        if queries.missing is None:
            report = _score_split(index, queries, methods, KS)
            if protocol != "test":
                report["kfold"] = _kfold_part(index, protocol, methods, folds, seed)
            return Evaluation(report)
        why = queries.missing
    if protocol == "auto" and len(index.rels) > KFOLD_MAX_IMAGES:
        return Evaluation(skipped=f"{why}; k-fold is skipped above {KFOLD_MAX_IMAGES} images ({RUN_KFOLD_ALONE})")
    return _kfold_alone(index, methods, folds, seed, tune, note=why)


def _kfold_alone(index: LookalikeIndex, methods: Sequence[str] | None, folds: int, seed: int, tune: bool,
                 note: str | None = None) -> Evaluation:
    """The k-fold report as the evaluation (the tuning shares its pool, which then holds every source)."""
    pool = labelled_pool(index, sources=None if tune else method_sources(index, methods))
    if pool is None:
        return Evaluation(note=note, skipped=TOO_FEW_CLASSES)
    report = evaluate_kfold(index, methods=methods, folds=folds, seed=seed, pool=pool)
    tables = [tune_table(index, src, folds=folds, seed=seed, pool=pool)
              for src in index.sources() if index.reranker.offers(src)] if tune else []
    return Evaluation(report, note=note, tuning=tables)


def _kfold_part(index: LookalikeIndex, protocol: str, methods: Sequence[str] | None, folds: int,
                seed: int) -> KfoldReport | Skipped:
    """The k-fold report kept beside the test protocol's, or why it was not computed."""
    if protocol == "auto" and len(index.rels) > KFOLD_MAX_IMAGES:
        return Skipped(skipped=f"library over {KFOLD_MAX_IMAGES} images; {RUN_KFOLD_ALONE}")
    pool = labelled_pool(index, sources=method_sources(index, methods))
    if pool is None:
        return Skipped(skipped=TOO_FEW_CLASSES)
    return evaluate_kfold(index, methods=methods, folds=folds, seed=seed, pool=pool)


def format_table(report: Mapping[str, Any]) -> str:
    """A Markdown table, best mAP first (with its 95% bootstrap interval where known), chance last."""
    ks = [key for key in report["chance"] if key.startswith("p@")]
    head = "| method | " + " | ".join(k.upper() for k in ks) + " | mAP | 95% CI |\n|---|" + "---|" * (len(ks) + 2)
    rows = sorted(report["methods"].items(), key=lambda kv: -kv[1]["map"])
    lines = [head] + [f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in ks) + f" | {r['map']:.3f} | "
                      + (f"{r['map_ci'][0]:.3f}–{r['map_ci'][1]:.3f}" if r.get("map_ci") else "") + " |"
                      for name, r in rows]
    lines.append("| *chance* | " + " | ".join(f"{report['chance'][k]:.3f}" for k in ks)
                 + f" | {report['chance']['map']:.3f} | |")
    return "\n".join(lines) + f"\n\n{measured_on(report)}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def measured_on(report: Mapping[str, Any]) -> str:
    """What a table measured: queries against which library, in how many classes."""
    if report.get("protocol") == "kfold":
        where = (f"{report['folds']}-fold (seed {report['seed']}): each of {_count(report['queries'], 'image', 'images')}"
                 f" against the other folds (about {_count(report['library'], 'image', 'images')})")
    else:
        where = (f"{_count(report['queries'], 'query', 'queries')} against "
                 f"{_count(report['library'], 'library image', 'library images')}")
    return f"{where} in {_count(report['classes'], 'class', 'classes')}."
