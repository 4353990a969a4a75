"""build_index.py's collection chain end to end.

- `all` from an existing urls.json (no browser needed: every term is already crawled) through
  download, clean, split and index, then a re-run that redoes nothing.
- The whole chain offline with one command, as a user runs it: `python build_index.py all
  --search-url http://127.0.0.1:PORT/search?text={term} --no-hub ...` against the Flickr stand-in,
  driving real headless Chromium; the result is a searchable library.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


import build_index
from collect.split import list_classes
from fault_server import FaultServer
from browser_support import needs_chromedriver

REPO = Path(__file__).resolve().parents[1]




def _paths(tmp: Path) -> list[str]:
    return ["--urls", str(tmp / "urls.json"), "--raw", str(tmp / "raw"), "--clean", str(tmp / "clean"),
            "--quarantine", str(tmp / "quarantine"), "--data", str(tmp / "data"), "--index", str(tmp / "index")]


def test_all_from_existing_urls_then_rerun_redoes_nothing(tmp_path: Path, capsys) -> None:
    with FaultServer() as srv:
        urls = {"animal": {"cat": [srv.url(f"/img/cat{i}.jpg") for i in range(5)] + [srv.url("/404.jpg")],
                           "dog": [srv.url(f"/img/dog{i}.jpg") for i in range(5)] + [srv.url("/page.jpg")]},
                "plant": {"rose": [srv.url(f"/png/rose{i}.png") for i in range(5)]}}
        (tmp_path / "urls.json").write_text(json.dumps(urls))
        cats = tmp_path / "cats.json"
        cats.write_text(json.dumps({"animal": ["cat", "dog"], "plant": ["rose"]}))
        args = ["all", "--no-hub", "--categories", str(cats), "--delay", "0.01", "--n-train", "4", "--n-test", "1",
                "--model", "none", *_paths(tmp_path)]
        assert build_index.main(args) == 0
        first_hits = srv.hits()
        out = capsys.readouterr().out
        assert "download: 17 urls (17 fetched, 0 skipped)" in out
        for split, n in (("train", 4), ("test", 1)):
            assert {c: len(f) for c, f in list_classes(tmp_path / "data" / split).items()} == \
                {"cat": n, "dog": n, "rose": n}
        assert (tmp_path / "index" / "manifest.json").is_file()

        assert build_index.main(args) == 0
        out = capsys.readouterr().out
        assert srv.hits() == first_hits  # nothing downloaded again (404 and text/html are settled)
        assert "(0 fetched, 17 skipped)" in out and "0 written" in out and "(0 copied)" in out


def test_all_needs_a_repo_id_unless_no_hub(tmp_path: Path, capsys) -> None:
    rc = build_index.main(["all", *_paths(tmp_path)])
    assert rc == 2 and "--repo-id" in capsys.readouterr().err
    assert not (tmp_path / "urls.json").exists()  # refused before any work


@needs_chromedriver
def test_whole_chain_offline_with_one_command(tmp_path: Path) -> None:
    from flickr_standin import serve_standin
    from retrieval.search import LookalikeIndex

    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps({"animal": ["cat", "dog"], "plant": ["rose"]}))
    with serve_standin(default_total=12, per_page=4, scroll_pages=1) as site:
        cmd = [sys.executable, str(REPO / "build_index.py"), "all", "--search-url", site.url_template, "--no-hub",
               "--categories", str(cats), "--max-images", "6", "--crawl-workers", "2", "--scroll-pause", "0.2",
               "--time-limit", "30", "--delay", "0.02", "--n-train", "4", "--n-test", "1", "--model", "none",
               *_paths(tmp_path)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        urls = json.loads((tmp_path / "urls.json").read_text())
        assert urls == {"animal": {"cat": site.expected_urls("cat", 6), "dog": site.expected_urls("dog", 6)},
                        "plant": {"rose": site.expected_urls("rose", 6)}}
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())["items"]
    assert len(manifest) == 18 and {r["status"] for r in manifest} == {"ok"}
    for split, n in (("train", 4), ("test", 1)):
        assert {c: len(f) for c, f in list_classes(tmp_path / "data" / split).items()} == \
            {"cat": n, "dog": n, "rose": n}
    index = LookalikeIndex.open(tmp_path / "index")
    some = next((tmp_path / "data" / "train" / "dog").iterdir())
    hits, _ = index.search(some, "pixel-l1", k=3, exclude_self=False)
    assert hits[0].label == "dog" and Path(hits[0].path).name == some.name
