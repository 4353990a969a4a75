"""Stage 1 of collection: crawl image URLs from a search site (Flickr by default) into urls.json.

Real headless Chromium through Selenium, because the search page builds its grid with JavaScript
(lazy thumbnails, infinite scroll, a "Load more" button). The page source is parsed with
BeautifulSoup; the browser is only used to render and to page. This module holds the crawl loop
(what to crawl, when a term is done, resuming); the parsing rules are in collect/search_page.py
and the browser pool in collect/browser.py. Their public names are re-exported here, since
callers import them from `collect.crawl`.

Output shape (what the downloader reads): ``{category: {term: [large-size photo URLs]}}``.

Open licences by default: the search URL asks for Creative Commons and public-domain photos only
(Flickr's ``license`` parameter, ids in `collect.provenance.DEFAULT_LICENCES`); `licences=None`
drops the filter. Beside urls.json, ``urls.provenance.json`` records the template, the licence
filter, and for each photo URL its photo page (the link around the thumbnail) and term; the later
stages carry this into ATTRIBUTION.json (see collect/provenance.py).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from retrieval.atomic import write_json

from .browser import CrawlError, DriverPool, click_load_more, find_chromedriver, open_page
from .provenance import DEFAULT_LICENCES, write_provenance
from .search_page import (FLICKR_SEARCH, extract_image_urls, extract_photos, largest_srcset_candidate,
                          search_url, to_large_size)

__all__ = ["FLICKR_SEARCH", "CrawlError", "CrawlResult", "TermFailure", "crawl_term", "crawl_urls",
           "extract_image_urls", "extract_photos", "find_chromedriver", "largest_srcset_candidate",
           "load_categories", "search_url", "to_large_size"]

log = logging.getLogger(__name__)

DEFAULT_CATEGORIES = Path(__file__).with_name("categories.json")
STALE_ROUNDS = 2  # scroll+click rounds in a row that bring nothing new before a term is finished


class TermFailure(NamedTuple):
    category: str
    term: str
    error: str


class CrawlResult(dict):
    """``{category: {term: [urls]}}`` as written to urls.json, plus ``failures`` (terms to retry)."""

    def __init__(self, data: dict[str, dict[str, list[str]]], failures: list[TermFailure]):
        super().__init__(data)
        self.failures = failures


# ---------------------------------------------------------------------------------- categories

def load_categories(path: Path | None = None) -> dict[str, list[str]]:
    """Read ``{category: [term, ...]}``; the default file holds the seed's four categories."""
    path = Path(path) if path is not None else DEFAULT_CATEGORIES
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrawlError(f"categories file {path} does not exist; pass an existing JSON file "
                         f'shaped {{"category": ["term", ...]}}') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrawlError(f"categories file {path} is not readable JSON ({exc}); fix or replace it") from None
    ok = isinstance(data, dict) and data and all(
        isinstance(c, str) and c.strip() and isinstance(ts, list) and ts
        and all(isinstance(t, str) and t.strip() for t in ts) for c, ts in data.items())
    if not ok:
        raise CrawlError(f'categories file {path} must map each category name to a non-empty list of '
                         f'term strings, e.g. {{"animal": ["cat", "dog"]}}')
    return {c.strip(): [t.strip() for t in ts] for c, ts in data.items()}


# ---------------------------------------------------------------------------------- one term

def crawl_term(driver: Any, term: str, *, url_template: str = FLICKR_SEARCH, max_images: int = 50,
               time_limit: float = 120.0, scroll_pause: float = 1.0, licences: str | None = DEFAULT_LICENCES,
               pages: dict[str, str | None] | None = None) -> list[str]:
    """Open one term's search page and page through it until `max_images`, no news, or `time_limit`.
    `pages`, when given, receives {photo URL: photo page or None} for the URLs returned."""
    open_page(driver, search_url(url_template, term, licences))
    deadline = time.monotonic() + time_limit
    urls: dict[str, None] = {}
    stale, reason = 0, "nothing new"
    with tqdm(total=max_images, desc=term[:24], unit="img", leave=False) as bar:
        while True:
            before = len(urls)
            for found, page in extract_photos(driver.page_source, driver.current_url).items():
                if len(urls) >= max_images:
                    break
                urls.setdefault(found)
                if pages is not None:
                    pages.setdefault(found, page)
            bar.update(len(urls) - before)
            stale = stale + 1 if len(urls) == before else 0
            if len(urls) >= max_images:
                reason = "max_images reached"
                break
            if stale >= STALE_ROUNDS:
                break
            if time.monotonic() >= deadline:
                reason = "time limit"
                break
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
            time.sleep(scroll_pause)
            if click_load_more(driver):
                time.sleep(scroll_pause)
    log.info("%s: %d URLs (%s)", term, len(urls), reason)
    return list(urls)


# ---------------------------------------------------------------------------------- the stage

