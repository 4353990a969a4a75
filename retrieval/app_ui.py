"""The Gradio front end: tab layout and the small handlers behind each endpoint.

Handlers take plain values (an upload payload or path, a method, k) and return plain values (a
gallery list of (path, caption), a status line, result rows), so tests can call them without a
server. Every `LookalikeError` becomes a `gr.Error` with the library's own message, so a bad
upload shows a clear message and the app keeps serving. The index is opened once by the caller;
nothing here rescans the library or re-embeds it per query. A deep model is loaded on the first
deep query (pixel-only use never imports torch), under a lock so concurrent first queries load it once.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from .errors import ImageError, LibraryError, LookalikeError
from .library import scan_split
from .manifest import EVALUATION
from .metrics import METRICS
from .search import MAX_K, MAX_TEXT_CHARS, Hit, LookalikeIndex, check_k

log = logging.getLogger(__name__)

DEFAULT_K = 5
EXAMPLES_PER_PAGE = 15
MAX_UPLOAD = "32mb"          # the upload route refuses more; load_image refuses > 64 Mpx after that
CONCURRENCY = 2              # the Spaces CPU Basic tier has 2 vCPU
PIXEL_CONCURRENCY = 4        # pixel queries are a few ms of numpy; let more of them overlap
QUEUE_SIZE = 64
IMAGE_SOURCES = ["upload", "webcam", "clipboard"]
ATTRIBUTION = "ATTRIBUTION.json"
LOADED_NAMES = {"model": "model", "store": "Chroma index"}

Outputs = tuple[list[tuple[str, str]], str, list[dict[str, Any]]]

# Why a metric ranks as it does, in one clause (the Evaluation tab's explanation of a pixel winner).
METRIC_WHY = {
    "l1": "adds up absolute differences, so a few very different pixels weigh less than with L2",
    "l2": "averages squared differences, so large local differences dominate",
    "cosine": "compares the direction of the vectors, ignoring their overall scale (e.g. brightness)",
    "corr": "centres and scales each vector first, ignoring shifts in brightness and contrast",
}


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
        self._load_lock = threading.Lock()
        self._loaded: set[str] = set()     # "model", "store": what the first deep queries loaded

    def _ready(self, method: str) -> str:
        """Load the model (and Chroma, for HNSW) once; returns a note when this call loaded it."""
        m = self.index.parse_method(method)
        if m.source == "pixel":
            return ""
        needed = {"model", "store"} if m.hnsw else {"model"}
        if needed <= self._loaded:
            return ""
        with self._load_lock:
            t0 = time.perf_counter()
            self.index.embedder          # lazy properties of LookalikeIndex: the first use loads them
            if m.hnsw:
                self.index.store
            fresh = needed - self._loaded
            self._loaded |= needed
        what = " and ".join(LOADED_NAMES[x] for x in sorted(fresh))
        return f" (this query first loaded the {what} in {time.perf_counter() - t0:.1f} s)" if fresh else ""

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


# -- static content ---------------------------------------------------------------------------
def deep_methods(index: LookalikeIndex) -> list[str]:
    return [m for m in index.methods if not m.startswith("pixel-")]


def method_label(index: LookalikeIndex, method: str) -> str:
    m = index.parse_method(method)
    kind = "Chroma HNSW (approximate)" if m.hnsw else "exact"
    return f"{method} — {kind}, {METRICS[m.metric].order}"


def read_evaluation(index_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(index_dir) / EVALUATION).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def explain_winner(report: dict[str, Any]) -> str:
    """Which method wins on mAP, by how much, and why that kind of method wins."""
    methods = report.get("methods") or {}
    if not methods:
        return "The evaluation holds no methods."
    best, r = max(methods.items(), key=lambda kv: kv[1]["map"])
    chance = report["chance"]["map"]
    out = [f"**{best}** wins with mAP {r['map']:.3f} ({r['map'] / max(chance, 1e-9):.1f}× chance, {chance:.3f}); "
           f"its P@5 of {r['p@5']:.2f} means {r['p@5'] * 5:.1f} of the top 5 results share the query's class on average."]
    pixel = {n: v for n, v in methods.items() if n.startswith("pixel-")}
    size = report.get("pixel_size", "?")
    if not best.startswith("pixel-") and pixel:
        bp, bv = max(pixel.items(), key=lambda kv: kv[1]["map"])
        out.append(
            f"The best pixel metric, {bp}, reaches {bv['map']:.3f}, so the deep features are "
            f"{r['map'] / max(bv['map'], 1e-9):.1f}× better. Pixels compare the colour at each position of a "
            f"{size}×{size} thumbnail: a photo matches others with similar colours and layout, whatever they show. "
            f"Deep features ({report.get('model')}) describe shapes, textures and object parts learned from "
            "millions of photos, so two different photos of the same kind of thing land close together.")
    else:
        metric = best.split("-")[-1]
        out.append(f"Among pixel metrics {metric} does best here: it {METRIC_WHY.get(metric, '')}. "
                   "An index built with a deep model (`--model effnet` or CLIP) does far better.")
    for name, v in methods.items():
        if "-hnsw-" in name:
            exact = name.replace("-hnsw-", "-")
            if exact in methods:
                out.append(f"{name} (Chroma's approximate HNSW graph) scores {v['map']:.3f} against "
                           f"{methods[exact]['map']:.3f} for exact {exact}: at this library size it finds "
                           "(almost) the same neighbours.")
                break
    return "\n\n".join(out)


def evaluation_markdown(index: LookalikeIndex) -> str:
    from .evaluate import format_table
    report = read_evaluation(index.index_dir)
    if report is None:
        return (f"No `{EVALUATION}` in the index folder. Write it with "
                f"`python -m retrieval evaluate --index {index.index_dir} --save` "
                "(or rebuild the index without `--no-eval`).")
    return (f"Every test image is a query against the train library; a result is relevant when it has "
            f"the query's class. P@k is the share of relevant results in the top k; mAP averages precision "
            f"over the whole ranking. Computed when the index was built (`{EVALUATION}`).\n\n"
            f"{format_table(report)}\n\n{explain_winner(report)}")


def read_attribution(data_dir: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads((Path(data_dir) / ATTRIBUTION).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key} ({n})" for key, n in counter.most_common()) or "unknown"


def about_markdown(index: LookalikeIndex, test_counts: Counter) -> str:
    m = index.manifest
    train = Counter(m.labels)
    rows = "\n".join(f"| {c} | {train[c]} | {test_counts.get(c, 0)} |" for c in sorted(set(train) | set(test_counts)))
    records = read_attribution(index.data_dir)
    if records:
        sources = _counts(Counter(r.get("package") or r.get("source") or "unknown" for r in records))
        licences = _counts(Counter(r.get("licence_id") or r.get("licence") or "unknown" for r in records))
        credits = (f"**Sources:** {sources}.\n\n**Licences:** {licences}.\n\nPer-image credits (author, "
                   f"licence, original file) are in `{ATTRIBUTION}` and `ATTRIBUTION.md` in the library folder.")
    else:
        credits = f"No `{ATTRIBUTION}` in the library folder, so sources and licences are not known here."
    emb = m.embedder
    model = (f"`{emb['spec']}`: {emb['dim']}-d vectors, "
             f"{'with' if emb.get('has_text') else 'no'} text encoder" if emb else "none (pixel-only index)")
    chroma = f"Chroma collections `{m.chroma['prefix']}-*` ({m.chroma['mode']})" if m.chroma else "no Chroma collections"
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items())
    build_model = emb["source"] if emb else "none"
    return f"""### Library
{len(m.items)} library (train) images in {len(train)} classes, {sum(test_counts.values())} test images used as examples and queries.

