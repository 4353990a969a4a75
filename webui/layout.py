"""The Gradio layout: one tab per way of searching, plus Evaluation and About, and launch settings.

Endpoints have `api_name`s, so `gradio_client` (and the tests) call exactly what the page calls.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import gradio as gr

from retrieval.compare import test_labels
from retrieval.errors import Remedy
from retrieval.methods import PIXEL, Method
from retrieval.metrics import METRICS
from retrieval.search import MAX_K, MAX_TEXT_CHARS, LookalikeIndex

from .compare import compare_tab, model_title
from .duplicates import duplicates_tab
from .evaluation import evaluation_tab
from .explain_panel import WhyPanels
from .map_tab import link_query, map_tab
from .handlers import (DEFAULT_K, MAX_UPLOAD_BYTES, Outputs, QueryFiles, Searcher, deep_methods, method_detail,
                       remedy_words, user_errors)
from .texts import about_markdown, example_images
from .warmup import BEST, TabDefaults, WarmUp

EXAMPLES_PER_PAGE = 10       # two rows beside the results: the Search button stays on the first screen
MAX_UPLOAD = f"{MAX_UPLOAD_BYTES >> 20}mb"   # the upload route refuses more (data: URLs: handlers); load_image refuses > 64 Mpx
CONCURRENCY = 2              # the Spaces CPU Basic tier has 2 vCPU
PIXEL_CONCURRENCY = 4        # pixel queries are a few ms of numpy; let more of them overlap
QUEUE_SIZE = 64              # requests queued at once, all endpoints together: bounds the memory their bodies hold
MAX_WAIT_S = 30.0            # longest queue wait before "busy, try again" (webui.admission; docs/reliability.md)
# Galleries as tall as their thumbnails (Gradio's own gallery keeps at least 450 px: empty space
# under five results), with as many columns as fit (a phone gets two or three); where a click explains
# a result, five in a row, so the explanation under them starts on the first screen; the Compare
# summary table in compact rows, its family and bar columns left out on a phone.
PAGE_CSS = """
.lk-gallery .fixed-height { min-height: 0 !important; max-height: none !important; }
.lk-gallery .grid-wrap { overflow-y: visible !important; padding: 4px !important; }
.lk-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)) !important; }
.lk-gallery .caption-label { max-width: 100% !important; font-size: 11px !important; opacity: 0.9 !important; }
.lk-gallery.lk-grid .grid-container { grid-template-columns: repeat(auto-fill, minmax(100px, 1fr)) !important; }
.lk-gallery.lk-grid .thumbnail-item { aspect-ratio: 4 / 3 !important; }
.lk-gallery.lk-why .grid-container { grid-template-columns: repeat(auto-fill, minmax(118px, 1fr)) !important; }
.lk-explain img { max-height: 440px !important; object-fit: contain !important; }
.compare-row { gap: 2px !important; }
.lk-summary td, .lk-summary th { padding: 1px 8px !important; line-height: 1.35; }
@media (max-width: 640px) {
  .lk-summary .lk-wide { display: none; }
  .lk-gallery.lk-grid .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
}
"""
IMAGE_SOURCES: list[Literal["upload", "webcam", "clipboard"]] = ["upload", "webcam", "clipboard"]


def _results(tab: str, *, why: WhyPanels | None = None) -> tuple[gr.Gallery, gr.Markdown, gr.JSON]:
    """The status line (time, P@k), the gallery and the raw rows. The gallery takes JPEG copies of
    the framed thumbnails (webui.results): a few ms to write, and the frame colour survives. With
    `why`, a click on a result explains it (no enlarged preview) and its panels sit under the results."""
    status = gr.Markdown(elem_id=f"{tab}-status")
    gallery = gr.Gallery(label="Results", columns=4, object_fit="contain", format="jpeg", buttons=[],
                         allow_preview=why is None, elem_id=f"{tab}-results",
                         elem_classes=["lk-gallery", "lk-why"] if why else ["lk-gallery"])
    if why:
        why.build(tab)
    with gr.Accordion("Results as data (raw scores)", open=False):
        rows = gr.JSON(label="Results (rank, class, score, file, correct)")
    return gallery, status, rows


def _image_input(examples: list[str], elem_id: str, examples_label: str = "Test-split images") -> gr.Image:
    image = gr.Image(label="Query image", type="filepath", sources=IMAGE_SOURCES, image_mode=None,
                     height=170, elem_id=elem_id)
    if examples:
        gr.Examples(examples, inputs=image, label=f"{examples_label} (click one, then Search)",
                    examples_per_page=EXAMPLES_PER_PAGE, cache_examples=False)
    return image


def _k_slider(elem_id: str) -> gr.Slider:
    return gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="k (number of results)", elem_id=elem_id)


def _image_search_tab(tab: str, examples: list[str], fn: Callable[..., Outputs], api_name: str,
                      selector: Callable[[], gr.components.Component], *,
                      examples_label: str = "Test-split images", why: WhyPanels | None = None,
                      **event: Any) -> gr.Image:
    """A compact query column (image, examples, method, k, Search) beside the results, so the
    results land on the first screen; a narrow screen stacks them in one column. One endpoint.
    `why`: the tab's "why this result" (and refine) panels, under its results."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            image = _image_input(examples, f"{tab}-image", examples_label)
            choice = selector()
            with gr.Row(equal_height=True):
                k = _k_slider(f"{tab}-k")
                button = gr.Button("Search", variant="primary", scale=0, min_width=120, elem_id=f"{tab}-search")
        with gr.Column(scale=3, min_width=320):
            outputs = _results(tab, why=why)
    # preprocess=False: the handler gets the payload as sent, so load_image decodes it once and its
    # errors reach the user as they are. Gradio checks nothing then: the handler accepts only an
    # upload or a library image (handlers.QueryFiles), never a path the client names.
    search = button.click(user_errors(fn), [image, choice, k], list(outputs), api_name=api_name,
                          preprocess=False, **event)
    if why:
        why.wire(search, image, choice, k, outputs)
    return image


