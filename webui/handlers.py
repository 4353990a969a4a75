"""The web app's handlers: plain values in (an upload payload, a method, k), plain values out.

They return a gallery list of (path, caption), a status line and result rows, so tests can call
them without a server. Every `LookalikeError` becomes a `gr.Error` with the core's own message, so a
bad upload shows a clear message and the app keeps serving. The index is opened once by the
caller; nothing here rescans the library or re-embeds it per query. The model and Chroma load
lazily inside `LookalikeIndex` (under its own lock), or in the background at start-up
(webui.warmup), and the status line says when a query waited for that.

What a client sends is checked before anything uses it: a query image is an upload or a library
image (QueryFiles), never a server path the client names; every text field has a length bound and
a type; messages echo a user's value at most ECHO_CHARS long.
"""
from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
import re
from typing import Any, Callable, Iterable, ParamSpec, TypeVar
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from retrieval.errors import ImageError, LookalikeError, Remedy
from retrieval.library import inside_root
from retrieval.methods import PIXEL, Method
from retrieval.metrics import METRICS
from retrieval.search import MAX_K, MAX_TEXT_CHARS, Hit, LookalikeIndex, check_k
from retrieval.compare import Marks, mark_hits, readable_legend, test_labels
from retrieval.compose import MAX_TERMS, Term, split_weight

from .results import GalleryItem, gallery, marks_line
from .warmup import WarmUp

log = logging.getLogger(__name__)

DEFAULT_K = 5
MAX_UPLOAD_BYTES = 32 * 2 ** 20   # uploads (layout.MAX_UPLOAD; Gradio reads "32mb" as MiB) and data: URLs alike
LOADED_NAMES = {"model": "model", "store": "Chroma index"}
WARM_WAIT_S = 2.0   # a deep query during the app's warm-up waits this long, then gets "still loading"
ECHO_CHARS = 40                 # a user's value repeated in a message: its first 40 characters and "…"
MAX_MESSAGE_CHARS = 600         # any refusal, as shown and logged
MAX_NAME_CHARS = 100            # a metric or method name (the real ones are under 40)
MAX_TERM_CHARS = MAX_TEXT_CHARS + 16                   # one composed term: "W:" and the text
MAX_TERMS_CHARS = MAX_TERMS * (MAX_TERM_CHARS + 1)     # a whole terms (or minus) box
MAX_PATH_CHARS = 4096
MAX_IMAGE_WEIGHT = 5.0          # the composed query's image weight: the page's slider is 0..5
NOT_AN_UPLOAD = ("the query image must be an upload: upload a photo, take one with the webcam, paste one "
                 "or click an example (a file named by its path or URL is not read)")
_HASH_FOLDER = re.compile(r"[0-9a-f]{16,128}")   # Gradio keeps each upload in a folder named by its hash

Outputs = tuple[list[GalleryItem], str, list[dict[str, Any]]]   # gallery, status line, rows as data
P = ParamSpec("P")
T = TypeVar("T")


# -- handlers ---------------------------------------------------------------------------------
def user_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Show LookalikeError messages in the UI (and to API clients) without a server traceback;
    an error's remedy (Remedy) is said for a visitor: who can act on it."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except LookalikeError as exc:
            remedy = f" {remedy_words(exc.remedy)}" if exc.remedy is not None else ""
            message = bounded(str(exc), MAX_MESSAGE_CHARS - len(remedy))
            log.info("refused query: %s", message)
            if remedy:
                message = message.rstrip(". ") + "." + remedy
            raise gr.Error(public_message(message), print_exception=False) from None
    return wrapper


def remedy_words(remedy: Remedy, detail: str = ".") -> str:
    """A remedy as the web page says it: a visitor cannot rebuild or restart anything, so the page
    names who can, in plain words (the command line names its flags instead: retrieval.cli)."""
    return f"Whoever runs this app can {remedy.value}{detail}"


