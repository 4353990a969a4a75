"""Reading a search results page: the page's URL for a term, and the photos in its HTML.

Pure text in, text out (BeautifulSoup, no browser), so every rule here is testable without
Chromium; collect/crawl.py renders and pages the site and hands the page source to
`extract_photos`.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from bs4 import BeautifulSoup

FLICKR_SEARCH = "https://www.flickr.com/search/?text={term}"

# Flickr photo files are <id>_<secret>_<size>.<ext>; these sizes are all smaller than _b (1024 px).
_FLICKR_SMALL = re.compile(r"(/\d+_[0-9a-f]+)_[sqtmnwzc](\.(?:jpe?g|png|gif))$", re.IGNORECASE)
# Site furniture rather than photos, matched in the URL path or the <img> class.
_DECOY_WORDS = ("logo", "buddyicon", "avatar", "sprite", "spacer", "pixel", "beacon", "1x1",
                "blank.gif", "transparent.gif")


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
