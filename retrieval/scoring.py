"""The scores both evaluation protocols report per method (retrieval.evaluate for the test split,
retrieval.kfold for k-fold): P@k, mAP with a bootstrap interval over queries, AP per class, and
what chance would score."""
from __future__ import annotations

from typing import Any, Mapping, Sequence, cast

import numpy as np

from .evaluation_file import Chance, Scores

KS = (1, 5, 10)
SEED = 0
BOOTSTRAP = 1000


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


def method_scores(aps: np.ndarray, precision_at: Mapping[int, np.ndarray], labels: np.ndarray) -> Scores:
    """One method's scores from each query's AP and P@k (`precision_at`: k -> per query) and class."""
    out: dict[str, Any] = {f"p@{k}": float(np.mean(p)) for k, p in precision_at.items()}
    out["map"] = float(aps.mean()) if len(aps) else 0.0
    out["map_ci"] = bootstrap_ci(aps)
    out["ap_per_class"] = {str(c): float(aps[labels == c].mean()) for c in sorted(set(labels.tolist()))}
    return cast(Scores, out)   # p@k keys for the k asked for


def chance(rate: float, ks: Sequence[int] = KS) -> Chance:
    """What a random ranking scores when `rate` is the mean share of the library in the query's class."""
    return cast(Chance, {**{f"p@{k}": rate for k in ks}, "map": rate})
