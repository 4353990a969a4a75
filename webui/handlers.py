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
import re
from typing import Any, Callable
from pathlib import Path

import gradio as gr

from retrieval.errors import ImageError, LookalikeError
from retrieval.library import inside_root
from retrieval.metrics import METRICS
from retrieval.search import Hit, LookalikeIndex, check_k
from retrieval.compose import Term, split_weight

log = logging.getLogger(__name__)

DEFAULT_K = 5
MAX_UPLOAD_BYTES = 32 * 2 ** 20   # uploads (layout.MAX_UPLOAD; Gradio reads "32mb" as MiB) and data: URLs alike
LOADED_NAMES = {"model": "model", "store": "Chroma index"}
WARM_WAIT_S = 2.0   # a deep query during the app's warm-up waits this long, then gets "still loading"

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
            raise gr.Error(public_message(str(exc)), print_exception=False) from None
    return wrapper


# An absolute path in a message (not a URL's path, not "1/2"): shown relative to the app's folder,
# or by its last component, as the page shows paths (texts.shown_path). Rust panic lines go.
_ABS_PATH = re.compile(r"(?<![\w:/.~])/(?:[^\s'\"`:;,()<>/]+/)*[^\s'\"`:;,()<>/]+/?")
_PANIC = re.compile(r"panicked at|RUST_BACKTRACE")


def public_message(text: str) -> str:
    """What a web user may see of an error: no server paths, no Rust panic report."""
    from .texts import shown_path
    text = " ".join(ln for ln in text.splitlines() if not _PANIC.search(ln)) or "the request failed"
    return _ABS_PATH.sub(lambda m: shown_path(Path(m.group(0).rstrip("/"))), text)


def query_source(image: Any) -> str | bytes:
    """The uploaded file behind an Image payload (events run with preprocess=False, so our own
    load_image decodes it and reports problems; Gradio has already checked it is an upload)."""
    if isinstance(image, dict):
        if image.get("path"):
            return str(image["path"])
        url = image.get("url") or ""
        if url.startswith("data:") and "," in url:
            payload = url.split(",", 1)[1]
            if len(payload) // 4 * 3 > MAX_UPLOAD_BYTES:   # checked before decoding anything
                raise ImageError(f"the pasted image is about {len(payload) // 4 * 3 / 2 ** 20:.0f} MB; "
                                 f"the limit is {MAX_UPLOAD_BYTES >> 20} MB, as for uploads")
            try:
                return base64.b64decode(payload, validate=True)
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
        """Load the model (and Chroma, for HNSW) if needed; returns a note when this call loaded it.
        While the app's warm-up is still loading, wait at most WARM_WAIT_S, then refuse with a
        message (never a hang on the load lock, never a traceback)."""
        if self.index.parse_method(method).source != "pixel" and not self.index.wait_ready(WARM_WAIT_S):
            raise LookalikeError(f"the model is still loading ({self.index.loading_seconds() or 0:.0f} s so far); "
                                 "try again in a few seconds. Pixel search works meanwhile.")
        fresh, seconds = self.index.prepare(method)
        what = " and ".join(LOADED_NAMES[x] for x in sorted(fresh))
        return f" (this query first loaded the {what} in {seconds:.1f} s)" if fresh else ""

    def model_status(self) -> str:
        """The page's model line: loading, ready (and how long loading took), or why it failed."""
        if not self.index.manifest.embedder:
            return ""
        took = self.index.loading_seconds()
        if self.index.loading:
            return f"**loading the model…** ({took or 0:.0f} s so far). Pixel search works meanwhile."
        if self.index._warm_error:
            return (f"**loading the model failed:** {self.index._warm_error}. Pixel search works; "
                    "a deep query will try loading it again.")
        if took is None and "model" not in self.index.loaded():
            return "the model loads with the first deep query"
        return "model ready" + (f" (loaded in {took:.1f} s)" if took is not None else "")

    def _outputs(self, hits: list[Hit], seconds: float, method: str, note: str = "") -> Outputs:
        # An unlabelled library (a photo folder) has no class to show: the file name stands in.
        # Only files inside the library are served: a result that is (now) a symbolic link leading
        # out of it stays in the rows but its bytes are not handed to the gallery.
        served = [h for h in hits if inside_root(h.path, self.index.data_dir)]
        gallery = [(str(h.path), f"#{h.rank} {h.label or Path(h.rel).name} · {format_score(h.score)}") for h in served]
        rows = [{"rank": h.rank, "class": h.label, "score": h.score, "file": h.rel} for h in hits]
        if len(served) < len(hits):
            note += (f" · {len(hits) - len(served)} not shown: the file leads outside the library "
                     "(a symbolic link); rebuild the index")
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

    def composed(self, terms: str, image: Any, image_weight: Any, minus: str, method: str,
                 k: Any = DEFAULT_K) -> Outputs:
        """Text terms (one per line, 'W:text' weighs one), an optional image with its weight, and
        minus terms (one per line). Web text is always text: it is never read as a server path."""
        k = slider_k(k)
        parsed = composed_terms(terms, image, image_weight, minus)
        note = self._ready(method) if method in deep_methods(self.index) else ""
        hits, seconds = self.index.search_composed(parsed, method, k)
        return self._outputs(hits, seconds, method, note)


def composed_terms(terms: str, image: Any, image_weight: Any, minus: str) -> list[Term]:
    """The web form's fields as composed-query terms (see retrieval.compose)."""
    out: list[Term] = []
    for sign, block in ((1.0, terms), (-1.0, minus)):
        for line in (block or "").splitlines():
            if line.strip():
                weight, text = split_weight(line)
                if not text:
                    raise LookalikeError(f"the term {line.strip()!r} has a weight but no text")
                out.append(Term(sign * weight, text=text))
    if image is not None and image != "" and (not isinstance(image, dict) or image.get("path") or image.get("url")):
        weight = float(image_weight if image_weight not in (None, "") else 1.0)
        if weight != 0:
            out.append(Term(weight, image=query_source(image), name=upload_name(image)))
    return out



def deep_methods(index: LookalikeIndex) -> list[str]:
    return [m for m in index.methods if not m.startswith("pixel-")]


def method_label(index: LookalikeIndex, method: str) -> str:
    m = index.parse_method(method)
    kind = "Chroma HNSW (approximate)" if m.hnsw else "exact"
    return f"{method} — {kind}, {METRICS[m.metric].order}"

