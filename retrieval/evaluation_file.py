"""`evaluation.json`, the index's scores: its records, written and read here and nowhere else.

The build and `evaluate` write it (`write`); the app, and `best_method`, read it (`load`, `read`).
A file can be damaged or old (a hand edit, a Hub pull, an older build), so a reader gets None and
`problem` says why, and the app starts all the same. The layout on disk:

  {"queries", "library", "classes", "pixel_size", "model",
   "chance": {"p@1", "p@5", "p@10", "map"},
   "methods": {name: {"p@1", "p@5", "p@10", "map", "map_ci", "ap_per_class", "ms_per_query"}},
   "protocol": "test",
   "kfold": {the k-fold report} or {"skipped": why}}

or, for a library without a test split, the k-fold report alone: {"protocol": "kfold", "folds",
"seed", "queries", "library", "classes", "pixel_size", "model", "chance", "rerank", "methods"},
whose methods carry "seconds" instead of "ms_per_query".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, Required, Sequence, TypedDict, Union, cast, final

from . import atomic
from .methods import Method
from .paths import EVALUATION

# One method's scores. "p@k" for the evaluated k (retrieval.scoring.KS); "ms_per_query" under the
# test protocol, "seconds" (the whole method) under k-fold.
Scores = TypedDict("Scores", {"p@1": float, "p@5": float, "p@10": float, "map": Required[float],
                              "map_ci": list[float], "ap_per_class": dict[str, float],
                              "ms_per_query": float, "seconds": float}, total=False)
# What a random ranking scores: the share of the library in the query's class, for every k and mAP.
Chance = TypedDict("Chance", {"p@1": float, "p@5": float, "p@10": float, "map": Required[float]}, total=False)


@final   # final: `"methods" in part` tells a k-fold report from a skipped one
class Skipped(TypedDict):
    """The k-fold part of a report that was not computed, and why."""

    skipped: str


@final
class KfoldReport(TypedDict):
    """Every image a query against the other folds (retrieval.kfold)."""

    protocol: Literal["kfold"]
    folds: int
    seed: int
    queries: int
    library: int                       # the mean library size of a fold
    classes: int
    pixel_size: int
    model: str | None
    chance: Chance
    rerank: dict[str, dict[str, Any]]  # source -> the re-ranking settings its methods were scored with
    methods: dict[str, Scores]


class SplitReport(TypedDict):
    """Every test image a query against the train library (retrieval.evaluate.evaluate_index)."""

    queries: int
    library: int
    classes: int
    pixel_size: int
    model: str | None
    chance: Chance
    methods: dict[str, Scores]
    protocol: Literal["test"]
    kfold: NotRequired[KfoldReport | Skipped]


Report = Union[SplitReport, KfoldReport]


def write(index_dir: Path, report: Report) -> None:
    """Write the report atomically: a reader sees the old file or the new one, never a part."""
    atomic.write_json(Path(index_dir) / EVALUATION, report)


def remove(index_dir: Path) -> None:
    """Drop the report (a rebuilt index is not the one it scored)."""
    (Path(index_dir) / EVALUATION).unlink(missing_ok=True)


@dataclass(frozen=True)
class Loaded:
    """What the index folder holds: the parsed report when usable, else why not (`problem`); both
    None when there is no evaluation.json."""

    json: dict[str, Any] | None
    problem: str | None = None

    @property
    def report(self) -> Report | None:
        return None if self.json is None else cast(Report, self.json)   # checked by problem() on the way in


def load(index_dir: Path) -> Loaded:
    """The index's evaluation.json, checked (see `problem`)."""
    path = Path(index_dir) / EVALUATION
    if not path.is_file():
        return Loaded(None)
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return Loaded(None, f"not readable JSON: {type(exc).__name__}")
    why = problem(raw)
    return Loaded(None, why) if why else Loaded(raw)


def read(index_dir: Path) -> Report | None:
    """The index's report, or None when there is none or it is unusable."""
    return load(index_dir).report


def problem(report: Any) -> str | None:
    """What makes a parsed evaluation.json unusable, or None: the fields its readers rely on."""
    if not isinstance(report, dict):
        return f"it holds a JSON {type(report).__name__}, not an object"
    chance = report.get("chance")
    if not isinstance(chance, dict) or not isinstance(chance.get("map"), (int, float)):
        return "it has no numeric chance.map"
    why = _scores_problem(report.get("methods", {}), "")
    kfold = report.get("kfold")
    if why is None and kfold is not None:
        why = "kfold is not an object" if not isinstance(kfold, dict) else \
            (_scores_problem(kfold.get("methods", {}), "kfold.") if kfold.get("methods") else None)
    return why


def _scores_problem(methods: Any, where: str) -> str | None:
    if not isinstance(methods, dict):
        return f"{where}methods is a JSON {type(methods).__name__}, not an object"
    for name, v in methods.items():
        if not isinstance(v, dict) or not all(isinstance(v.get(k), (int, float)) for k in ("map", "p@5")):
            return f"{where}method {name!r} lacks numeric map and p@5 scores"
    return None


def best_method(source: Path | str | Report | None, offered: Sequence[Method]) -> Method | None:
    """The offered method with the highest measured mAP: under the report's own protocol (the test
    split, or k-fold for a library without one), else under its k-fold part. `source`: an index
    folder or a report. None when there is no usable report or it scores none of `offered`."""
    report = read(Path(source)) if isinstance(source, (str, Path)) else source
    if report is None:
        return None
    by_name = {str(m): m for m in offered}
    for methods in _scored(report):
        maps = {name: s["map"] for name, s in methods.items() if name in by_name}
        if maps:
            return by_name[max(maps, key=lambda name: maps[name])]
    return None


def _scored(report: Report) -> list[dict[str, Scores]]:
    """The report's method scores, its own protocol's first, then its k-fold part's (if computed)."""
    if report["protocol"] == "kfold":
        return [report["methods"]]
    kfold = report.get("kfold")
    return [report["methods"]] + ([kfold["methods"]] if kfold is not None and "methods" in kfold else [])
