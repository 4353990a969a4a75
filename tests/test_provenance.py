"""Crawls with provenance and open licences: the licence filter reaches the requested search URL,
and every image's source URL, photo page and term travel crawl -> download -> clean -> split ->
ATTRIBUTION.json -> Hub rows (the same offline round trip as the Hub tests) -> the About tab."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


from collect import hub
from collect.crawl import extract_photos, search_url
from collect.provenance import DEFAULT_LICENCES, licence_text, provenance_path
from retrieval.attribution import read_attribution
from browser_support import needs_chromedriver

REPO = Path(__file__).resolve().parents[1]




def test_search_url_asks_for_open_licences() -> None:
    flickr = search_url("https://www.flickr.com/search/?text={term}", "red car", DEFAULT_LICENCES)
    assert parse_qs(urlsplit(flickr).query) == {"text": ["red car"], "license": [DEFAULT_LICENCES]}
    assert search_url("http://h/s?q={term}", "x", None) == "http://h/s?q=x"                 # no filter
    assert search_url("http://h/s?q={term}&license=4", "x", "1,2") == "http://h/s?q=x&license=4"  # template wins
    assert search_url("http://h/{term}?lic={licences}", "x", "9,10") == "http://h/x?lic=9,10"
    assert search_url("http://h/search/{term}", "x", "9") == "http://h/search/x?license=9"
    assert "0" not in DEFAULT_LICENCES.split(",")          # never "all rights reserved"


def test_photo_page_is_the_link_around_the_thumbnail() -> None:
    html = ('<div><a href="/photos/ann/1/"><img src="https://live.staticflickr.com/1/1_aa_m.jpg"></a>'
            '<img src="https://live.staticflickr.com/1/2_bb_m.jpg"></div>')
    assert extract_photos(html, "https://www.flickr.com/search/?text=x") == {
        "https://live.staticflickr.com/1/1_aa_b.jpg": "https://www.flickr.com/photos/ann/1/",
        "https://live.staticflickr.com/1/2_bb_b.jpg": None}


@needs_chromedriver
def test_crawl_to_hub_rows_keeps_every_source_url(tmp_path: Path) -> None:
    from flickr_standin import serve_standin
    from webui.texts import credits_markdown

    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps({"animal": ["cat", "dog"], "plant": ["rose"]}))
    paths = ["--urls", str(tmp_path / "urls.json"), "--raw", str(tmp_path / "raw"), "--clean", str(tmp_path / "clean"),
             "--quarantine", str(tmp_path / "quarantine"), "--data", str(tmp_path / "data"),
             "--index", str(tmp_path / "index")]
    with serve_standin(default_total=12, per_page=4, scroll_pages=1) as site:
        cmd = [sys.executable, str(REPO / "build_index.py"), "all", "--search-url", site.url_template, "--no-hub",
               "--categories", str(cats), "--max-images", "5", "--crawl-workers", "2", "--scroll-pause", "0.2",
               "--time-limit", "30", "--delay", "0.02", "--n-train", "4", "--n-test", "1", "--model", "none", *paths]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        searches = [r for r in site.requests if urlsplit(r).path == "/search"]
        crawled = json.loads((tmp_path / "urls.json").read_text())
        per_term = {t: urls for terms in crawled.values() for t, urls in terms.items()}
        base = site.base_url
    assert len(searches) == 3
    for r in searches:   # the licence parameter is in every requested search URL
        assert parse_qs(urlsplit(r).query)["license"] == [DEFAULT_LICENCES]

    prov = json.loads(provenance_path(tmp_path / "urls.json").read_text())
    assert prov["licence_filter"] == DEFAULT_LICENCES and prov["search_url"].endswith("/search?text={term}")
    assert set(prov["photos"]) == {u for urls in per_term.values() for u in urls}
    assert all(p["page_url"].startswith(base + "/photos/owner/") for p in prov["photos"].values())

    data = tmp_path / "data"
    records = {r["file"]: r for r in read_attribution(data).records}
    files = sorted(p.relative_to(data).as_posix() for p in data.glob("*/*/*") if p.is_file())
    assert len(files) == 15 and sorted(records) == files           # every image has its record
    for rel, rec in records.items():
        split, cls, _ = rel.split("/")
        assert rec["split"] == split and rec["term"] == cls and rec["url"] in per_term[cls]
        assert rec["licence"] == licence_text(DEFAULT_LICENCES) and rec["licence_filter"] == DEFAULT_LICENCES
        assert rec["page_url"] == prov["photos"][rec["url"]]["page_url"] and rec["source"] == "127.0.0.1"

    # the same offline round trip the Hub tests use: data/ -> repo folder (parquet + card) -> rows
    dd = hub.data_to_datasetdict(data)
    folder = tmp_path / "repo"
    hub.write_hub_folder(dd, folder, repo_id="someone/crawled", data_dir=data)
    back = hub.read_hub_folder(folder)
    names = back["train"].features["label"].names
    rows = {f"{split}/{names[r['label']]}/{r['file']}": r for split, ds in back.items()
            for r in ds.remove_columns("image")}
    assert sorted(rows) == files
    for rel, row in rows.items():
        assert row["source_url"] == records[rel]["url"] and row["page_url"] == records[rel]["page_url"]
        assert row["licence_filter"] == DEFAULT_LICENCES and row["licence"] == licence_text(DEFAULT_LICENCES)
    card = (folder / "README.md").read_text()
    assert "## Provenance columns" in card and "`source_url`" in card and "licence_filter" in card

    about = credits_markdown(data)
    assert "**Provenance:** 15 images were crawled for 3 search terms" in about and DEFAULT_LICENCES in about
    assert "[photo page](" + base + "/photos/owner/" in about


def test_no_filter_is_recorded_as_unknown_licences(tmp_path: Path) -> None:
    from collect.provenance import write_provenance, write_raw_attribution

    raw = tmp_path / "raw"
    (raw / "a" / "cat").mkdir(parents=True)
    (raw / "a" / "cat" / "x.jpg").write_bytes(b"not checked here")
    (raw / "manifest.json").write_text(json.dumps({"items": [
        {"category": "a", "term": "cat", "url": "http://h/x.jpg", "file": "a/cat/x.jpg", "status": "ok"},
        {"category": "a", "term": "cat", "url": "http://h/y.jpg", "file": None, "status": "http_404"}]}))
    urls = tmp_path / "urls.json"
    write_provenance(urls, search_url="http://h/s?q={term}", licences=None,
                     photos={"http://h/x.jpg": {"term": "cat", "search_page": "http://h/s?q=cat"}})
    assert write_raw_attribution(raw, urls) == 1
    (rec,) = read_attribution(raw).records
    assert rec["licence"] == "unknown:no-licence-filter" and rec["licence_filter"] == "none"
    assert rec["url"] == "http://h/x.jpg" and "page_url" not in rec and rec["file"] == "a/cat/x.jpg"