# An absolute path in a message (not a URL's path, not "1/2"): shown relative to the app's folder,
# or by its last component, as the page shows paths (texts.shown_path). Rust panic lines go.
_ABS_PATH = re.compile(r"(?<![\w:/.~])/(?:[^\s'\"`:;,()<>/]+/)*[^\s'\"`:;,()<>/]+/?")
_PANIC = re.compile(r"panicked at|RUST_BACKTRACE")


def public_message(text: str) -> str:
    """What a web user may see of an error: no server paths, no Rust panic report."""
    from .texts import shown_path
    text = " ".join(ln for ln in text.splitlines() if not _PANIC.search(ln)) or "the request failed"
    return _ABS_PATH.sub(lambda m: shown_path(Path(m.group(0).rstrip("/"))), text)


# -- what a user sends: bounded before it is parsed, echoed or logged ---------------------------
def bounded(text: str, limit: int = ECHO_CHARS) -> str:
    """At most `limit` characters of a text, with "…" when it was cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def echo(value: Any) -> str:
    """A user's value as a message may repeat it: a short repr, whatever its size or type."""
    if isinstance(value, str):
        return repr(bounded(value))
    if isinstance(value, (bool, int, float)) or value is None:
        return bounded(repr(value))
    return json_kind(value)


def json_kind(value: Any) -> str:
    """How an API client would call a value's type (the JSON it sent)."""
    kinds = ((bool, "true/false"), (str, "text"), ((int, float), "a number"), (dict, "a JSON object"),
             ((list, tuple), "a JSON list"), (type(None), "null"))
    return next((name for types, name in kinds if isinstance(value, types)), type(value).__name__)


def text_field(value: Any, what: str, limit: int, *, optional: bool = False) -> str:
    """A text field from the page or the API: a string of at most `limit` characters (surrounding
    spaces aside), checked before anything parses it."""
    if optional and value is None:
        return ""
    if not isinstance(value, str):
        raise LookalikeError(f"the {what} must be text, not {json_kind(value)}")
    if len(value) > limit and len(value.strip()) > limit:
        raise LookalikeError(f"the {what} is {len(value):,} characters long; the limit is {limit}")
    return value


def slider_k(k: Any) -> int:
    """A slider (or JSON client) may send k as a whole float such as 5.0; anything else but a whole
    number from 1 to MAX_K is refused (check_k says the same, but echoes the value unbounded)."""
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise LookalikeError(f"k must be a whole number from 1 to {MAX_K}, got {echo(k)}")
    return check_k(k)


def image_term_weight(value: Any) -> float:
    """The composed query's image weight: a finite number from 0 to MAX_IMAGE_WEIGHT (the slider's
    range); missing means 1. nan, inf and out-of-range numbers are refused, not clipped."""
    if value is None or (isinstance(value, str) and not value):
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_IMAGE_WEIGHT:
        raise LookalikeError(f"the image weight must be a number from 0 to {MAX_IMAGE_WEIGHT:g}, got {echo(value)}")
    return float(value)


# -- which files a query may name ----------------------------------------------------------------
class QueryFiles:
    """The files a web query may name: what Gradio received as an upload (its upload folder, where
    the gallery's and the examples' copies live too) and the library images the page offers (the
    index's manifest entries and the test-split examples). Every other path a client names is
    refused with one message (NOT_AN_UPLOAD), whatever is or is not there, so a client can neither
    make the app read a server file nor learn from its answers which files exist."""

    def __init__(self, index: LookalikeIndex, examples: Iterable[str | Path] = ()) -> None:
        self.index = index
        self.root = os.path.abspath(index.data_dir)
        self.examples = frozenset(os.path.abspath(e) for e in examples)

    @classmethod
    def for_index(cls, index: LookalikeIndex) -> "QueryFiles":
        """The index's own files and its test-split examples (what build_demo offers)."""
        from .texts import test_examples
        return cls(index, test_examples(index.data_dir)[0])

    def check(self, raw: Any, *, uploads_only: bool = False) -> str | None:
        """The path to decode when `raw` names an upload (or, unless `uploads_only`, a library
        image); None otherwise."""
        raw = str(raw) if isinstance(raw, Path) else raw
        if (not isinstance(raw, str) or not 0 < len(raw) <= MAX_PATH_CHARS or "\0" in raw
                or not os.path.isabs(raw) or any(p in (".", "..") for p in re.split(r"[\\/]", raw))):
            return None
        path = os.path.abspath(raw)
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):   # e.g. a lone surrogate from a JSON "\ud800" escape
            return None
        if not os.path.isfile(real):
            return None
        if _uploaded(real) or not uploads_only and (path in self.examples or library_file(self.index, path)):
            return path
        return None

    def source(self, raw: Any) -> str:
        """check(), or the one refusal."""
        path = self.check(raw)
        if path is None:
            raise ImageError(NOT_AN_UPLOAD)
        return path


