"""Precision@k and mAP per method, with every test image as a query against the train library.

A hit is relevant when it has the query's class. AP is computed over the whole ranking of the
library (for HNSW methods, over the whole library too: n_results = library size), so mAP compares
methods on their full orderings, not just the first page.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from .errors import ImageError
from .images import load_image
from .library import scan_split
from .search import LookalikeIndex

log = logging.getLogger(__name__)

KS = (1, 5, 10)


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
        stats = {f"p@{k}": 0.0 for k in ks}
        aps = []
        for hits, lab, nr in zip(ranked, labels, n_rel):
            rel = lib_labels[[i for i, _ in hits]] == lab
            for k in ks:
                stats[f"p@{k}"] += rel[:k].sum() / k
            aps.append(average_precision(rel, int(nr)))
        report["methods"][name] = {**{key: v / len(labels) for key, v in stats.items()},
                                   "map": float(np.mean(aps)), "ms_per_query": per_query_ms}
    return report


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table, best mAP first, with chance as the last row."""
    ks = [key for key in report["chance"] if key.startswith("p@")]
    head = "| method | " + " | ".join(k.upper() for k in ks) + " | mAP |\n|---|" + "---|" * (len(ks) + 1)
    rows = sorted(report["methods"].items(), key=lambda kv: -kv[1]["map"])
    lines = [head] + [f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in ks) + f" | {r['map']:.3f} |"
                      for name, r in rows]
    lines.append("| *chance* | " + " | ".join(f"{report['chance'][k]:.3f}" for k in ks)
                 + f" | {report['chance']['map']:.3f} |")
    return "\n".join(lines) + (f"\n\n{report['queries']} queries against {report['library']} library images "
                               f"in {report['classes']} classes.")