def _method_dropdown(index: LookalikeIndex, defaults: TabDefaults, deep: list[str], **kwargs: Any) -> gr.Dropdown:
    """A selector of the deep methods, starting on the best measured one (marked), else the default."""
    choices = [(defaults.label(index.parse_method(x), x, method_detail(index, x)), x) for x in deep]
    return gr.Dropdown(choices, value=str(defaults.deep), label="Method", **kwargs)


def _composed_section(index: LookalikeIndex, searcher: Searcher, deep: list[str], defaults: TabDefaults) -> None:
    """Text and an image together, weighted terms and minus terms: one endpoint, /search_composed."""
    with gr.Accordion("Composed query: text + image, weights, minus terms", open=False):
        gr.Markdown("One term per line; `2:red car` counts twice as much as `red car`. The image (optional) "
                    "joins in with its own weight; minus terms push results away (like rclip's add and "
                    "subtract).")
        with gr.Row():
            terms = gr.Textbox(label="Terms (one per line)", placeholder="2:red car\nsunny street", lines=3,
                               elem_id="composed-terms")
            minus = gr.Textbox(label="Minus terms (one per line)", placeholder="night", lines=3,
                               elem_id="composed-minus")
        with gr.Row():
            image = gr.Image(label="Image term (optional)", type="filepath", sources=IMAGE_SOURCES,
                             image_mode=None, height=200, elem_id="composed-image")
            with gr.Column():
                weight = gr.Slider(0, 5, value=1, step=0.1, label="Image weight", elem_id="composed-weight")
                method = _method_dropdown(index, defaults, deep, elem_id="composed-method")
                k = _k_slider("composed-k")
                button = gr.Button("Search", variant="primary", elem_id="composed-search")
        outputs = _results("composed")
        button.click(user_errors(searcher.composed), [terms, image, weight, minus, method, k], list(outputs),
                     api_name="search_composed", preprocess=False)