def _uploaded(real: str) -> bool:
    """A file Gradio stored on upload (or copied for the page): <upload folder>/<hash>/<name>."""
    try:
        parts = Path(os.path.relpath(real, os.path.realpath(get_upload_folder()))).parts
    except ValueError:   # another drive (Windows)
        return False
    return len(parts) == 2 and bool(_HASH_FOLDER.fullmatch(parts[0]))


def library_file(index: LookalikeIndex, path: str | Path) -> bool:
    """True for an image the index holds (by its manifest entry), named by its path in the library
    and not a symbolic link out of it: what the app serves and accepts from the library folder."""
    root = os.path.abspath(index.data_dir)
    rel = os.path.relpath(os.path.abspath(path), root)
    return (not rel.startswith("..") and index.holds(Path(rel).as_posix())
            and inside_root(path, root))


def query_source(image: Any, files: QueryFiles | None = None) -> str | bytes:
    """The image behind an Image payload (events run with preprocess=False, so our own load_image
    decodes it and reports problems): a file `files` accepts (an upload or a library image) or a
    pasted data: URL. A path or URL named by the client is refused, never read or fetched."""
    problem = payload_problem(image, files)
    if problem:
        log.info("refused a query image: %s", echo(image.get("path") or image.get("url")
                                                     if isinstance(image, dict) else image))
        raise ImageError(problem)
    path = image.get("path") if isinstance(image, dict) else image
    if path:
        assert files is not None   # payload_problem accepts a path only when `files` does
        return files.source(path)
    url = image.get("url") if isinstance(image, dict) else None
    if url:
        return _data_url(url)
    raise ImageError("no query image: upload a photo, take one with the webcam, paste one from "
                     "the clipboard, or click an example below")


def payload_problem(image: Any, files: QueryFiles | None, *, uploads_only: bool = False) -> str | None:
    """Why a query-image payload is refused before anything reads it; None for no image, a file
    `files` accepts, or a data: URL (checked when it is decoded). The web app's guard asks this too
    (webui.limits.ApiGuard), with `uploads_only` for a FileData payload, which Gradio itself takes
    only from its upload folder."""
    if image is None or image == "":
        return None
    if isinstance(image, dict):
        path, url = image.get("path"), image.get("url")
        if not path:
            return None if not url or (isinstance(url, str) and url.startswith("data:")) else NOT_AN_UPLOAD
    elif isinstance(image, (str, Path)):
        path = image
    else:
        return f"the query image must be an uploaded image, not {json_kind(image)}"
    return None if files is not None and files.check(path, uploads_only=uploads_only) else NOT_AN_UPLOAD


def _data_url(url: str) -> bytes:
    """A pasted image's bytes, refused over the upload cap before anything is decoded."""
    payload = url.split(",", 1)[1] if "," in url else ""
    if len(payload) // 4 * 3 > MAX_UPLOAD_BYTES:
        raise ImageError(f"the pasted image is about {len(payload) // 4 * 3 / 2 ** 20:.0f} MB; "
                         f"the limit is {MAX_UPLOAD_BYTES >> 20} MB, as for uploads")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("the pasted image is not valid base64 data") from None


