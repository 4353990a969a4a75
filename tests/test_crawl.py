"""The URL crawler: page parsing rules, and the real crawler driving headless Chromium against a
local Flickr stand-in (lazy thumbnails, infinite scroll, a "Load more" button, decoys, a failing term)."""
from __future__ import annotations

import io
import json
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from collect.crawl import CrawlError, crawl_urls, load_categories
from collect.search_page import extract_image_urls, largest_srcset_candidate, search_url, to_large_size
from flickr_standin import serve_standin
from browser_support import needs_chromedriver




needs_chrome = needs_chromedriver

FAST = {"scroll_pause": 0.2, "time_limit": 30.0}


# ---------------------------------------------------------------------------------- parsing rules

@pytest.mark.parametrize("url, large", [
    ("https://live.staticflickr.com/65535/53012345678_abc123def0_m.jpg",
     "https://live.staticflickr.com/65535/53012345678_abc123def0_b.jpg"),
    ("https://live.staticflickr.com/1/2_ab_n.jpg?s=1", "https://live.staticflickr.com/1/2_ab_b.jpg?s=1"),
    ("https://farm1.staticflickr.com/1/2_ab_Z.JPG", "https://farm1.staticflickr.com/1/2_ab_b.JPG"),
    ("https://live.staticflickr.com/1/2_ab_o.jpg", "https://live.staticflickr.com/1/2_ab_o.jpg"),  # larger: kept
    ("https://live.staticflickr.com/1/2_ab_b.jpg", "https://live.staticflickr.com/1/2_ab_b.jpg"),
    ("https://example.org/img/holiday_m.jpg", "https://example.org/img/holiday_m.jpg"),  # not a Flickr name
    ("https://example.org/2_ab_m.jpg/page", "https://example.org/2_ab_m.jpg/page"),
])
def test_to_large_size(url: str, large: str) -> None:
    assert to_large_size(url) == large


@pytest.mark.parametrize("srcset, best", [
    ("a_m.jpg 240w, b_z.jpg 640w, c_n.jpg 320w", "b_z.jpg"),
    ("a.jpg 1x, b.jpg 2x", "b.jpg"),
    ("a.jpg 1.5x,b.jpg", "a.jpg"),
    ("only.jpg", "only.jpg"),
    ("first.jpg, second.jpg 3x", "second.jpg"),
    ("  ", None),
])
def test_largest_srcset_candidate(srcset: str, best: str | None) -> None:
    assert largest_srcset_candidate(srcset) == best


def test_extract_image_urls_keeps_photos_and_drops_decoys() -> None:
    html = """
    <img src="https://combo.staticflickr.com/ap/build/images/getty/IStock_corporate_logo.svg">
    <img src="/images/site-logo.png"><img src="/sprites/main-sprite.png">
    <img src="https://combo.staticflickr.com/pw/images/buddyicon00.png">
    <img class="avatar person" src="/u/9_ff_m.jpg">
    <img src="/stats/t.gif" width="1" height="1">
    <img src="data:image/gif;base64,R0lGOD" >
    <img src="data:image/gif;base64,R0lGOD" data-src="//live.staticflickr.com/1/10_aa_m.jpg">
    <img srcset="//live.staticflickr.com/1/11_bb_n.jpg 320w, //live.staticflickr.com/1/11_bb_z.jpg 640w">
    <img src="https://live.staticflickr.com/1/12_cc_w.jpg">
    <img src="https://live.staticflickr.com/1/10_aa_q.jpg">
    <img alt="no source at all">
    """
    assert extract_image_urls(html, "https://www.flickr.com/search/?text=cat") == [
        "https://live.staticflickr.com/1/10_aa_b.jpg",
        "https://live.staticflickr.com/1/11_bb_b.jpg",
        "https://live.staticflickr.com/1/12_cc_b.jpg",
    ]


