"""A local image host with fault routes, for the downloader's tests.

``FaultServer(host)`` is a context manager: a threaded HTTP server on `host` (127.0.0.1 by default;
127.0.0.2 gives a second "host" for the politeness test) at a free port, stopped when the block
ends. Every request is logged with its server-side arrival time, so tests can count hits and
measure spacing. Replies reuse `flickr_standin.Reply` / `answer_route`.

While it runs, the server's exact host:port is opted in to the downloader's address guard
(collect.netguard, through LOOKALIKE_ALLOW_PRIVATE_HOSTS, so subprocesses see it too);
``FaultServer(allow=False)`` is not: it then stands for a private address a hostile page names,
and its hit log counts the requests that reached it.

Routes (all GET):
- ``/img/<anything>``        a real JPEG, distinct per path
- ``/png/<anything>``        a real RGBA PNG, ``image/png``
- ``/404.jpg``               404
- ``/flaky.jpg``             500 on the first request, then a JPEG
- ``/ratelimit.jpg``         429 with ``Retry-After: 1`` on the first request, then a JPEG
- ``/slow.jpg``              answers after `slow_s` seconds (past the client's read timeout)
- ``/page.jpg``              200 ``text/html``
- ``/garbage.jpg``           200 ``image/jpeg`` whose bytes are not an image
- ``/truncated.jpg``         announces the full JPEG length, sends half, closes the connection
- ``/huge-declared.jpg``     ``Content-Length`` of 50 MB (refusable before reading)
- ``/huge.jpg``              no Content-Length; streams `huge_bytes`; ``huge_sent`` records how
                             much was written before the client hung up
- ``/redirect-file.jpg``     302 to ``file:///etc/passwd``
- ``/redirect-ftp.jpg``      302 to ``ftp://127.0.0.1/x.jpg``
- ``/redirect-ok.jpg``       302 (relative) to ``/img/redirected.jpg``
- ``/redirect-loop.jpg``     302 to itself
- ``/stall.jpg``             headers (Content-Length 100000) at once, then silence until the server stops
- ``/drip-body.jpg``         headers at once, then one body byte every `drip_s` seconds (under any
                             read timeout), for at most `drip_for_s`
- ``/drip-headers.jpg``      the status line, then one header byte every `drip_s` seconds
- ``/bad-encoding.jpg``      ``Content-Encoding: gzip`` on bytes that are not gzip
- ``/long-encoding.jpg``     ``Content-Encoding: gzip, gzip, ...`` (40 codings, over urllib3's 5)
- ``/long-header.jpg``       a ``Content-Encoding`` header line of 100 kB (over http.client's 64 kB)
- any path whose percent-decoded basename ends in ``evil.jpg``: a JPEG (the path-escape case)
"""
from __future__ import annotations

import hashlib
import io
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from PIL import Image

from collect.netguard import allowing
from flickr_standin import Reply, Route, answer_route, make_jpeg


@dataclass(frozen=True)
class Hit:
    path: str       # raw request target, as sent
    time: float     # time.monotonic() on arrival (same clock as the test process)


def _png(seed: str) -> bytes:
    """A half-transparent RGBA PNG whose colour depends on `seed` (distinct content hashes)."""
    r, g, b = hashlib.sha1(seed.encode()).digest()[:3]
    buf = io.BytesIO()
    Image.new("RGBA", (80, 60), (r, g, b, 128)).save(buf, "PNG")
    return buf.getvalue()


