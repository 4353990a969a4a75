"""Stage 1 of collection: crawl image URLs from a search site (Flickr by default) into urls.json.

Real headless Chromium through Selenium, because the search page builds its grid with JavaScript
(lazy thumbnails, infinite scroll, a "Load more" button). The page source is parsed with
BeautifulSoup; the browser is only used to render and to page.

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
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from bs4 import BeautifulSoup
from tqdm import tqdm

from retrieval.atomic import write_json
from retrieval.errors import LookalikeError

from .provenance import DEFAULT_LICENCES, write_provenance

log = logging.getLogger(__name__)

FLICKR_SEARCH = "https://www.flickr.com/search/?text={term}"
DEFAULT_CATEGORIES = Path(__file__).with_name("categories.json")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1280,1024")
PAGE_LOAD_TIMEOUT_S = 60.0  # a search page that does not load in this time is a failed term
STALE_ROUNDS = 2  # scroll+click rounds in a row that bring nothing new before a term is finished

# Flickr photo files are <id>_<secret>_<size>.<ext>; these sizes are all smaller than _b (1024 px).
_FLICKR_SMALL = re.compile(r"(/\d+_[0-9a-f]+)_[sqtmnwzc](\.(?:jpe?g|png|gif))$", re.IGNORECASE)
# Site furniture rather than photos, matched in the URL path or the <img> class.
_DECOY_WORDS = ("logo", "buddyicon", "avatar", "sprite", "spacer", "pixel", "beacon", "1x1",
                "blank.gif", "transparent.gif")
# The "load more" control, by its visible text and element kind; never by a generated id.
_LOAD_MORE_XPATH = (
    "//*[self::button or self::a or @role='button']"
    "[contains(translate(normalize-space(.), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),"
    " 'load more')]"
)
_PAGE_STATE_JS = ("const n = performance.getEntriesByType('navigation');"
                  "return [location.href, n.length ? n[0].responseStatus : 0];")


class CrawlError(LookalikeError):
    """The crawl cannot start or a search page cannot be used (bad categories file, no browser, HTTP error)."""


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


# ---------------------------------------------------------------------------------- page parsing

def to_large_size(url: str) -> str:
    """Rewrite a Flickr thumbnail URL (``_s _q _t _m _n _w _z _c``) to the 1024-px ``_b`` size."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=_FLICKR_SMALL.sub(r"\1_b\2", parts.path)))


def largest_srcset_candidate(srcset: str) -> str | None:
    """The URL with the largest width (``640w``) or density (``2x``) descriptor in a srcset."""
    candidates: list[tuple[tuple[int, float], str]] = []
    pos, n = 0, len(srcset)
    while pos < n:
        while pos < n and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not srcset[pos].isspace():
            pos += 1
        url, descriptor = srcset[start:pos], ""
        if url.endswith(","):  # a candidate without a descriptor, as the HTML spec parses it
            url = url.rstrip(",")
        else:
            end = srcset.find(",", pos)
            end = n if end < 0 else end
            descriptor, pos = srcset[pos:end].strip().lower(), end + 1
        if not url:
            continue
        try:
            key = (1, float(descriptor[:-1])) if descriptor.endswith("w") else \
                  (0, float(descriptor[:-1]) if descriptor.endswith("x") else 1.0)
        except ValueError:
            key = (0, 1.0)
        candidates.append((key, url))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _is_photo_url(url: str) -> bool:
    parts = urlsplit(url)
    path = parts.path.lower()
    return (parts.scheme in ("http", "https") and bool(parts.netloc) and not path.endswith(".svg")
            and not any(word in path for word in _DECOY_WORDS))


def _is_decoy_tag(img: Any) -> bool:
    classes = " ".join(img.get("class") or []).lower()
    if any(word in classes for word in _DECOY_WORDS):
        return True
    try:
        return int(img.get("width", 99)) <= 2 and int(img.get("height", 99)) <= 2  # tracking pixel
    except (TypeError, ValueError):
        return False


def _img_source(img: Any, base_url: str) -> str | None:
    """The best photo URL of one <img>: its largest srcset candidate, else data-src, else src."""
    for attr in ("srcset", "data-srcset", "data-src", "src"):
        value = (img.get(attr) or "").strip()
        if attr.endswith("srcset"):
            value = largest_srcset_candidate(value) or ""
        if value:
            url = urljoin(base_url, value)  # also makes //host/... absolute with the page's scheme
            if _is_photo_url(url):
                return url
    return None