| class | library | test |
|---|---|---|
{rows}

{credits}

### Model
{model}. Pixel search compares {m.pixel_size}×{m.pixel_size} RGB thumbnails.

### Index
`{index.index_dir}` over the library `{index.data_dir}`: {len(m.items)} images, {chroma}.
Built with {versions}.

### Rebuild
```
python build_index.py sample --out data            # the offline sample library (or your own data/train/<class>/*)
python build_index.py index --data data --index index --model {build_model}
python app.py --index index
```
Re-running `index` re-embeds only new or changed images. Methods: {', '.join(f'`{x}`' for x in index.methods)}."""


def test_examples(data_dir: Path) -> tuple[list[str], Counter]:
    """Test-split images (paths) for gr.Examples, and their class counts."""
    try:
        items = scan_split(data_dir, "test")
    except LibraryError as exc:
        log.info("no examples: %s", exc)
        return [], Counter()
    return [str(it.path(data_dir)) for it in items], Counter(it.label for it in items)


# -- layout -----------------------------------------------------------------------------------
def _results(tab: str) -> tuple[gr.Gallery, gr.Markdown, gr.JSON]:
    gallery = gr.Gallery(label="Results", columns=5, height="auto", object_fit="contain", elem_id=f"{tab}-results")
    status = gr.Markdown(elem_id=f"{tab}-status")
    with gr.Accordion("Results as data", open=False):
        rows = gr.JSON(label="Results (rank, class, score, file)")
    return gallery, status, rows


def _image_input(examples: list[str], elem_id: str) -> gr.Image:
    image = gr.Image(label="Query image", type="filepath", sources=IMAGE_SOURCES, image_mode=None,
                     height=280, elem_id=elem_id)
    if examples:
        gr.Examples(examples, inputs=image, label="Test-split images (click one, then Search)",
                    examples_per_page=EXAMPLES_PER_PAGE, cache_examples=False)
    return image


def _k_slider(elem_id: str) -> gr.Slider:
    return gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="k (number of results)", elem_id=elem_id)


def _image_search_tab(tab: str, examples: list[str], fn: Callable[..., Outputs], api_name: str,
                      selector: Callable[[], gr.components.Component], **event: Any) -> None:
    """Query image and examples | method selector, k, Search; then the results. One endpoint."""
    with gr.Row():
        with gr.Column(scale=2):
            image = _image_input(examples, f"{tab}-image")
        with gr.Column(scale=1):
            choice = selector()
            k = _k_slider(f"{tab}-k")
            button = gr.Button("Search", variant="primary", elem_id=f"{tab}-search")
    outputs = _results(tab)
    # preprocess=False: the handler gets the uploaded file itself (Gradio has checked it is an
    # upload), so load_image decodes it once and its errors reach the user as they are.
    button.click(user_errors(fn), [image, choice, k], list(outputs), api_name=api_name, preprocess=False, **event)


def build_demo(index: LookalikeIndex) -> gr.Blocks:
    """The Blocks app over an opened index. Endpoints: /search_pixel, /search_deep (indexes with
    embeddings), /search_text (indexes whose model has a text encoder)."""
    searcher = Searcher(index)
    examples, test_counts = test_examples(index.data_dir)
    deep = deep_methods(index)
    with gr.Blocks(title="Lookalike: image search", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Lookalike\nFind the library images that look most like yours: by raw pixels, "
                    "by deep features, or (with a CLIP index) by a text description.")
        with gr.Tab("Pixel metrics"):
            _image_search_tab("pixel", examples, searcher.pixel, "search_pixel", lambda: gr.Radio(
                [(f"{n.upper() if len(n) == 2 else n} — {m.formula} ({m.order})", n) for n, m in METRICS.items()],
                value="l1", label="Metric", elem_id="pixel-metric",
                info="L1 and L2 are distances (results sorted smallest first); "
                     "cosine and correlation are similarities (largest first)."),
                concurrency_limit=PIXEL_CONCURRENCY)
        with gr.Tab("CLIP / deep features"):
            if deep:
                _image_search_tab("deep", examples, searcher.deep, "search_deep", lambda: gr.Dropdown(
                    [(method_label(index, x), x) for x in deep], value=f"{index.manifest.embedder['name']}-cosine",
                    label="Method", elem_id="deep-method",
                    info="Exact metrics scan every stored vector; HNSW asks Chroma's approximate graph index "
                         "(what scales to millions)."))
            else:
                gr.Markdown("This index holds pixels only, so there is no deep search. Rebuild it with a model: "
                            f"`python build_index.py index --data {index.data_dir} --index {index.index_dir} --model effnet`.")
        with gr.Tab("Text → image"):
            if index.has_text:
                with gr.Row():
                    prompt = gr.Textbox(label="Describe what to find", placeholder="a red apple",
                                        max_length=MAX_TEXT_CHARS, scale=3, elem_id="text-prompt")
                    t_method = gr.Dropdown([(method_label(index, x), x) for x in deep],
                                           value=f"{index.manifest.embedder['name']}-cosine", label="Method", scale=2)
                    t_k = _k_slider("text-k")
                t_button = gr.Button("Search", variant="primary", elem_id="text-search")
                t_out = _results("text")
                gr.on([t_button.click, prompt.submit], user_errors(searcher.text), [prompt, t_method, t_k], list(t_out),
                      api_name="search_text")
            else:
                spec = (index.manifest.embedder or {}).get("spec", "pixels only")
                gr.Markdown(f"Text search needs a model with a text encoder (CLIP), which maps words and pictures "
                            f"into the same vector space. This index was built with **{spec}**, which has no text "
                            "encoder, so there is nothing to compare a sentence with. Rebuild with a CLIP model, e.g. "
                            f"`python build_index.py index --data {index.data_dir} --index {index.index_dir} "
                            "--model ViT-B-32:laion2b_s34b_b79k` (online) or `--model ViT-B-32:/path/to/checkpoint.pt`.")
        with gr.Tab("Evaluation"):
            gr.Markdown(evaluation_markdown(index))
        with gr.Tab("About"):
            gr.Markdown(about_markdown(index, test_counts))
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


def launch_options(index: LookalikeIndex) -> dict[str, Any]:
    """launch() settings: serve only the library and the index folders; cap upload size."""
    return {"allowed_paths": [str(index.data_dir.resolve()), str(index.index_dir.resolve())],
            "max_file_size": MAX_UPLOAD}


def serve(index: LookalikeIndex, host: str = "127.0.0.1", port: int | None = None) -> tuple[gr.Blocks, str]:
    """Build and launch without blocking (tests, benchmarks); returns (demo, local URL). demo.close() stops it."""
    demo = build_demo(index)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                            **launch_options(index))
    return demo, url