class FaultServer:
    """See the module docstring. Use as ``with FaultServer() as srv: srv.url('/404.jpg')``."""

    def __init__(self, host: str = "127.0.0.1", *, slow_s: float = 3.0, huge_bytes: int = 64 * 2 ** 20,
                 drip_s: float = 0.5, drip_for_s: float = 120.0, allow: bool = True) -> None:
        self.host, self.slow_s, self.huge_bytes = host, slow_s, huge_bytes
        self.allow = allow   # opt this server's host:port in for the downloader (collect.netguard)
        self._allowing: ExitStack | None = None
        self.stall_release = threading.Event()   # set on exit, so a stalled handler ends
        self.drip_s, self.drip_for_s = drip_s, drip_for_s
        self.drip_stopped: dict[str, float] = {}   # route -> seconds it dripped before the client hung up
        self.huge_sent: int | None = None
        self.log: list[Hit] = []
        self._lock = threading.Lock()
        self._served: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        jpeg = make_jpeg("truncated", (200, 150))
        self.routes: dict[str, Route] = {
            "/404.jpg": Reply(404, b"not found", "text/plain"),
            "/flaky.jpg": [Reply(500, b"oops", "text/plain"), Reply(200, make_jpeg("flaky"))],
            "/ratelimit.jpg": [Reply(429, b"slow down", "text/plain", {"Retry-After": "1"}),
                               Reply(200, make_jpeg("ratelimit"))],
            "/slow.jpg": Reply(200, make_jpeg("slow"), delay=slow_s),
            "/page.jpg": Reply(200, b"<html>not a photo</html>", "text/html; charset=utf-8"),
            "/garbage.jpg": Reply(200, b"\xff\xd8 this is not really a jpeg" * 20),
            "/truncated.jpg": Reply(200, jpeg, truncate_to=len(jpeg) // 2),
            "/huge-declared.jpg": self._declare_huge,
            "/huge.jpg": self._stream_huge,
            "/redirect-file.jpg": Reply(302, b"", "text/plain", {"Location": "file:///etc/passwd"}),
            "/redirect-ftp.jpg": Reply(302, b"", "text/plain", {"Location": f"ftp://{host}/x.jpg"}),
            "/redirect-ok.jpg": Reply(302, b"", "text/plain", {"Location": "/img/redirected.jpg"}),
            "/redirect-loop.jpg": Reply(302, b"", "text/plain", {"Location": "/redirect-loop.jpg"}),
            "/stall.jpg": self._stall,
            "/drip-body.jpg": self._drip_body,
            "/drip-headers.jpg": self._drip_headers,
            "/bad-encoding.jpg": Reply(200, make_jpeg("bad-encoding"), headers={"Content-Encoding": "gzip"}),
            "/long-encoding.jpg": Reply(200, make_jpeg("long-encoding"),
                                        headers={"Content-Encoding": ", ".join(["gzip"] * 40)}),
            "/long-header.jpg": Reply(200, make_jpeg("long-header"), headers={"Content-Encoding": "x" * 100_000}),
        }

    # ---- lifecycle
    def __enter__(self) -> "FaultServer":
        server_ref = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server_ref._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fault-{self.host}", daemon=True)
        self._thread.start()
        if self.allow:   # the downloader refuses loopback addresses unless opted in, host:port exactly
            self._allowing = ExitStack()
            self._allowing.enter_context(allowing(f"{self.host}:{self._server.server_address[1]}"))
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        if self._allowing is not None:
            self._allowing.close()
        self.stall_release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "use FaultServer as a context manager"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # ---- for assertions
    def hits(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for h in self.log if path is None or urlsplit(h.path).path == path)

    def arrivals(self) -> list[float]:
        with self._lock:
            return sorted(h.time for h in self.log)

    # ---- dispatch
    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = urlsplit(req.path).path
        with self._lock:
            self.log.append(Hit(req.path, time.monotonic()))
            nth = self._served.get(path, 0)
            self._served[path] = nth + 1
        route = self.routes.get(path)
        if route is None:
            if path.startswith("/img/") or unquote(path).endswith("evil.jpg"):
                route = Reply(200, make_jpeg(path))
            elif path.startswith("/png/"):
                route = Reply(200, _png(path), "image/png")
            else:
                route = Reply(404, b"no such route", "text/plain")
        answer_route(req, route, nth)

    def _stream_huge(self, req: BaseHTTPRequestHandler) -> None:
        """A close-delimited body (no Content-Length) far over any sane cap."""
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.end_headers()
        chunk, sent = b"\0" * 65536, 0
        try:
            while sent < self.huge_bytes:
                req.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.huge_sent = sent
            req.close_connection = True

    def _declare_huge(self, req: BaseHTTPRequestHandler) -> None:
        """Announces 50 MB, sends a little, then closes: a client that checks the header never reads."""
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Content-Length", str(50 * 10 ** 6))
        req.end_headers()
        try:
            req.wfile.write(b"\0" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        req.close_connection = True

    def _stall(self, req: BaseHTTPRequestHandler) -> None:
        """Headers at once, then silence until the server stops (`stall_release`)."""
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Content-Length", "100000")
        req.end_headers()
        req.wfile.flush()
        self.stall_release.wait()
        req.close_connection = True

    def _drip(self, req: BaseHTTPRequestHandler, route: str, data: bytes) -> None:
        """Write `data` one byte every drip_s until it is sent, the client hangs up or drip_for_s passes."""
        start = time.monotonic()
        try:
            for i in range(len(data)):
                if time.monotonic() - start > self.drip_for_s:
                    break
                req.wfile.write(data[i:i + 1])
                req.wfile.flush()
                time.sleep(self.drip_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self.drip_stopped[route] = time.monotonic() - start
            req.close_connection = True

    def _drip_body(self, req: BaseHTTPRequestHandler) -> None:
        body = make_jpeg("drip-body")
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.flush()
        self._drip(req, "/drip-body.jpg", body)

    def _drip_headers(self, req: BaseHTTPRequestHandler) -> None:
        body = make_jpeg("drip-headers")
        req.wfile.write(b"HTTP/1.1 200 OK\r\n")
        headers = (b"Content-Type: image/jpeg\r\nX-Filler: " + b"z" * 4000 + b"\r\n"
                   + f"Content-Length: {len(body)}\r\n\r\n".encode())
        self._drip(req, "/drip-headers.jpg", headers + body)