def _href(tag: Any) -> str:
    """A tag's href. bs4 types attribute values as text or a list (for multi-valued attributes such
    as class); href is single-valued, so a list here can only be its one value split."""
    value = tag["href"]
    return value if isinstance(value, str) else " ".join(value)


def extract_photos(html: str, page_url: str) -> dict[str, str | None]:
    """{large-size photo URL: its photo page or None} for every <img> in `html`, decoys dropped,
    first occurrence kept. The photo page is the link around the thumbnail, where there is one."""
    soup = BeautifulSoup(html, "html.parser")
    base = soup.find("base", href=True)
    base_url = urljoin(page_url, _href(base)) if base else page_url
    photos: dict[str, str | None] = {}
    for img in soup.find_all("img"):
        if _is_decoy_tag(img):
            continue
        url = _img_source(img, base_url)
        if url is not None:
            link = img.find_parent("a", href=True)
            page = urljoin(base_url, _href(link)) if link is not None else None
            photos.setdefault(to_large_size(url), page if page and urlsplit(page).scheme in ("http", "https") else None)
    return photos


def extract_image_urls(html: str, page_url: str) -> list[str]:
    """Photo URLs of every <img> in `html`, large size, decoys dropped, first occurrence kept."""
    return list(extract_photos(html, page_url))


def search_url(url_template: str, term: str, licences: str | None = None) -> str:
    """The search page for `term`; ``{term}`` (or the seed's ``{search_term}``) is URL-quoted.

    With `licences` (comma-separated licence ids), the page is asked for those licences only:
    through a ``{licences}`` placeholder if the template has one, else as a ``license`` query
    parameter (Flickr's), unless the template sets ``license=`` itself."""
    q = quote(term, safe="")
    url = url_template.replace("{search_term}", q).replace("{term}", q)
    if "{licences}" in url:
        return url.replace("{licences}", quote(licences or "", safe=","))
    if licences and "license=" not in urlsplit(url).query:
        url += ("&" if urlsplit(url).query else ("" if url.endswith("?") else "?")) + "license=" + quote(licences, safe=",")
    return url


# ---------------------------------------------------------------------------------- browser

def _find_binary(env: str, names: tuple[str, ...], fallback: str) -> str | None:
    for candidate in (os.environ.get(env), *(shutil.which(n) for n in names), fallback):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def find_chromedriver() -> str:
    """The chromedriver to use; passed to Selenium explicitly so Selenium Manager never downloads one."""
    path = _find_binary("LOOKALIKE_CHROMEDRIVER", ("chromedriver",), "/usr/bin/chromedriver")
    if path is None:
        raise CrawlError("chromedriver not found: install it (Debian: apt-get install chromium "
                         "chromium-driver) or set LOOKALIKE_CHROMEDRIVER to its path")
    return path


class _DriverPool:
    """One Chrome per worker thread, created on first use; all quit (and their profiles removed) at close."""

    def __init__(self, driver_path: str):
        self._driver_path = driver_path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._live: list[tuple[Any, str]] = []

    def get(self) -> Any:
        entry = getattr(self._local, "entry", None)
        if entry is None:
            entry = self._local.entry = self._start()
            with self._lock:
                self._live.append(entry)
        return entry[0]

    def discard(self) -> None:
        """Drop this thread's driver (after a failure it may be wedged); the next term starts a fresh one."""
        entry = getattr(self._local, "entry", None)
        self._local.entry = None
        if entry is not None:
            with self._lock:
                self._live.remove(entry)
            self._quit(entry)

    def close(self) -> None:
        with self._lock:
            live, self._live = self._live, []
        for entry in live:
            self._quit(entry)

    def _start(self) -> tuple[Any, str]:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        profile = tempfile.mkdtemp(prefix="lookalike-chrome-")
        options = webdriver.ChromeOptions()
        for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        browser = _find_binary("LOOKALIKE_CHROME", ("chromium", "chromium-browser", "google-chrome"),
                               "/usr/bin/chromium")
        if browser:
            options.binary_location = browser
        try:
            driver = webdriver.Chrome(service=Service(self._driver_path), options=options)
        except Exception:
            shutil.rmtree(profile, ignore_errors=True)
            raise
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        return driver, profile

    @staticmethod
    def _quit(entry: tuple[Any, str]) -> None:
        driver, profile = entry
        try:
            driver.quit()
        except Exception as exc:  # a crashed browser must not stop the others from closing
            log.debug("quitting Chrome failed: %s", exc)
        shutil.rmtree(profile, ignore_errors=True)


