"""Bounded inputs: the search CLI (k, text length, pixel size, method, arguments), the build CLI
(pixel size, batch size, download settings) and DownloadConfig refuse out-of-range values with one
`error:` line and write nothing. See docs/reliability.md, "Attacks" (out-of-range input) and
"Faults" (bad numbers on the command line).
"""
from __future__ import annotations

import json

import pytest

import build_index as build_cli
from collect.download import DownloadConfig, DownloadError
from conftest import make_tiny_library
from retrieval.cli import main as cli_main
from retrieval.paths import MANIFEST

pytestmark = pytest.mark.usefixtures("watchdog")


@pytest.mark.parametrize("argv,message", [
    (["search", "{q}", "--index", "{i}", "-k", "0"], "k must be a whole number from 1 to 100"),
    (["search", "{q}", "--index", "{i}", "-k", "101"], "k must be a whole number from 1 to 100"),
    (["search", "--text", "x" * 301, "--index", "{i}"], "the limit is 300"),
    (["search", "--text", "   ", "--index", "{i}"], "the text prompt is empty"),
    (["search", "{q}", "--index", "{i}", "--pixel-size", "16"], "was built at 32x32 pixels, not 16x16"),
    (["search", "{q}", "--index", "{i}", "--method", "pixel-l3"], "unknown method"),
    (["search", "{q}", "{q}", "--index", "{i}"], None),   # argparse: exit 2 with usage
])
def test_cli_search_inputs_are_bounded(corpus, capsys, argv, message):
    argv = [a.replace("{q}", str(corpus.files["photo.webp"])).replace("{i}", str(corpus.index)) for a in argv]
    if message is None:
        with pytest.raises(SystemExit) as exit_:
            cli_main(argv)
        assert exit_.value.code == 2
        return
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


@pytest.mark.parametrize("argv,message", [
    (["index", "--pixel-size", "0"], "pixel size must be a whole number from 4 to 1024"),
    (["index", "--pixel-size", "5000"], "pixel size must be a whole number from 4 to 1024"),
    (["index", "--batch-size", "0"], "batch size must be a whole number of at least 1"),
    (["download", "--retries", "-1"], "retries=-1 (must be 0 or more)"),
    (["download", "--max-mb", "0"], "max_bytes=0 (must be at least 1)"),
    (["download", "--workers", "0"], "workers=0 (must be at least 1)"),
])
def test_build_inputs_are_bounded(tmp_path, capsys, argv, message):
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    (tmp_path / "urls.json").write_text(json.dumps({"c": {"t": ["http://127.0.0.1:9/x.jpg"]}}))
    paths = {"index": ["--data", str(data), "--index", str(tmp_path / "index"), "--model", "none"],
             "download": ["--urls", str(tmp_path / "urls.json"), "--raw", str(tmp_path / "raw")]}[argv[0]]
    assert build_cli.main(argv + paths) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "index" / MANIFEST).exists() and not (tmp_path / "raw").exists()


def test_download_settings_are_checked_in_code_too():
    with pytest.raises(DownloadError, match="retries=-1"):
        DownloadConfig(retries=-1)
    with pytest.raises(DownloadError, match="read_timeout=0"):
        DownloadConfig(read_timeout=0)