def upload_name(image: Any) -> str:
    """How messages call an upload: the user's own file name, never the server's cache path."""
    if isinstance(image, dict):
        orig, path = image.get("orig_name"), image.get("path")
        name = orig if isinstance(orig, str) and orig else (Path(path).name if isinstance(path, str) and path else "")
        return f"the upload {name[:80]!r}" if name else "the pasted image"
    return f"the upload {Path(str(image)).name[:80]!r}"


def method_order(index: LookalikeIndex, method: str) -> str:
    metric = METRICS[index.parse_method(method).metric]
    return f"{metric.name}: {metric.formula}, {metric.order}"


class Searcher:
    """The handlers of one opened index. `files` says which files a query may name (default: the
    index's uploads, library images and test-split examples, QueryFiles.for_index); `warm` is the
    app's start-up load (default: one never started, so a deep query loads what it needs); `known`:
    the test split's classes by content (retrieval.compare.test_labels; default: read here)."""

    def __init__(self, index: LookalikeIndex, files: QueryFiles | None = None, warm: WarmUp | None = None,
                 known: dict[str, str] | None = None) -> None:
        self.index = index
        self.files = files or QueryFiles.for_index(index)
        self.warm = warm or WarmUp(index)
        # the test split's classes by content: an example comes back from the browser as a copy
        self.known = test_labels(index) if known is None else known

    def check_method(self, method: Any, choices: list[str], what: str = "method") -> str:
        """A method name from the page or the API: text, bounded, one this index offers."""
        method = text_field(method, what, MAX_NAME_CHARS)
        if method not in choices:
            raise LookalikeError(f"unknown {what} {echo(method)}; choose one of "
                                 f"{', '.join(choices) or 'none (pixel-only index)'}")
        return method

    def ready(self, method: str) -> str:
        """Load the model (and Chroma, for HNSW) if needed; returns a note when this call loaded it.
        While the app's warm-up is still loading, wait at most WARM_WAIT_S, then refuse with a
        message (never a hang on the load lock, never a traceback)."""
        if not self.index.parse_method(method).pixel and not self.warm.wait_ready(WARM_WAIT_S):
            raise LookalikeError(f"the model is still loading ({self.warm.seconds() or 0:.0f} s so far); "
                                 "try again in a few seconds. Pixel search works meanwhile.")
        fresh, seconds = self.index.prepare(method)
        what = " and ".join(LOADED_NAMES.get(x, x) for x in sorted(fresh))
        return f" (this query first loaded the {what} in {seconds:.1f} s)" if fresh else ""

    def model_status(self) -> str:
        """The page's model line: loading, ready (and how long loading took), or why it failed."""
        if not self.index.manifest.embedder:
            return ""
        took = self.warm.seconds()
        if self.warm.loading:
            return f"**loading the model…** ({took or 0:.0f} s so far). Pixel search works meanwhile."
        if self.warm.error:
            return (f"**loading the model failed:** {public_message(bounded(self.warm.error, MAX_MESSAGE_CHARS))}. "
                    "Pixel search works; a deep query will try loading it again.")
        if took is None and "model" not in self.index.loaded():
            return "the model loads with the first deep query"
        return "model ready" + (f" (loaded in {took:.1f} s)" if took is not None else "")

    def outputs(self, hits: list[Hit], seconds: float, method: str, note: str = "",
                 marks: Marks | None = None) -> Outputs:
        """The gallery (framed where right and wrong are known), the status line and the raw rows.
        Only files inside the library are served: a result that is (now) a symbolic link leading
        out of it stays in the rows but its bytes are not handed to the gallery."""
        m = self.index.parse_method(method)
        correct = marks.correct if marks else None
        served = [i for i, h in enumerate(hits) if inside_root(h.path, self.index.data_dir)]
        shown = gallery([hits[i] for i in served], m, self.index.manifest.pixel_size ** 2 * 3,
                        None if correct is None else [correct[i] for i in served])
        rows = [{"rank": h.rank, "class": h.label, "score": h.score, "file": h.rel,
                 "correct": None if correct is None else correct[i]} for i, h in enumerate(hits)]
        if len(served) < len(hits):
            note += (f" · {len(hits) - len(served)} not shown: the file leads outside the library "
                     "(a symbolic link); rebuild the index")
        verdict = f" · {marks_line(marks)}" if marks else ""
        status = (f"**{len(hits)} results in {seconds * 1000:.1f} ms**{note}{verdict} · `{method}` · "
                  f"{method_order(self.index, method)} · {readable_legend(m)}")
        return shown, status, rows

    def _image_search(self, image: Any, method: str, k: Any) -> Outputs:
        k = slider_k(k)
        source = query_source(image, self.files)
        note = self.ready(method)
        hits, seconds = self.index.search(source, method, k, name=upload_name(image))
        return self.outputs(hits, seconds, method, note, mark_hits(self.index, source, hits, self.known))

    def pixel(self, image: Any, metric: Any, k: Any = DEFAULT_K) -> Outputs:
        metric = self.check_method(metric, list(METRICS), "pixel metric")
        return self._image_search(image, str(Method(PIXEL, metric)), k)

    def deep(self, image: Any, method: Any, k: Any = DEFAULT_K) -> Outputs:
        method = self.check_method(method, deep_methods(self.index), "deep method")
        return self._image_search(image, method, k)

    def text(self, prompt: Any, method: Any, k: Any = DEFAULT_K) -> Outputs:
        k = slider_k(k)
        prompt = text_field(prompt, "text prompt", MAX_TEXT_CHARS, optional=True)
        method = self.check_method(method, self.index.methods)
        note = self.ready(method) if method in deep_methods(self.index) else ""
        hits, seconds = self.index.search_text(prompt, method, k)
        return self.outputs(hits, seconds, method, note)

    def composed(self, terms: Any, image: Any, image_weight: Any, minus: Any, method: Any,
                 k: Any = DEFAULT_K) -> Outputs:
        """Text terms (one per line, 'W:text' weighs one), an optional image with its weight, and
        minus terms (one per line). Web text is always text: it is never read as a server path."""
        k = slider_k(k)
        method = self.check_method(method, self.index.methods)
        parsed = composed_terms(terms, image, image_weight, minus, self.files)
        note = self.ready(method) if method in deep_methods(self.index) else ""
        hits, seconds = self.index.search_composed(parsed, method, k)
        return self.outputs(hits, seconds, method, note)


