"""The warm app: the model loads in the background at start-up (webui.warmup); until then pixel
search works, the page says "loading the model…", and a deep query gets a clear message instead of a
hang."""
from __future__ import annotations

import threading
import time

import gradio as gr
import pytest

from retrieval.errors import ModelError
from retrieval.search import LookalikeIndex
from webui import handlers
from webui.handlers import Searcher
from webui.warmup import WarmUp, default_methods


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    from conftest import make_tiny_library
    from retrieval.indexing import build_index
    root = tmp_path_factory.mktemp("warm")
    data = make_tiny_library(root / "data")
    build_index(data, root / "index", model="effnet", evaluate=False)
    return root / "index", sorted((data / "test").rglob("*.jpg"))


@pytest.fixture
def slow_model(monkeypatch):
    """use_model blocks until the test releases it: a model that is still loading."""
    release = threading.Event()
    real = LookalikeIndex.use_model

    def blocked(self, spec):
        assert release.wait(60), "the test never released the model load"
        real(self, spec)

    monkeypatch.setattr(LookalikeIndex, "use_model", blocked)
    monkeypatch.setattr(handlers, "WARM_WAIT_S", 0.2)
    yield release
    release.set()


def test_deep_query_while_loading_gets_a_clear_message(tiny_index, slow_model):
    index_dir, queries = tiny_index
    index = LookalikeIndex.open(index_dir)
    warm = WarmUp(index)
    searcher = Searcher(index, warm=warm)
    assert "loads with the first deep query" in searcher.model_status()
    assert warm.ready and warm.seconds() is None                    # not started: nothing to wait for
    warm.start()
    assert warm.loading and not warm.ready
    assert "loading the model…" in searcher.model_status()

    t0 = time.perf_counter()
    with pytest.raises(gr.Error, match="the model is still loading .*try again in a few seconds"):
        handlers.user_errors(searcher.deep)(str(queries[0]), "effnet-cosine", 3)
    assert time.perf_counter() - t0 < 30          # refused after the short wait, not stuck on the load lock
    gallery, status, _ = searcher.pixel(str(queries[0]), "l1", 3)   # pixel search works meanwhile
    assert len(gallery) == 3

    slow_model.set()
    assert warm.wait_ready(60) and warm.ready and warm.error is None
    assert "model ready (loaded in" in searcher.model_status()
    assert index.loaded() >= {"model", "store"}                     # Chroma too (HNSW is offered)
    gallery, status, _ = searcher.deep(str(queries[0]), "effnet-cosine", 3)
    assert len(gallery) == 3 and "first loaded" not in status       # no model-loading time in the query


def test_failed_warm_up_is_reported_and_retried(tiny_index, monkeypatch):
    index_dir, queries = tiny_index
    index = LookalikeIndex.open(index_dir)
    real = LookalikeIndex.use_model
    calls = []

    def failing(self, spec):
        calls.append(spec)
        if len(calls) == 1:
            raise ModelError("weights missing (simulated)")
        real(self, spec)

    monkeypatch.setattr(LookalikeIndex, "use_model", failing)
    warm = WarmUp(index)
    warm.start().join(60)
    assert warm.error == "ModelError: weights missing (simulated)" and not warm.loading
    searcher = Searcher(index, warm=warm)
    assert "loading the model failed:** ModelError: weights missing (simulated)" in searcher.model_status()
    gallery, status, _ = searcher.deep(str(queries[0]), "effnet-cosine", 3)   # the query retries the load
    assert len(gallery) == 3 and "first loaded the model" in status


def test_app_says_loading_over_http(tiny_index, slow_model):
    """Through the served app: /model_status says loading, /search_deep refuses with the message."""
    from gradio_client import Client, handle_file
    from webui.layout import serve
    index_dir, queries = tiny_index
    index = LookalikeIndex.open(index_dir)
    warm = WarmUp(index)
    warm.start()
    demo, url = serve(index, warm=warm)
    try:
        client = Client(url, verbose=False)
        status = client.predict(api_name="/model_status")
        assert "loading the model…" in (status[0] if isinstance(status, (list, tuple)) else status)
        with pytest.raises(Exception, match="the model is still loading"):
            client.predict(handle_file(str(queries[0])), "effnet-cosine", 3, api_name="/search_deep")
        pixel = client.predict(handle_file(str(queries[0])), "l1", 3, api_name="/search_pixel")
        assert len(pixel[0]) == 3
        slow_model.set()
        assert warm.wait_ready(60)
        status = client.predict(api_name="/model_status")
        assert "model ready" in (status[0] if isinstance(status, (list, tuple)) else status)
    finally:
        demo.close()


def test_the_warm_up_prepares_the_preselected_methods(tiny_index):
    """Pixel L1 first (its pooled copies), then the default deep method and its HNSW twin; a pixel-only
    index warms pixel L1 alone. A second start() is the same load, not another one."""
    index_dir, _ = tiny_index
    index = LookalikeIndex.open(index_dir)
    assert [str(m) for m in default_methods(index)] == ["pixel-l1", "effnet-cosine", "effnet-hnsw-cosine"]
    warm = WarmUp(index)
    thread = warm.start()
    assert warm.start() is thread and warm.wait_ready(120) and warm.error is None
    assert index.loaded() >= {"model", "store"} and warm.seconds() is not None


