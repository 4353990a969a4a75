"""The app's warm-up: what a first query needs, loaded in the background at start-up.

A model takes seconds to load (a CLIP model, tens of seconds on a small CPU); without a warm-up
the first visitor's deep query pays for it. `WarmUp.start()` asks the index to prepare the methods
the page preselects in a daemon thread and returns at once, so the page is up while it loads and
pixel search never waits for it. The handlers ask `ready` / `wait_ready` before a deep query (a
bounded wait, then "still loading"), and the page's model line shows `loading`, `seconds()` and
`error`. A failed load is logged and kept in `error`, never raised: the next deep query tries
again through `index.prepare` and reports the error itself.

What the page preselects (TabDefaults): a visitor rarely changes a selector, so each search tab
starts on the best measured method of this index among that tab's choices (the index's
evaluation.json, retrieval.evaluation_file.best_method): the pixel tab among the pixel metrics, the
deep, text and composed selectors among the methods over embeddings; that choice is marked "best on
this library". Without a measurement (no evaluation.json, or it scores none of a tab's choices) a
tab keeps the plain default (pixel L1, the embeddings' cosine) and marks nothing.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Sequence

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


class WarmUp:
    """One background load per app, over one opened index. Not started: `ready` (nothing to wait
    for), `seconds()` None, and a deep query loads what it needs itself."""

    def __init__(self, index: LookalikeIndex) -> None:
        self.index = index
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
            for method in methods:
                self.index.prepare(method)
        except Exception as exc:   # kept for the page and the log; never kills the app
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("warming up failed (the first deep query will retry): %s", exc)
        finally:
            self._took = time.perf_counter() - self._started

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
