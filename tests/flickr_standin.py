"""A local stand-in for Flickr search (and an image host) so crawler and downloader tests run offline.

``serve_standin()`` starts a threaded HTTP server on 127.0.0.1 at a free port and stops it on exit;
meanwhile its host:port is opted in to the downloader's address guard (collect.netguard).
It is deterministic: ``Standin.expected_urls(term)`` is exactly what a correct crawler collects.

What a search page (``/search?text=TERM``) looks like, page by page (``per_page`` photos each):
- thumbnails in four lazy-loading styles: placeholder ``src="data:..."`` + ``data-src``;
  protocol-relative ``src`` + ``srcset`` with ``w`` descriptors (largest not last); a plain absolute
  ``src``; ``srcset`` with ``x`` descriptors only. All are small Flickr sizes (``_t _m _n _z _q _c``)
  of ``/photos/<term>/<id>_<secret>_<size>.jpg``; the crawler must rewrite them to ``_b``.
- decoys: a logo SVG, a sprite, a tracking pixel and an ``<img width=1 height=1>``, a buddyicon
  avatar on every card, and a duplicate (each later page repeats the first photo of the page before).
- paging: the first ``scroll_pages`` extra pages arrive by infinite scroll (``fetch`` of
  ``/api/page?...&via=scroll`` when the window reaches the bottom); after that only a
  "Load more results" button (a fresh random id on each render) fetches more (``via=button``).
Every ``/photos/...jpg`` is served as a real JPEG made with Pillow, distinct per photo, so the
downloader can fetch the crawled ``_b`` URLs. Extra routes (fault injection) via ``add_route``.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import mimetypes
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from PIL import Image, ImageDraw

from collect.netguard import allowing

Handler = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Reply:
    """One canned response. `delay` sleeps before answering; `truncate_to` announces the full
    Content-Length but sends only that many body bytes, then closes the connection."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate_to: int | None = None


Route = Reply | Sequence[Reply] | Handler  # what add_route accepts


def send_reply(req: BaseHTTPRequestHandler, reply: Reply) -> None:
    """Write `reply` on `req`; a custom handler may call this too."""
    if reply.delay:
        time.sleep(reply.delay)
    try:
        req.send_response(reply.status)
        if reply.content_type:
            req.send_header("Content-Type", reply.content_type)
        req.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            req.send_header(name, value)
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(reply.body if reply.truncate_to is None else reply.body[:reply.truncate_to])
        if reply.truncate_to is not None:
            req.close_connection = True
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its read timeout)
        req.close_connection = True


def answer_route(req: BaseHTTPRequestHandler, route: Route, nth: int) -> None:
    """Answer the `nth` (0-based) request to a route: a Reply, a handler, or Replies in turn (last repeats)."""
    if callable(route):
        route(req)
    elif isinstance(route, Reply):
        send_reply(req, route)
    else:
        send_reply(req, route[min(nth, len(route) - 1)])


def make_jpeg(seed: str, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small real JPEG whose colours and shapes depend on `seed` (so content hashes differ)."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        draw.rectangle((x0, y0, x0 + rng.randrange(8, size[0] // 2), y0 + rng.randrange(8, size[1] // 2)),
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _tiny(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 255, 255)).save(buf, fmt)
    return buf.getvalue()


