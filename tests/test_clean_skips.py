"""Every decoder failure is a skipped file with its reason, in the cleaner and the downloader,
whatever exception Pillow raises (issue 19, item 6): the fuzzer found IndexError (GIF, QOI),
TypeError (TIFF) and RuntimeError (AVIF). Here Pillow's decode is made to raise each of them for
files of a marked size, so the test does not depend on which malformed bytes trip which plugin.

Fails before round 3: the exception went through (the decoder caught only OSError, ValueError,
SyntaxError and EOFError); `clean` stopped with a traceback and the downloader logged one and
recorded "error".
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from collect.clean import clean_images
from collect.download import DownloadConfig, Downloader
from fault_server import FaultServer
from flickr_standin import Reply

ODD = {(77, 77): IndexError("image index out of range"), (78, 78): TypeError("'NoneType' is not iterable"),
       (79, 79): RuntimeError("decoder error -2")}


@pytest.fixture
def odd_decoder(monkeypatch):
    real = ImageFile.ImageFile.load

    def load(self):
        if self.size in ODD:
            raise ODD[self.size]
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def _files() -> dict[str, bytes]:
    out = {}
    for (size, _), fmt in zip(ODD.items(), ("JPEG", "PNG", "GIF")):
        buf = io.BytesIO()
        Image.new("RGB", size, (10, 120, 200)).save(buf, fmt)
        out[f"odd{size[0]}.{fmt.lower()}"] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (200, 20, 20)).save(buf, "JPEG")
    out["good.jpg"] = buf.getvalue()
    return out


def test_cleaner_quarantines_whatever_the_decoder_raises(tmp_path: Path, odd_decoder, caplog) -> None:
    folder = tmp_path / "raw" / "animal" / "cat"
    folder.mkdir(parents=True)
    for name, data in _files().items():
        (folder / name).write_bytes(data)
    with caplog.at_level(logging.WARNING):
        report = clean_images(tmp_path / "raw", tmp_path / "clean", tmp_path / "q", min_side=10, progress=False)
    assert report.kept == 1 and dict(report.rejected) == {"corrupt": 3}
    log = {r["source"]: r for r in map(json.loads, (tmp_path / "q" / "reasons.jsonl").read_text().splitlines())}
    assert {Path(s).name for s in log} == {"odd77.jpeg", "odd78.png", "odd79.gif"}
    assert all(r["detail"] for r in log.values())
    [line] = report.reject_lines(tmp_path / "q")
    assert "skipped 3 files: 3 corrupt (e.g. " in line and line.endswith("reasons.jsonl")
    assert "Traceback" not in caplog.text


def test_downloader_records_whatever_the_decoder_raises(tmp_path: Path, odd_decoder, caplog) -> None:
    with FaultServer() as srv:
        for name, data in _files().items():
            srv.routes[f"/{name}"] = Reply(200, data, "image/jpeg")
        urls = [srv.url(f"/{name}") for name in _files()]
        with caplog.at_level(logging.WARNING):
            report = Downloader(tmp_path / "raw", DownloadConfig(delay=0.0, retries=0)).run(
                [("c", "t", u) for u in urls], progress=False)
    assert dict(report.counts) == {"not_image": 3, "ok": 1}
    records = json.loads((tmp_path / "raw" / "manifest.json").read_text())["items"]
    assert all(r["detail"] for r in records if r["status"] == "not_image")
    assert "failed unexpectedly" not in caplog.text and "Traceback" not in caplog.text
