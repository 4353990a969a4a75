"""The app's warm-up: what a first query needs, loaded in the background at start-up.

A model takes seconds to load (a CLIP model, tens of seconds on a small CPU); without a warm-up
the first visitor's deep query pays for it. `WarmUp.start()` asks the index to prepare the methods
the page preselects in a daemon thread and returns at once, so the page is up while it loads and
pixel search never waits for it. The handlers ask `ready` / `wait_ready` before a deep query (a
bounded wait, then "still loading"), and the page's model line shows `loading`, `seconds()` and
`error`. A failed load is logged and kept in `error`, never raised: the next deep query tries
again through `index.prepare` and reports the error itself.

The calibration, measured once per machine: where the query model's precision is decided at start-up
(`--precision auto` on an index built in bf16, retrieval.embedders.precision.query_precision), the
model is timed in fp32 and in bf16 (8 model calls: about 5 of the 12 to 15 CPU-seconds an effnet
start-up takes on 2 vCPU, bench/RESULTS.md, app_latency). The warm-up keeps a clear verdict in a
small file (`calibration_cache()`, keyed by model, torch version, CPU and threads) and, at the next
start on the same machine, the model loads in the precision measured then, unmeasured. A close call
is measured again at every start. Delete the file to measure again.

What the page preselects (TabDefaults): a visitor rarely changes a selector, so each search tab
starts on the best measured method of this index among that tab's choices (the index's
evaluation.json, retrieval.evaluation_file.best_method): the pixel tab among the pixel metrics, the
deep, text and composed selectors among the methods over embeddings; that choice is marked "best on
this library". Without a measurement (no evaluation.json, or it scores none of a tab's choices) a
tab keeps the plain default (pixel L1, the embeddings' cosine) and marks nothing.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from retrieval import evaluation_file
from retrieval.methods import PIXEL, PIXEL_DEFAULT, Method
from retrieval.metrics import METRICS
from retrieval.search import LookalikeIndex

log = logging.getLogger(__name__)

BEST = "best on this library"


def pixel_choices() -> list[Method]:
    """The pixel tab's choices: one exact pixel method per metric (the tab picks a metric)."""
    return [Method(PIXEL, metric) for metric in METRICS]


def deep_choices(index: LookalikeIndex) -> list[Method]:
    """The deep, text and composed selectors' choices: every method over the embeddings."""
    return [m for m in index.offered if not m.pixel]


@dataclass(frozen=True)
class TabDefaults:
    """The method each selector starts on, and which of them a measurement chose (marked)."""

    pixel: Method
    deep: Method
    measured: frozenset[Method] = frozenset()   # the preselected methods that evaluation.json chose

    @classmethod
    def of(cls, index: LookalikeIndex) -> "TabDefaults":
        """Read the index's evaluation.json once and pick each tab's best; plain defaults without it."""
        report = evaluation_file.read(index.index_dir)
        deep = deep_choices(index)
        best_pixel = evaluation_file.best_method(report, pixel_choices())
        best_deep = evaluation_file.best_method(report, deep) if deep else None
        return cls(best_pixel or PIXEL_DEFAULT, best_deep or index.default_method,
                   frozenset(m for m in (best_pixel, best_deep) if m is not None))

    def marked(self, method: Method) -> bool:
        """True for the method a tab starts on because it measured best."""
        return method in self.measured

    def label(self, method: Method, name: str, detail: str) -> str:
        """A selector's label for `method`: its name, the marker when it measured best (before the
        detail, so a narrow selector that cuts its end still shows it), then the detail."""
        return f"{name} · {BEST} — {detail}" if self.marked(method) else f"{name} — {detail}"


def default_methods(index: LookalikeIndex) -> list[Method]:
    """What the page preselects (TabDefaults: the best measured, else the plain defaults): the
    pixel tab's metric (pixel L1's pruner builds pooled copies, well under a second, so first),
    the deep method, and its HNSW twin when the index offers one."""
    tabs = TabDefaults.of(index)
    out = [tabs.pixel]
    deep = tabs.deep
    if not deep.pixel:
        out.append(deep)
        twin = replace(deep, hnsw=True)
        if twin in index.offered:
            out.append(twin)
    return out


def calibration_cache() -> Path | None:
    """Where the app keeps its precision calibration: $XDG_CACHE_HOME/lookalike (default
    ~/.cache/lookalike)/calibration.json; None without a home folder."""
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:
        return None
    return root / "lookalike" / "calibration.json"


class WarmUp:
    """One background load per app, over one opened index. Not started: `ready` (nothing to wait
    for), `seconds()` None, and a deep query loads what it needs itself. With `calibration_cache`,
    a precision calibration is measured once per machine (see the module docstring)."""

    def __init__(self, index: LookalikeIndex, calibration_cache: Path | None = None) -> None:
        self.index = index
        self.calibration_cache = calibration_cache
        self.recalled: dict[str, Any] | None = None   # the remembered calibration this start used, if any
        self.error: str | None = None          # why the load failed ("ModelError: ..."), or None
        self._thread: threading.Thread | None = None
        self._started: float | None = None     # perf_counter at start()
        self._took: float | None = None        # seconds, once the thread is done

    def start(self, methods: Sequence[Method] | None = None) -> threading.Thread:
        """Start loading what `methods` need (default: default_methods) and return at once; a
        second call returns the running (or finished) thread."""
        if self._thread is not None:
            return self._thread
        todo = list(default_methods(self.index) if methods is None else methods)
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._load, args=(todo,), name="lookalike-warm-up", daemon=True)
        self._thread.start()
        return self._thread

    def _load(self, methods: list[Method]) -> None:
        assert self._started is not None
        try:
            self._recall_precision()
            for method in methods:
                self.index.prepare(method)
            self._remember_precision()
        except Exception as exc:   # kept for the page and the log; never kills the app
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("warming up failed (the first deep query will retry): %s", exc)
        finally:
            self._took = time.perf_counter() - self._started

    def _recall_precision(self) -> None:
        """Where a calibration would decide the query model's precision, use the one remembered for
        this model on this machine (the index then loads the model in that precision, unmeasured)."""
        built = self.index.manifest.embedder
        if self.calibration_cache is None or not built:
            return
        from retrieval.embedders import precision
        if precision.query_precision(self.index.precision, built.precision) != "auto":
            return
        self.recalled = precision.recall(self.calibration_cache, built.spec)
        if self.recalled:
            self.index.precision = self.recalled["precision"]
            log.info("precision %s for queries, as calibrated on this machine on %s (%s); kept in %s",
                     self.recalled["precision"], self.recalled.get("measured"), self.recalled.get("why"),
                     self.calibration_cache)

    def _remember_precision(self) -> None:
        """Keep the calibration this start measured (if it measured one) for the next start."""
        if self.calibration_cache is None or self.recalled or "model" not in self.index.loaded():
            return
        from retrieval.embedders import precision
        embedder = self.index.embedder
        if precision.remember(self.calibration_cache, embedder.spec, embedder.precision, embedder.precision_record):
            log.info("calibration kept in %s for the next start", self.calibration_cache)

    @property
    def loading(self) -> bool:
        """True while the background load runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        """A deep query will not wait for the warm-up: it finished, or never started."""
        return not self.loading

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the warm-up; True when it is done (or never started)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def seconds(self) -> float | None:
        """Seconds the warm-up has run so far (while loading) or took (when done); None: not started."""
        if self._took is not None:
            return self._took
        return None if self._started is None else time.perf_counter() - self._started