_LOGO_SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="80" height="20"><rect width="80" height="20"/></svg>'
_PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} | Flickr stand-in</title>
<style>body{{margin:0;font-family:sans-serif}} .card{{height:260px;margin:8px;border:1px solid #ccc}}
.card img.photo{{width:240px;height:180px;display:block}} #more{{height:120px}}</style></head>
<body>
<header><img src="/ap/build/images/getty/IStock_corporate_logo.svg" alt="logo">
<img src="/images/sprites/icons-sprite.png" alt=""><img src="/beacon/track.gif?e=view" alt="">
<img src="/c.gif" width="1" height="1" alt=""><div role="button">Filters</div></header>
<main id="grid">{cards}</main>
<div id="more"></div>
<script>
const TERM = {term_js}, SCROLL_PAGES = {scroll_pages};
let page = 1, busy = false, hasMore = {has_more};
const needsButton = () => hasMore && page >= 1 + SCROLL_PAGES;
function render() {{
  const old = document.querySelector('#more button');
  if (old) old.remove();
  if (!needsButton()) return;
  const b = document.createElement('button');
  b.id = 'yui_3_16_0_1_' + Date.now() + '_' + Math.floor(Math.random() * 1e6);
  b.textContent = 'Load more results';
  b.onclick = () => load('button');
  document.getElementById('more').appendChild(b);
}}
async function load(via) {{
  if (busy || !hasMore) return;
  busy = true;
  try {{
    const r = await fetch('/api/page?text=' + encodeURIComponent(TERM) + '&page=' + (page + 1) + '&via=' + via);
    const j = await r.json();
    document.getElementById('grid').insertAdjacentHTML('beforeend', j.html);
    page += 1; hasMore = j.has_more;
  }} finally {{ busy = false; render(); }}
}}
window.addEventListener('scroll', () => {{
  if (needsButton()) return;
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 40) load('scroll');
}});
render();
</script></body></html>
"""


class Standin:
    """Handle on a running stand-in server; see the module docstring for what it serves."""

    def __init__(self, host: str, port: int, *, images: Mapping[str, bytes], totals: Mapping[str, int], default_total: int,
                 per_page: int, scroll_pages: int, fail_terms: Iterable[str]):
        self.port = port
        self.base_url = f"http://{host}:{port}"
        self.url_template = f"{self.base_url}/search?text={{term}}"
        self.totals, self.default_total = dict(totals), default_total
        self.per_page, self.scroll_pages = per_page, scroll_pages
        self.fail_terms = set(fail_terms)  # mutable: a test may heal a term between runs
        self.requests: list[str] = []  # raw request targets (path + query), in arrival order
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._served: dict[str, int] = {}
        self._cache: dict[str, bytes] = {}
        for path, data in images.items():
            self.add_image(path, data)

    # ---- for tests
    def url(self, path: str) -> str:
        return self.base_url + path

    def add_route(self, path: str, route: Route) -> str:
        """Serve `path` (exact raw path, no query) with one Reply, a sequence of Replies (one per
        request, the last repeating), or a handler(req) that writes the response itself. Returns its URL."""
        with self._lock:
            self._routes[path] = route
            self._served[path] = 0
        return self.url(path)

    def add_image(self, path: str, data: bytes, content_type: str | None = None) -> str:
        ctype = content_type or mimetypes.guess_type(path)[0] or "image/jpeg"
        return self.add_route(path, Reply(200, data, ctype))

    def total(self, term: str) -> int:
        return self.totals.get(term, self.default_total)

    def photo(self, term: str, index: int, size: str = "b") -> str:
        """URL of photo `index` of `term` at a Flickr size suffix."""
        digest = hashlib.sha1(f"{term}:{index}".encode()).hexdigest()
        photo_id, secret = str(int(digest[:8], 16) + 10 ** 10), digest[8:18]
        return f"{self.base_url}/photos/{quote(term, safe='')}/{photo_id}_{secret}_{size}.jpg"

    def expected_urls(self, term: str, limit: int | None = None) -> list[str]:
        """The large-size URLs a correct crawler collects for `term`, in page order."""
        n = self.total(term) if limit is None else min(limit, self.total(term))
        return [self.photo(term, i) for i in range(n)]

    def hits(self, path: str, **params: str) -> int:
        """How many requests went to `path` with (at least) these query parameters."""
        with self._lock:
            targets = list(self.requests)
        count = 0
        for target in targets:
            parts = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            count += parts.path == path and all(query.get(k) == v for k, v in params.items())
        return count

    # ---- page building
    def _card(self, term: str, i: int) -> str:
        rel = lambda size: self.photo(term, i, size)[len(self.base_url):]  # noqa: E731
        proto = lambda size: self.photo(term, i, size)[len("http:"):]  # noqa: E731
        style = i % 4
        if style == 0:
            img = f'<img class="photo" loading="lazy" src="{_PLACEHOLDER}" data-src="{rel("m")}" alt="">'
        elif style == 1:
            img = (f'<img class="photo" loading="lazy" src="{proto("t")}" srcset="{proto("m")} 240w, '
                   f'{proto("z")} 640w, {proto("n")} 320w" alt="">')
        elif style == 2:
            img = f'<img class="photo" src="{self.photo(term, i, "n")}" alt="">'
        else:
            img = f'<img class="photo" loading="lazy" srcset="{rel("q")} 1x, {rel("c")} 2x" alt="">'
        avatar = (f'<img class="avatar" src="/images/buddyicon0{i % 3}.png" width="24" height="24" alt="">'
                  if i % 2 else f'<img src="/buddyicons/{1000 + i}@N00.jpg" alt="">')
        return f'<div class="card"><a href="/photos/owner/{i}/">{img}</a>{avatar}</div>\n'

    def _page(self, term: str, page: int) -> tuple[str, bool]:
        start, stop = (page - 1) * self.per_page, min(page * self.per_page, self.total(term))
        indices = list(range(start, stop))
        if page > 1 and indices:
            indices.insert(0, start - self.per_page)  # a duplicate of the previous page's first photo
        return "".join(self._card(term, i) for i in indices), stop < self.total(term)

    # ---- dispatch
    def handle(self, req: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(req.path)
        parts = urlsplit(req.path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            route = self._routes.get(path)
            nth = self._served.get(path, 0)
            if route is not None:
                self._served[path] = nth + 1
        if route is not None:
            answer_route(req, route, nth)
        elif path == "/search":
            self._search(req, query.get("text", ""))
        elif path == "/api/page":
            cards, more = self._page(query.get("text", ""), int(query.get("page", "1")))
            send_reply(req, Reply(200, json.dumps({"html": cards, "has_more": more}).encode(), "application/json"))
        elif path.startswith("/photos/") and path.endswith(".jpg"):
            size = (160, 120) if path.endswith("_b.jpg") else (60, 45)
            with self._lock:
                data = self._cache.get(path) or self._cache.setdefault(path, make_jpeg(unquote(path), size))
            send_reply(req, Reply(200, data, "image/jpeg"))
        elif path.endswith(".svg"):
            send_reply(req, Reply(200, _LOGO_SVG, "image/svg+xml"))
        elif path.endswith((".png", ".gif")) or "buddyicons" in path:
            fmt = "PNG" if path.endswith(".png") else "GIF"
            send_reply(req, Reply(200, _tiny(fmt), f"image/{fmt.lower()}"))
        else:
            send_reply(req, Reply(404, b"not found", "text/plain"))

    def _search(self, req: BaseHTTPRequestHandler, term: str) -> None:
        if term in self.fail_terms:
            send_reply(req, Reply(500, b"<h1>500 Internal Server Error</h1>", "text/html"))
            return
        cards, more = self._page(term, 1)
        page = _PAGE.format(title=html.escape(term), cards=cards, term_js=json.dumps(term),
                            scroll_pages=self.scroll_pages, has_more=json.dumps(more))
        send_reply(req, Reply(200, page.encode(), "text/html; charset=utf-8"))


@contextmanager
def serve_standin(images: Mapping[str, bytes] | None = None, *, totals: Mapping[str, int] | None = None,
                  default_total: int = 40, per_page: int = 6, scroll_pages: int = 2,
                  fail_terms: Iterable[str] = (), host: str = "127.0.0.1") -> Iterator[Standin]:
    """Run the stand-in on `host` (a loopback address; 127.0.0.2 makes a second "host") at a free
    port for the duration of the block.

    images: extra ``{path: bytes}`` to serve (content type from the extension).
    totals: photos per term (others get `default_total`); fail_terms: search answers HTTP 500.
    """
    holder: dict[str, Standin] = {}

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            holder["standin"].handle(self)

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer((host, 0), _Handler)
    server.daemon_threads = True
    standin = holder["standin"] = Standin(
        host, server.server_address[1], images=images or {}, totals=totals or {}, default_total=default_total,
        per_page=per_page, scroll_pages=scroll_pages, fail_terms=fail_terms)
    thread = threading.Thread(target=server.serve_forever, name="flickr-standin", daemon=True)
    thread.start()
    try:
        with allowing(f"{host}:{server.server_address[1]}"):   # the downloader's opt-in (collect.netguard)
            yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
