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


FILE_META = {"_type": "gradio.FileData"}


def raw_call(url: str, api: str, data: list) -> tuple[str, str]:
    """(outcome, text) of a raw POST /gradio_api/call/<api>, as a script that skips gradio_client
    would send it: ("HTTP 422", why) when refused at the door, ("error", message) when the handler
    refused, ("complete", the answer's first 200 characters) otherwise."""
    import json

    import requests
    resp = requests.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=60)
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}", resp.json().get("error") or resp.text
    stream = requests.get(f"{url}gradio_api/call/{api}/{resp.json()['event_id']}", timeout=300).text
    event = stream.split("event: ")[-1].split("\n", 1)[0]
    answer = json.loads(stream.split("data: ")[-1].split("\n", 1)[0])
    return event, str((answer or {}).get("error")) if event == "error" else json.dumps(answer)[:200]