def test_a_pixel_only_index_warms_pixels_only(sample_pixel_index):
    index = LookalikeIndex.open(sample_pixel_index)
    assert [str(m) for m in default_methods(index)] == ["pixel-l1"]
    warm = WarmUp(index)
    warm.start()
    assert warm.wait_ready(60) and warm.error is None and warm.seconds() is not None
    assert "model" not in index.loaded() and Searcher(index, warm=warm).model_status() == ""


# -- what the page preselects (webui.warmup.TabDefaults) -----------------------------------------

def _selected(index: LookalikeIndex) -> dict[str, tuple[object, list[str]]]:
    """elem_id -> (value, the values whose label is marked best) of the page's method selectors."""
    from webui.warmup import BEST
    from webui.layout import build_demo
    return {c["props"]["elem_id"]: (c["props"]["value"], [v for label, v in c["props"]["choices"] if BEST in label])
            for c in build_demo(index).get_config_file()["components"]
            if c["type"] in ("radio", "dropdown") and c["props"].get("elem_id")}


def test_without_an_evaluation_the_tabs_keep_their_defaults_and_mark_nothing(tiny_index):
    index = LookalikeIndex.open(tiny_index[0])
    assert not (tiny_index[0] / "evaluation.json").exists()
    assert _selected(index) == {"pixel-metric": ("l1", []), "deep-method": ("effnet-cosine", [])}


def test_a_measured_best_is_preselected_marked_and_warmed(tiny_index, tmp_path):
    """Each tab asks among its own choices: the pixel tab among the four pixel metrics (a re-ranked
    pixel method scoring higher is not one of them), the deep tab among the methods over embeddings.
    The warm-up loads what is preselected, the HNSW twin too."""
    import json
    import shutil
    index_dir, _ = tiny_index
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    scores = {"pixel-l1": 0.30, "pixel-corr": 0.40, "pixel-cosine+dba+qe": 0.90, "effnet-cosine": 0.50,
              "effnet-l2": 0.70, "effnet-hnsw-l2": 0.65, "not-a-method": 0.99}
    chance = {"p@1": 0.3, "p@5": 0.3, "p@10": 0.3, "map": 0.3}
    (copy / "evaluation.json").write_text(json.dumps({
        "queries": 6, "library": 18, "classes": 3, "pixel_size": 32, "model": "effnet", "chance": chance,
        "protocol": "test", "methods": {n: {"p@1": v, "p@5": v, "p@10": v, "map": v} for n, v in scores.items()}}))
    index = LookalikeIndex.open(copy, data_dir=index_dir.parent / "data")
    assert _selected(index) == {"pixel-metric": ("corr", ["corr"]), "deep-method": ("effnet-l2", ["effnet-l2"])}
    assert [str(m) for m in default_methods(index)] == ["pixel-corr", "effnet-l2", "effnet-hnsw-l2"]


# -- the calibration, measured once per machine (webui.warmup, retrieval.embedders.precision) ----

def test_the_calibration_is_measured_once_per_machine(tiny_index, tmp_path, monkeypatch):
    """Where a calibration decides the query model's precision (auto on a bf16 index; here any index,
    on a CPU said to have native bf16), the first warm-up measures and keeps a clear verdict; the next
    start on this machine loads the model in that precision without measuring. A close call is not
    kept, a verdict for another model does not apply, and a warm-up without a cache keeps nothing."""
    from retrieval.embedders import precision as prec
    index_dir, _ = tiny_index
    cache = tmp_path / "lookalike" / "calibration.json"
    measured: list[float] = []
    speedup = 2.0

    def calibrate(embedder, *args, **kwargs):
        measured.append(speedup)
        return {"fp32_s": speedup, "bf16_s": 1.0, "speedup_wall": speedup, "speedup": speedup}

    monkeypatch.setattr(prec, "native_bf16", lambda: True)
    monkeypatch.setattr(prec, "query_precision", lambda requested, built: requested)
    monkeypatch.setattr(prec, "calibrate", calibrate)

    def start(with_cache: bool = True) -> tuple[LookalikeIndex, WarmUp]:
        index = LookalikeIndex.open(index_dir, precision="auto")
        warm = WarmUp(index, calibration_cache=cache if with_cache else None)
        warm.start([index.default_method]).join(120)
        assert warm.ready and warm.error is None
        return index, warm

    first, warm = start()
    assert measured == [2.0] and first.embedder.precision == "bf16" and warm.recalled is None
    spec = first.embedder.spec
    assert prec.recall(cache, spec)["precision"] == "bf16" and prec.recall(cache, "open_clip:other:model") is None
    second, warm = start()
    assert measured == [2.0] and second.embedder.precision == "bf16"   # not measured again
    assert warm.recalled is not None and warm.recalled["calibration"]["speedup"] == 2.0

    cache.unlink()
    speedup = 1.2   # bf16 (>= 1.15x) but a close call: measured again at the next start
    assert start()[0].embedder.precision == "bf16" and not cache.exists()
    speedup = 2.0
    start(with_cache=False)
    assert measured == [2.0, 1.2, 2.0] and not cache.exists()