def composed_terms(terms: Any, image: Any, image_weight: Any, minus: Any,
                   files: QueryFiles | None = None) -> list[Term]:
    """The web form's fields as composed-query terms (see retrieval.compose); the image, when
    there is one, must be a file `files` accepts or a pasted data: URL (query_source)."""
    out: list[Term] = []
    for sign, what, block in ((1.0, "terms", terms), (-1.0, "minus terms", minus)):
        for line in text_field(block, what, MAX_TERMS_CHARS, optional=True).splitlines():
            if not line.strip():
                continue
            if len(line.strip()) > MAX_TERM_CHARS:
                raise LookalikeError(f"the term {echo(line.strip())} is {len(line.strip()):,} characters "
                                     f"long; the limit is {MAX_TEXT_CHARS}")
            weight, text = split_weight(line)
            if not text:
                raise LookalikeError(f"the term {echo(line.strip())} has a weight but no text")
            out.append(Term(sign * weight, text=text))
    weight = image_term_weight(image_weight)
    if image is not None and image != "" and (not isinstance(image, dict) or image.get("path") or image.get("url")):
        if weight != 0:
            out.append(Term(weight, image=query_source(image, files), name=upload_name(image)))
    return out



def deep_methods(index: LookalikeIndex) -> list[str]:
    """The names of the index's methods over embeddings (the deep tabs' choices)."""
    return [str(m) for m in index.offered if not m.pixel]


def method_detail(index: LookalikeIndex, method: str) -> str:
    """What a method's selector label says after its name: exact or HNSW, and its sort order."""
    m = index.parse_method(method)
    kind = "Chroma HNSW (approximate)" if m.hnsw else "exact"
    return f"{kind}, {METRICS[m.metric].order}"

