"""The downloader fetches only http and https URLs, also after redirects: data:, javascript:, file:,
gopher: and scheme-relative URLs are refused with `bad_scheme`. See docs/reliability.md, "Attacks".
"""
from __future__ import annotations

import json

import pytest

from collect.download import DownloadConfig, Downloader
from fault_server import FaultServer
from flickr_standin import Reply

pytestmark = pytest.mark.usefixtures("watchdog")


def test_only_http_and_https_are_fetched_even_after_redirects(tmp_path):
    with FaultServer() as srv, FaultServer("127.0.0.2") as other:
        srv.routes["/to-data.jpg"] = Reply(302, b"", "text/plain", {"Location": "data:image/png;base64,iVBORw0KGgo="})
        srv.routes["/to-js.jpg"] = Reply(302, b"", "text/plain", {"Location": "javascript:alert(1)"})
        srv.routes["/to-other-host.jpg"] = Reply(302, b"", "text/plain", {"Location": other.url("/img/x.jpg")})
        cases = {"data:image/png;base64,iVBORw0KGgo=": "bad_scheme", "javascript:alert(1)": "bad_scheme",
                 "FILE:///etc/passwd": "bad_scheme", "gopher://127.0.0.1/x": "bad_scheme",
                 "//127.0.0.1/x.jpg": "bad_scheme", "http:///x.jpg": "bad_url",
                 srv.url("/to-data.jpg"): "bad_scheme", srv.url("/to-js.jpg"): "bad_scheme",
                 srv.url("/to-other-host.jpg"): "ok", srv.url("/img/y.jpg").replace("http://", "HTTP://"): "ok"}
        raw = tmp_path / "raw"
        Downloader(raw, DownloadConfig(delay=0.0, retries=0)).run([("c", "t", u) for u in cases], progress=False)
        got = {r["url"]: r["status"] for r in json.loads((raw / "manifest.json").read_text())["items"]}
    assert got == cases
    assert all(p.resolve().is_relative_to(raw.resolve()) for p in raw.rglob("*"))
