"""The Gradio layout: one tab per way of searching, plus Evaluation and About, and launch settings.

Endpoints have `api_name`s, so `gradio_client` (and the tests) call exactly what the page calls.
"""
from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from retrieval.metrics import METRICS
from retrieval.search import MAX_K, MAX_TEXT_CHARS, LookalikeIndex

from .handlers import DEFAULT_K, Outputs, Searcher, deep_methods, method_label, user_errors
from .texts import about_markdown, evaluation_markdown, shown_path, test_examples

EXAMPLES_PER_PAGE = 15
MAX_UPLOAD = "32mb"          # the upload route refuses more; load_image refuses > 64 Mpx after that
CONCURRENCY = 2              # the Spaces CPU Basic tier has 2 vCPU
PIXEL_CONCURRENCY = 4        # pixel queries are a few ms of numpy; let more of them overlap
QUEUE_SIZE = 64
IMAGE_SOURCES = ["upload", "webcam", "clipboard"]


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
                            f"`python build_index.py index --data {shown_path(index.data_dir)} --index {shown_path(index.index_dir)} --model effnet`.")
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
                            f"`python build_index.py index --data {shown_path(index.data_dir)} --index {shown_path(index.index_dir)} "
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