def _model_status(searcher: Searcher, demo: gr.Blocks) -> None:
    """A line that says "loading the model…" while the app's warm-up runs, polled once a second
    until it is done (each page load reads the state afresh). /model_status answers the same."""
    if not searcher.index.manifest.embedder:
        return
    status = gr.Markdown(searcher.model_status(), elem_id="model-status")
    timer = gr.Timer(1.0, active=searcher.warm.loading)

    def tick() -> tuple[str, gr.Timer]:
        return searcher.model_status(), gr.Timer(active=searcher.warm.loading)

    timer.tick(tick, None, [status, timer], api_name="model_status", concurrency_limit=None, show_progress="hidden")
    demo.load(tick, None, [status, timer], api_visibility="private", concurrency_limit=None, show_progress="hidden")


def _deep_tab(index: LookalikeIndex, searcher: Searcher, examples: list[str], examples_label: str,
              deep: list[str], defaults: TabDefaults) -> list[gr.Image]:
    """The deep features tab: image search over the embeddings (its query image, for linking), or
    why a pixel-only index has none, in words for a visitor (no commands: they cannot run any).
    The tab is titled "Deep features"; its model is the first line inside (model_title)."""
    if not deep:
        gr.Markdown("This index holds pixels only, so there is no deep search. "
                    + remedy_words(Remedy.BUILD_WITH_MODEL, " (efficientnet-lite0 works offline; a CLIP model "
                                   "adds text search) to enable this tab: see *Your own photos* in the README."))
        return []
    best = (f" The method marked *{BEST}* scored the highest mAP when this index was evaluated "
            "(see the Evaluation tab)." if defaults.marked(defaults.deep) else "")
    gr.Markdown(f"Model: **{model_title(index)}**.{best}", elem_id="deep-model")
    why = WhyPanels(searcher, lambda m: m, refine=True, public=True)   # /explain and /refine
    return [_image_search_tab("deep", examples, searcher.deep, "search_deep", examples_label=examples_label,
                              why=why, selector=lambda: _method_dropdown(
        index, defaults, deep, elem_id="deep-method",
        info="Exact metrics scan every stored vector; HNSW asks Chroma's approximate graph index "
             "(what scales to millions)."))]


def _text_tab(index: LookalikeIndex, searcher: Searcher, deep: list[str], defaults: TabDefaults) -> None:
    """Text search and the composed query (an index whose model has a text encoder: build_demo
    shows this tab only then, and About says why it is missing otherwise)."""
    with gr.Row():
        prompt = gr.Textbox(label="Describe what to find", placeholder="a red apple",
                            max_length=MAX_TEXT_CHARS, scale=3, elem_id="text-prompt")
        method = _method_dropdown(index, defaults, deep, scale=2, elem_id="text-method")
        k = _k_slider("text-k")
    button = gr.Button("Search", variant="primary", elem_id="text-search")
    outputs = _results("text")
    gr.on([button.click, prompt.submit], user_errors(searcher.text), [prompt, method, k], list(outputs),
          api_name="search_text")
    _composed_section(index, searcher, deep, defaults)


def _pixel_metric(defaults: TabDefaults) -> gr.Radio:
    """The pixel metrics (values: the metric names), starting on the best measured one (marked);
    short labels, so the four fit on two lines beside the results, and the formulas below them."""
    names = {"l1": "L1", "l2": "L2", "cosine": "cosine", "corr": "correlation"}
    choices = [(names.get(n, n) + (f" · {BEST}" if defaults.marked(Method(PIXEL, n)) else ""), n) for n in METRICS]
    info = "; ".join(f"{names.get(n, n)}: {m.formula}" for n, m in METRICS.items())
    return gr.Radio(choices, value=defaults.pixel.metric, label="Metric", elem_id="pixel-metric",
                    info=f"{info}. L1 and L2 rank the smallest first, cosine and correlation the largest.")


def _pixel_method(metric: Any) -> Any:
    """The Pixel tab's selector value ("l1") as the method name the explanation takes ("pixel-l1")."""
    return str(Method(PIXEL, metric)) if isinstance(metric, str) else metric