def _click_load_more(driver: Any) -> bool:
    """Click the first visible, enabled "load more" control; True if one was clicked."""
    from selenium.common.exceptions import WebDriverException

    for button in driver.find_elements("xpath", _LOAD_MORE_XPATH):
        try:
            if not (button.is_displayed() and button.is_enabled()):
                continue
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
            try:
                button.click()
            except WebDriverException:  # covered by an overlay: a script click still fires onclick
                driver.execute_script("arguments[0].click();", button)
            return True
        except WebDriverException as exc:  # gone between find and click (the page re-rendered)
            log.debug("load-more control vanished: %s", exc)
    return False


def crawl_term(driver: Any, term: str, *, url_template: str = FLICKR_SEARCH, max_images: int = 50,
               time_limit: float = 120.0, scroll_pause: float = 1.0, licences: str | None = DEFAULT_LICENCES,
               pages: dict[str, str | None] | None = None) -> list[str]:
    """Open one term's search page and page through it until `max_images`, no news, or `time_limit`.
    `pages`, when given, receives {photo URL: photo page or None} for the URLs returned."""
    from selenium.common.exceptions import WebDriverException

    url = search_url(url_template, term, licences)
    try:  # Chrome either raises (net::ERR_...) or shows its own error page, depending on the case
        driver.get(url)
        href, status = driver.execute_script(_PAGE_STATE_JS)
        problem = "Chrome error page" if str(href).startswith("chrome-error://") else None
    except WebDriverException as exc:
        problem = (exc.msg or type(exc).__name__).strip().splitlines()[0]
    if problem:
        raise CrawlError(f"search page {url} could not be loaded ({problem}); is the site reachable?")
    if status and int(status) >= 400:
        raise CrawlError(f"search page {url} answered HTTP {status}")

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
            if _click_load_more(driver):
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
    if "{term}" not in url_template and "{search_term}" not in url_template:
        raise CrawlError(f"search URL template {url_template!r} has no {{term}} placeholder, "
                         f"e.g. {FLICKR_SEARCH}")
    if max_images < 1 or workers < 1 or time_limit < 0 or scroll_pause < 0:
        raise CrawlError("max_images and workers must be at least 1; time_limit and scroll_pause not negative")
    out_path = Path(out_path) if out_path is not None else None
    data = _read_existing(out_path, force)
    todo = [(c, t) for c, terms in categories.items() for t in dict.fromkeys(terms)
            if force or not data.get(c, {}).get(t)]
    skipped = sum(len(set(ts)) for ts in categories.values()) - len(todo)
    if skipped:
        log.info("resuming: %d terms already in %s, %d to crawl", skipped, out_path, len(todo))
    failures: list[TermFailure] = []
    if todo:
        pool = _DriverPool(find_chromedriver())

        def work(term: str) -> tuple[list[str], dict[str, str | None]]:
            pages: dict[str, str | None] = {}
            try:
                urls = crawl_term(pool.get(), term, url_template=url_template, max_images=max_images,
                                  time_limit=time_limit, scroll_pause=scroll_pause, licences=licences,
                                  pages=pages)
                return urls, pages
            except CrawlError:  # the page answered badly; the browser itself is fine
                raise
            except Exception:  # the browser may be wedged: the next term on this thread gets a new one
                pool.discard()
                raise

        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl")
        try:
            futures = {executor.submit(work, term): (category, term) for category, term in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="terms", unit="term"):
                category, term = futures[future]
                try:
                    urls, pages = future.result()
                    data.setdefault(category, {})[term] = urls
                except Exception as exc:
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    log.error("term %r (%s) failed: %s", term, category, message)
                    failures.append(TermFailure(category, term, message))
                    continue
                if out_path is not None:
                    write_provenance(out_path, search_url=url_template, licences=licences, photos={
                        u: {"page_url": pages.get(u), "term": term, "category": category,
                            "search_page": search_url(url_template, term, licences), "licence_filter": licences or "none"}
                        for u in urls})
                    write_json(out_path, _ordered(categories, data))
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            pool.close()
    result = _ordered(categories, data)
    if out_path is not None and not out_path.exists():
        write_json(out_path, result)
    if failures:
        log.warning("%d of %d terms failed (re-run to retry them): %s", len(failures), len(todo),
                    ", ".join(f.term for f in failures))
    return CrawlResult(result, failures)