def test_search_url_quotes_the_term() -> None:
    assert search_url("https://www.flickr.com/search/?text={term}", "palm tree/&x") == \
        "https://www.flickr.com/search/?text=palm%20tree%2F%26x"
    assert search_url("http://h/s?q={search_term}", "Cat") == "http://h/s?q=Cat"  # the seed's placeholder


def test_standin_page_parses_to_the_first_page_of_photos() -> None:
    """The stand-in's page really holds decoys and small sizes; the parser reduces it to page 1 at _b."""
    with serve_standin() as site:
        page = urllib.request.urlopen(site.url_template.format(term="cat"), timeout=10).read().decode()
    assert page.count("<img") > 2 * site.per_page  # decoys and avatars are there to be dropped
    for decoy in ("IStock_corporate_logo.svg", "icons-sprite.png", "buddyicon", "data:image/gif", 'width="1"'):
        assert decoy in page
    assert extract_image_urls(page, site.url_template.format(term="cat")) == site.expected_urls("cat", site.per_page)


def test_load_categories_default_is_the_seed(tmp_path: Path) -> None:
    cats = load_categories()
    assert {c: len(t) for c, t in cats.items()} == {"animal": 50, "plant": 40, "furniture": 19, "scenery": 25}
    assert cats["animal"][:3] == ["Monkey", "Elephant", "cows"] and cats["scenery"][-1] == "waterfall"

    good = tmp_path / "cats.json"
    good.write_text(json.dumps({" pets ": [" cat", "dog "]}))
    assert load_categories(good) == {"pets": ["cat", "dog"]}
    for bad in ({"animal": []}, {"animal": "cat"}, ["cat"], {"animal": ["cat", 3]}):
        good.write_text(json.dumps(bad))
        with pytest.raises(CrawlError, match="non-empty list"):
            load_categories(good)
    good.write_text("{not json")
    with pytest.raises(CrawlError, match="not readable JSON"):
        load_categories(good)
    with pytest.raises(CrawlError, match="does not exist"):
        load_categories(tmp_path / "missing.json")


def test_bad_arguments_fail_before_a_browser_starts(tmp_path: Path) -> None:
    with pytest.raises(CrawlError, match="placeholder"):
        crawl_urls({"a": ["cat"]}, url_template="http://127.0.0.1:1/search")
    with pytest.raises(CrawlError, match="at least 1"):
        crawl_urls({"a": ["cat"]}, max_images=0)
    out = tmp_path / "urls.json"
    out.write_text('["not", "a", "urls.json"]')
    with pytest.raises(CrawlError, match="not a urls.json"):
        crawl_urls({"a": ["cat"]}, out_path=out)


# ---------------------------------------------------------------------------------- real browser

@needs_chrome
def test_crawl_end_to_end_parallel_with_failure_then_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "urls.json"
    categories = {"animal": ["cat", "dog"], "plant": ["broken"]}
    with serve_standin(totals={"dog": 10}, fail_terms={"broken"}) as site:
        with caplog.at_level(logging.ERROR, logger="collect.crawl"):
            result = crawl_urls(categories, url_template=site.url_template, max_images=20, workers=2,
                                out_path=out, **FAST)

        # exactly the large-size URLs, in page order, capped; dog runs out (10) before the cap
        assert result["animal"]["cat"] == site.expected_urls("cat", 20)
        assert result["animal"]["dog"] == site.expected_urls("dog")
        assert len(result["animal"]["dog"]) == 10
        # cat needed both infinite scroll and the Load more button to reach 20
        assert site.hits("/api/page", text="cat", via="scroll") >= 1
        assert site.hits("/api/page", text="cat", via="button") >= 1
        # the failing term is reported and logged; the others were not held back
        assert [(f.category, f.term) for f in result.failures] == [("plant", "broken")]
        assert "500" in result.failures[0].error and "broken" in caplog.text
        assert json.loads(out.read_text()) == {"animal": {"cat": result["animal"]["cat"],
                                                          "dog": result["animal"]["dog"]},
                                               "plant": {}}
        # the crawled URLs are real large images on the same server (what the downloader fetches)
        with urllib.request.urlopen(result["animal"]["cat"][0], timeout=10) as resp:
            assert resp.headers["Content-Type"] == "image/jpeg"
            assert Image.open(io.BytesIO(resp.read())).size == (160, 120)

        # resume: the site heals; only the failed term is crawled again
        site.fail_terms.clear()
        searched_before = site.hits("/search", text="cat") + site.hits("/search", text="dog")
        again = crawl_urls(categories, url_template=site.url_template, max_images=20, workers=2,
                           out_path=out, **FAST)
        assert site.hits("/search", text="cat") + site.hits("/search", text="dog") == searched_before
        assert site.hits("/search", text="broken") == 2
        assert again.failures == []
        assert again == {"animal": result["animal"], "plant": {"broken": site.expected_urls("broken", 20)}}
        assert json.loads(out.read_text()) == again