def _read_existing(out_path: Path | None, force: bool) -> dict[str, dict[str, list[str]]]:
    if out_path is None or not out_path.exists():
        return {}
    try:
        data = json.loads(out_path.read_text(encoding="utf-8"))
        ok = isinstance(data, dict) and all(
            isinstance(terms, dict) and all(isinstance(u, list) for u in terms.values())
            for terms in data.values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        if force:
            log.warning("%s is not a urls.json; --force overwrites it", out_path)
            return {}
        raise CrawlError(f"{out_path} exists but is not a urls.json ({{category: {{term: [urls]}}}}); "
                         f"move it away or re-run with force to overwrite it")
    return data


def _ordered(categories: dict[str, list[str]], data: dict[str, dict[str, list[str]]]) -> dict:
    """The requested categories and terms first, in their order; entries from older runs after."""
    out: dict[str, dict[str, list[str]]] = {}
    for category, terms in categories.items():
        have = data.get(category, {})
        out[category] = {t: have[t] for t in terms if t in have}
        out[category].update({t: u for t, u in have.items() if t not in out[category]})
    out.update({c: dict(ts) for c, ts in data.items() if c not in out})
    return out


def crawl_urls(categories: dict[str, list[str]], *, url_template: str = FLICKR_SEARCH, max_images: int = 50,
               workers: int = 4, time_limit: float = 120.0, scroll_pause: float = 1.0,
               out_path: Path | None = None, force: bool = False,
               licences: str | None = DEFAULT_LICENCES) -> CrawlResult:
    """Crawl every term's search page in parallel (one Chrome per worker) and collect photo URLs.

    With `out_path`, urls.json is rewritten atomically after each term, so an interrupted crawl
    resumes: terms already there with URLs are skipped unless `force`. Entries of other terms
    already in the file are kept. Returns what the file holds; ``.failures`` lists the terms that
    failed (logged, left out of the file so a re-run retries them) while the others went on.
    `time_limit` is per term, in seconds of paging after the page has loaded. `licences`: the
    licence ids asked for (default: Creative Commons and public domain), None for no filter;
    with `out_path` it is recorded, with each photo's page and term, in urls.provenance.json.
    """
    _check_arguments(url_template, max_images, workers, time_limit, scroll_pause)
    out_path = Path(out_path) if out_path is not None else None
    data = _read_existing(out_path, force)
    todo = _terms_to_crawl(categories, data, force, out_path)

    def record(category: str, term: str, urls: list[str], pages: dict[str, str | None]) -> None:
        """Keep one term's URLs; with `out_path`, write them and their provenance straight away."""
        data.setdefault(category, {})[term] = urls
        if out_path is not None:
            write_provenance(out_path, search_url=url_template, licences=licences,
                             photos=_photo_records(url_template, licences, category, term, urls, pages))
            write_json(out_path, _ordered(categories, data))

    crawl_one = partial(crawl_term, url_template=url_template, max_images=max_images, time_limit=time_limit,
                        scroll_pause=scroll_pause, licences=licences)
    failures = _crawl_parallel(todo, workers, crawl_one, record) if todo else []
    result = _ordered(categories, data)
    if out_path is not None and not out_path.exists():
        write_json(out_path, result)
    if failures:
        log.warning("%d of %d terms failed (re-run to retry them): %s", len(failures), len(todo),
                    ", ".join(f.term for f in failures))
    return CrawlResult(result, failures)


def _check_arguments(url_template: str, max_images: int, workers: int, time_limit: float,
                     scroll_pause: float) -> None:
    """Refuse a template without a term placeholder or out-of-range limits before any browser starts."""
    if "{term}" not in url_template and "{search_term}" not in url_template:
        raise CrawlError(f"search URL template {url_template!r} has no {{term}} placeholder, "
                         f"e.g. {FLICKR_SEARCH}")
    if max_images < 1 or workers < 1 or time_limit < 0 or scroll_pause < 0:
        raise CrawlError("max_images and workers must be at least 1; time_limit and scroll_pause not negative")


def _terms_to_crawl(categories: dict[str, list[str]], data: dict[str, dict[str, list[str]]], force: bool,
                    out_path: Path | None) -> list[tuple[str, str]]:
    """(category, term) pairs still to crawl: each term once, those with URLs in `data` skipped unless `force`."""
    todo = [(c, t) for c, terms in categories.items() for t in dict.fromkeys(terms)
            if force or not data.get(c, {}).get(t)]
    skipped = sum(len(set(ts)) for ts in categories.values()) - len(todo)
    if skipped:
        log.info("resuming: %d terms already in %s, %d to crawl", skipped, out_path, len(todo))
    return todo


def _photo_records(url_template: str, licences: str | None, category: str, term: str, urls: list[str],
                   pages: dict[str, str | None]) -> dict[str, dict[str, str | None]]:
    """urls.provenance.json entries for one term's photos. Values are text except page_url, which is
    None (JSON null) where the thumbnail had no link."""
    search_page = search_url(url_template, term, licences)
    return {u: {"page_url": pages.get(u), "term": term, "category": category, "search_page": search_page,
                "licence_filter": licences or "none"} for u in urls}


def _first_line(exc: BaseException) -> str:
    """A failure's message as one log line: the exception's first line, else its type."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _crawl_parallel(todo: list[tuple[str, str]], workers: int, crawl_one: Callable[..., list[str]],
                    record: Callable[[str, str, list[str], dict[str, str | None]], None]) -> list[TermFailure]:
    """Run `crawl_one(driver, term, pages=...)` for each term on `workers` threads (one Chrome each),
    hand each success to `record` as it finishes, and return the failures; one failed term does
    not stop the others."""
    pool = DriverPool(find_chromedriver())

    def work(term: str) -> tuple[list[str], dict[str, str | None]]:
        pages: dict[str, str | None] = {}
        try:
            return crawl_one(pool.get(), term, pages=pages), pages
        except CrawlError:  # the page answered badly; the browser itself is fine
            raise
        except Exception:  # the browser may be wedged: the next term on this thread gets a new one
            pool.discard()
            raise

    failures: list[TermFailure] = []
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl")
    try:
        futures = {executor.submit(work, term): (category, term) for category, term in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc="terms", unit="term"):
            category, term = futures[future]
            try:
                urls, pages = future.result()
            except Exception as exc:
                message = _first_line(exc)
                log.error("term %r (%s) failed: %s", term, category, message)
                failures.append(TermFailure(category, term, message))
                continue
            record(category, term, urls, pages)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        pool.close()
    return failures
