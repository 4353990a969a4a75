"""Launching the Gradio app for tests: in-process on 127.0.0.1, with a gradio_client Client.

Shared by tests/test_app.py and tests/test_bad_image_corpus.py. The caller closes the demo
(`demo.close()`), normally in a fixture's teardown.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from gradio_client import Client

from webui.layout import serve
from retrieval.search import LookalikeIndex


def launch(index_dir: Path) -> tuple[gr.Blocks, SimpleNamespace]:
    """Open the index and serve it; returns (demo, namespace with index, url and client)."""
    index = LookalikeIndex.open(index_dir)
    demo, url = serve(index)
    return demo, SimpleNamespace(index=index, url=url, client=Client(url, verbose=False))


def frame_mark(rgb) -> str | None:
    """"right" or "wrong" for a pixel of a result's frame (webui.results draws it green or red; the
    gallery's JPEG copy shifts it a little), None for any other colour."""
    from retrieval.compare import RIGHT_COLOUR, WRONG_COLOUR
    for mark, colour in (("right", RIGHT_COLOUR), ("wrong", WRONG_COLOUR)):
        want = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
        if max(abs(int(a) - b) for a, b in zip(rgb[:3], want)) <= 40:
            return mark
    return None
