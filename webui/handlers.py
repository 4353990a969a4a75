"""The web app's handlers: plain values in (an upload payload or path, a method, k), plain values out.

They return a gallery list of (path, caption), a status line and result rows, so tests can call
them without a server. Every `LookalikeError` becomes a `gr.Error` with the core's own message, so a
bad upload shows a clear message and the app keeps serving. The index is opened once by the
caller; nothing here rescans the library or re-embeds it per query. The model and Chroma load
lazily inside `LookalikeIndex` (under its own lock), and the status line says when a query waited
for that.
"""
from __future__ import annotations

import base64
import binascii
import functools
import logging
from typing import Any, Callable
from pathlib import Path

import gradio as gr

from retrieval.errors import ImageError, LookalikeError
from retrieval.metrics import METRICS
from retrieval.search import Hit, LookalikeIndex, check_k

log = logging.getLogger(__name__)

DEFAULT_K = 5
LOADED_NAMES = {"model": "model", "store": "Chroma index"}

Outputs = tuple[list[tuple[str, str]], str, list[dict[str, Any]]]


# -- handlers ---------------------------------------------------------------------------------
def user_errors(fn: Callable[..., Outputs]) -> Callable[..., Outputs]:
    """Show LookalikeError messages in the UI (and to API clients) without a server traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Outputs:
        try:
            return fn(*args, **kwargs)
        except LookalikeError as exc:
            log.info("refused query: %s", exc)
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


def query_source(image: Any) -> str | bytes:
    """The uploaded file behind an Image payload (events run with preprocess=False, so our own
    load_image decodes it and reports problems; Gradio has already checked it is an upload)."""
    if isinstance(image, dict):
        if image.get("path"):
            return str(image["path"])
        url = image.get("url") or ""
        if url.startswith("data:") and "," in url:
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=True)
            except (binascii.Error, ValueError):
                raise ImageError("the pasted image is not valid base64 data") from None
    elif isinstance(image, (str, Path)) and str(image):
        return str(image)
    raise ImageError("no query image: upload a photo, take one with the webcam, paste one from "
                     "the clipboard, or click an example below")


def upload_name(image: Any) -> str:
    """How messages call an upload: the user's own file name, never the server's cache path."""
    if isinstance(image, dict):
        name = image.get("orig_name") or (Path(image["path"]).name if image.get("path") else "")
        return f"the upload {name[:80]!r}" if name else "the pasted image"
    return f"the upload {Path(str(image)).name[:80]!r}"


def slider_k(k: Any) -> int:
    """A slider (or JSON client) may send k as a whole float such as 5.0; the index checks the rest."""
    return check_k(int(k) if isinstance(k, float) and k.is_integer() else k)


def format_score(score: float) -> str:
    return f"{score:,.0f}" if abs(score) >= 1000 else f"{score:.4f}"


def method_order(index: LookalikeIndex, method: str) -> str:
    metric = METRICS[index.parse_method(method).metric]
    return f"{metric.name}: {metric.formula}, {metric.order}"



class Searcher:
    """The handlers of one opened index."""

    def __init__(self, index: LookalikeIndex) -> None:
        self.index = index

    def _ready(self, method: str) -> str:
        """Load the model (and Chroma, for HNSW) if needed; returns a note when this call loaded it."""
        fresh, seconds = self.index.prepare(method)
        what = " and ".join(LOADED_NAMES[x] for x in sorted(fresh))
        return f" (this query first loaded the {what} in {seconds:.1f} s)" if fresh else ""

    def _outputs(self, hits: list[Hit], seconds: float, method: str, note: str = "") -> Outputs:
        gallery = [(str(h.path), f"#{h.rank} {h.label} · {format_score(h.score)}") for h in hits]
        rows = [{"rank": h.rank, "class": h.label, "score": h.score, "file": h.rel} for h in hits]
        status = (f"**{len(hits)} results in {seconds * 1000:.1f} ms**{note} · `{method}` · "
                  f"{method_order(self.index, method)}")
        return gallery, status, rows

    def _image_search(self, image: Any, method: str, k: Any) -> Outputs:
        k = slider_k(k)
        source = query_source(image)
        note = self._ready(method)
        hits, seconds = self.index.search(source, method, k, name=upload_name(image))
        return self._outputs(hits, seconds, method, note)

    def pixel(self, image: Any, metric: str, k: Any = DEFAULT_K) -> Outputs:
        if metric not in METRICS:
            raise LookalikeError(f"unknown pixel metric {metric!r}; choose one of {', '.join(METRICS)}")
        return self._image_search(image, f"pixel-{metric}", k)

    def deep(self, image: Any, method: str, k: Any = DEFAULT_K) -> Outputs:
        if method not in deep_methods(self.index):
            raise LookalikeError(f"unknown deep method {method!r}; choose one of "
                                 f"{', '.join(deep_methods(self.index)) or 'none (pixel-only index)'}")
        return self._image_search(image, method, k)

    def text(self, prompt: str, method: str, k: Any = DEFAULT_K) -> Outputs:
        k = slider_k(k)
        note = self._ready(method) if method in deep_methods(self.index) else ""
        hits, seconds = self.index.search_text(prompt, method, k)
        return self._outputs(hits, seconds, method, note)



def deep_methods(index: LookalikeIndex) -> list[str]:
    return [m for m in index.methods if not m.startswith("pixel-")]


def method_label(index: LookalikeIndex, method: str) -> str:
    m = index.parse_method(method)
    kind = "Chroma HNSW (approximate)" if m.hnsw else "exact"
    return f"{method} — {kind}, {METRICS[m.metric].order}"