@needs_chrome
def test_resume_keeps_finished_terms_retries_empty_ones_and_force_recrawls(tmp_path: Path) -> None:
    out = tmp_path / "urls.json"
    earlier = {"animal": {"cat": ["http://elsewhere.example/1_aa_b.jpg"], "dog": []},
               "old": {"kept": ["http://elsewhere.example/2_bb_b.jpg"]}}
    out.write_text(json.dumps(earlier))
    with serve_standin(totals={"dog": 4}) as site:
        result = crawl_urls({"animal": ["cat", "dog"]}, url_template=site.url_template, max_images=5,
                            workers=1, out_path=out, **FAST)
        assert site.hits("/search", text="cat") == 0  # finished: skipped
        assert result == {"animal": {"cat": earlier["animal"]["cat"], "dog": site.expected_urls("dog")},
                          "old": earlier["old"]}  # an empty term is retried; other entries are kept
        assert json.loads(out.read_text()) == result

        # force re-crawls; time_limit=0 stops paging at once, keeping the first page only
        forced = crawl_urls({"animal": ["cat"]}, url_template=site.url_template, max_images=50, workers=1,
                            out_path=out, force=True, scroll_pause=0.2, time_limit=0)
        assert site.hits("/search", text="cat") == 1 and site.hits("/api/page", text="cat") == 0
        assert forced["animal"]["cat"] == site.expected_urls("cat", site.per_page)
        assert forced["animal"]["dog"] == result["animal"]["dog"]
        assert json.loads(out.read_text()) == forced


@needs_chrome
def test_unreachable_search_site_is_a_reported_failure(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "urls.json"
    result = crawl_urls({"animal": ["cat"]}, url_template=f"http://127.0.0.1:{port}/search?text={{term}}",
                        workers=1, out_path=out, **FAST)
    assert [(f.term, "could not be loaded" in f.error) for f in result.failures] == [("cat", True)]
    assert result == {"animal": {}} and json.loads(out.read_text()) == {"animal": {}}


def test_standin_serves_extra_images_and_scripted_routes() -> None:
    """The stand-in is shared with the downloader's tests: extra images and scripted replies work."""
    from flickr_standin import Reply, make_jpeg

    jpeg = make_jpeg("x")
    with serve_standin(images={"/extra/a.png": b"\x89PNG fake"}) as site:
        site.add_route("/flaky.jpg", [Reply(500, b"", "text/plain"), Reply(200, jpeg)])
        with urllib.request.urlopen(site.url("/extra/a.png"), timeout=10) as resp:
            assert (resp.headers["Content-Type"], resp.read()) == ("image/png", b"\x89PNG fake")
        with pytest.raises(urllib.error.HTTPError, match="500"):
            urllib.request.urlopen(site.url("/flaky.jpg"), timeout=10)
        for _ in range(2):
            assert urllib.request.urlopen(site.url("/flaky.jpg"), timeout=10).read() == jpeg
        assert site.hits("/flaky.jpg") == 3