def _headline(index: LookalikeIndex) -> str:
    """The page's title and one line on what it does (text search only where the index has it)."""
    ways = "by raw pixels, by deep features" + (", or by a text description" if index.has_text else "")
    frames = ": green frames share the query's class, red ones do not" if any(index.labels.tolist()) else ""
    return (f"# Lookalike\nFind the library images that look most like yours, {ways}. Click an example "
            f"or upload a photo, then **Search**{frames}.")


def build_demo(index: LookalikeIndex, warm: WarmUp | None = None) -> gr.Blocks:
    """The Blocks app over an opened index. Endpoints: /search_pixel, /search_deep (indexes with
    embeddings), /search_text (indexes whose model has a text encoder). `warm`: the app's start-up
    load (webui.warmup), which the page's model line and the deep queries wait on."""
    strip = example_images(index)   # test-split images, else a few library images; no exact copies
    examples, examples_label = strip.paths, strip.label
    files = QueryFiles(index, examples)   # what a query may name: uploads, library images, these examples
    known = test_labels(index)            # the test split's classes by content, read once
    searcher = Searcher(index, files, warm, known)
    deep = deep_methods(index)
    defaults = TabDefaults.of(index)   # each selector starts on its best measured method
    with gr.Blocks(title="Lookalike: image search", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(_headline(index))
        _model_status(searcher, demo)
        with gr.Tab("Pixel metrics"):
            why = WhyPanels(searcher, _pixel_method, refine=False, public=not deep)   # refine: deep only
            query_images = [_image_search_tab("pixel", examples, searcher.pixel, "search_pixel",
                                              examples_label=examples_label, why=why,
                                              selector=lambda: _pixel_metric(defaults),
                                              concurrency_limit=PIXEL_CONCURRENCY)]
        with gr.Tab("Deep features"):   # the model is a detail inside (a phone cuts long tab titles)
            query_images += _deep_tab(index, searcher, examples, examples_label, deep, defaults)
        if index.has_text:   # without a text encoder there is no Text tab; About says why
            with gr.Tab("Text → image"):
                _text_tab(index, searcher, deep, defaults)
        with gr.Tab("Compare"):   # one query through every method (webui/compare.py)
            query_images.append(compare_tab(index, examples, examples_label, query_images, files, known))
        with gr.Tab("Map") as tab:   # the library on two 2-D maps, a query placed (webui/map_tab.py)
            link_query(map_tab(index, tab, examples, examples_label, files), query_images)
        with gr.Tab("Evaluation"):
            evaluation_tab(index)
        with gr.Tab("Duplicates"):   # near-duplicate groups of this library (webui/duplicates.py)
            duplicates_tab(index)
        with gr.Tab("About"):
            gr.Markdown(about_markdown(index, strip.test_counts))
    from .admission import bounded_queue   # Gradio's queue, plus a bound on each request's wait
    bounded_queue(demo, default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE, max_wait_s=MAX_WAIT_S)
    return demo


def launch_options(index: LookalikeIndex) -> dict[str, Any]:
    """launch() settings: allow the library folder (Gradio copies the gallery's images from there),
    of which the file route serves only the indexed images (limits.LibraryFiles; the index's arrays,
    lock and manifest are nobody's download); cap upload and request sizes; refuse malformed API
    calls before they reach Gradio (limits.ApiGuard)."""
    from .limits import guards
    return {"allowed_paths": [str(index.data_dir.resolve())], "css": PAGE_CSS,
            "max_file_size": MAX_UPLOAD, "app_kwargs": {"middleware": guards(index)}}


def serve(index: LookalikeIndex, host: str = "127.0.0.1", port: int | None = None,
          warm: WarmUp | None = None) -> tuple[gr.Blocks, str]:
    """Build and launch without blocking (tests, benchmarks); returns (demo, local URL). demo.close() stops it.
    `warm`: a started WarmUp, as app.py passes one (default: none, a deep query loads the model)."""
    demo = build_demo(index, warm)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                            **launch_options(index))
    return demo, url
