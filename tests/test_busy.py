"""Bounded queues: past the wait bound a request is refused at once with "busy", never queued for minutes.

Through a real launched app (in-process, 127.0.0.1) with one pixel worker and a tiny wait bound, and
a pixel handler that holds its worker until the test lets it go: no timing asserts, the order of
events shows the refusal did not wait for the worker.
"""
from __future__ import annotations

import threading

import pytest
import requests
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError

from app_support import launch
from conftest import make_tiny_library
from retrieval.errors import LookalikeError
from webui import layout
from webui.handlers import Searcher

BOUND_S = 0.5
WAIT_S = 60   # a safety net for a broken app, not a speed target


@pytest.fixture
def held_app(tmp_path, monkeypatch):
    """The app over a tiny pixel index, one pixel worker, a 0.5 s wait bound, and a pixel handler
    that waits for `gate` (set by the test) after setting `entered`."""
    from retrieval.indexing import build_index

    data = make_tiny_library(tmp_path / "data")
    build_index(data, tmp_path / "index", model="none", evaluate=False)
    gate, entered = threading.Event(), threading.Event()
    original = Searcher.pixel

    def held(self, *args, **kwargs):
        entered.set()
        gate.wait(WAIT_S)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Searcher, "pixel", held)
    monkeypatch.setattr(layout, "PIXEL_CONCURRENCY", 1)
    # raising=False: before round 3 there is no MAX_WAIT_S, and the tests fail by behaviour instead
    monkeypatch.setattr(layout, "MAX_WAIT_S", BOUND_S, raising=False)
    monkeypatch.delenv("LOOKALIKE_MAX_WAIT_S", raising=False)
    demo, served = launch(tmp_path / "index")
    served.gate, served.entered = gate, entered
    served.query = handle_file(str(next((data / "test").rglob("*.jpg"))))
    try:
        yield served
    finally:
        gate.set()
        demo.close()


def _hold_the_worker(app) -> object:
    """A pixel request that occupies the only pixel worker until app.gate is set."""
    app.gate.clear()
    app.entered.clear()
    job = app.client.submit(app.query, "l1", 3, api_name="/search_pixel")
    assert app.entered.wait(WAIT_S), "the first request never started"
    return job


def test_a_request_that_waits_past_the_bound_is_refused_with_busy(held_app):
    """Fails before round 3: the second request waits in the queue for as long as the first one
    holds the worker (here: until the test gives up), and is never refused."""
    first = _hold_the_worker(held_app)
    second = held_app.client.submit(held_app.query, "l1", 3, api_name="/search_pixel")
    with pytest.raises(AppError, match=r"the app is busy: .*waited .* try again in a moment"):
        second.result(timeout=WAIT_S)
    assert not first.done()   # refused while the worker was still held: it did not wait for a worker
    held_app.gate.set()
    _, status, rows = first.result(timeout=WAIT_S)   # the request that was running is answered as usual
    assert [r["rank"] for r in rows] == [1, 2, 3]


def test_a_request_expected_to_wait_too_long_is_refused_at_the_door(held_app):
    """Fails before round 3: the app queues every request (up to QUEUE_SIZE), whatever its wait.

    Each time, a request holds the worker until a second one has waited past the bound, so the
    queue measures pixel requests taking longer than the bound (MIN_SAMPLES of them: fewer give no
    estimate). A request arriving while a pixel request runs would then wait longer than the bound:
    it is refused when it asks, with HTTP 503 (gradio_client: QueueError; raw HTTP: our message),
    before it is queued."""
    from webui.admission import MIN_SAMPLES
    for _ in range(MIN_SAMPLES):
        first = _hold_the_worker(held_app)
        second = held_app.client.submit(held_app.query, "l1", 3, api_name="/search_pixel")
        with pytest.raises(AppError, match="busy"):
            second.result(timeout=WAIT_S)
        held_app.gate.set()
        first.result(timeout=WAIT_S)

    running = _hold_the_worker(held_app)
    with pytest.raises(QueueError):
        held_app.client.predict(held_app.query, "l1", 3, api_name="/search_pixel")
    raw = requests.post(f"{held_app.url}gradio_api/call/search_pixel", json={"data": [None, "l1", 3]}, timeout=WAIT_S)
    assert raw.status_code == 503
    assert "the app is busy" in raw.json()["detail"] and "try again in a moment" in raw.json()["detail"]
    held_app.gate.set()
    _, _, rows = running.result(timeout=WAIT_S)
    assert len(rows) == 3


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_a_bad_wait_bound_setting_is_refused_with_its_name(monkeypatch, value):
    """Fails before round 3: there was no wait bound to set (webui.admission did not exist)."""
    from webui.admission import wait_bound
    monkeypatch.setenv("LOOKALIKE_MAX_WAIT_S", value)
    with pytest.raises(LookalikeError, match="LOOKALIKE_MAX_WAIT_S must be a number of seconds above 0, or off"):
        wait_bound(20)


def test_the_wait_bound_setting(monkeypatch):
    """Fails before round 3: there was no wait bound to set (webui.admission did not exist)."""
    from webui.admission import wait_bound
    monkeypatch.delenv("LOOKALIKE_MAX_WAIT_S", raising=False)
    assert wait_bound(20) == 20
    monkeypatch.setenv("LOOKALIKE_MAX_WAIT_S", " 7.5 ")
    assert wait_bound(20) == 7.5
    monkeypatch.setenv("LOOKALIKE_MAX_WAIT_S", "OFF")
    assert wait_bound(20) == float("inf")
