"""One image URL, fetched politely and safely: the downloader's HTTP client.

Why each rule is here:
- Politeness is a per-host rate limit shared by all worker threads (collect.transport's
  `HostRateLimiter`): one request in flight per host, and the next starts at least `delay` seconds
  after the previous one's response headers came back, whichever thread sends it, while other
  hosts proceed in parallel. Retries and redirect hops go through the same limiter, and a 429's
  Retry-After (or a 5xx backoff) rests the whole host, not just one thread.
- One GET per image, streamed, no HEAD probe. Redirects are followed by hand (at most
  `max_redirects` hops) so that every hop's scheme is checked: only http and https are fetched.
- Only public addresses are contacted (collect.netguard): every hop's host is resolved and each of
  its addresses checked before the request (loopback, private, link-local, metadata ... are
  `blocked_address`), and the connection itself connects only to addresses it checked
  (collect.transport). `allow_hosts` / LOOKALIKE_ALLOW_PRIVATE_HOSTS opt a local mirror in.
- The body must be `image/*` and under `max_bytes` (streaming stops as soon as it is exceeded);
  collect.download then checks that it decodes before writing it.
- Each attempt has a total deadline (headers and body together), so a server that drips bytes
  cannot hold a worker; an interrupted run fires every deadline in flight (`Fetcher.stop`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import urllib3
from urllib3.exceptions import ReadTimeoutError

from retrieval.errors import LookalikeError

from .netguard import BlockedAddress, allowed_entries, checked_addresses
from .transport import Deadline, HostRateLimiter, ThreadSessions, current, malformed_headers, parse_retry_after

log = logging.getLogger(__name__)

USER_AGENT = "Lookalike/0.1 (image-retrieval course project; polite downloader)"
CHUNK = 64 * 1024
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

OK = "ok"
# Failures a re-run cannot fix by trying again (unless asked with retry_failed).
PERMANENT = frozenset({"bad_url", "bad_scheme", "bad_content_type", "not_image", "too_large",
                       "too_many_redirects", "unsafe_path", "bad_encoding", "bad_headers",
                       "blocked_address"})


def is_permanent(status: str) -> bool:
    """4xx answers other than 429 (and the checks above) will not change on a retry."""
    if status in PERMANENT:
        return True
    if status.startswith("http_") and status[5:].isdigit():
        code = int(status[5:])
        return (400 <= code < 500 and code != 429) or code in REDIRECT_CODES
    return False


class DownloadError(LookalikeError):
    """urls.json is missing or not shaped {category: {term: [urls]}}, or a download setting is bad."""


@dataclass(frozen=True)
class DownloadConfig:
    """Knobs of one download run; the defaults are polite to a public image host."""

    workers: int = 4
    delay: float = 1.0              # per host: seconds from one response's headers to the next request
    connect_timeout: float = 10.0
    read_timeout: float = 20.0      # longest silence while waiting for bytes
    total_timeout: float = 120.0    # longest one attempt may take, headers and body (a drip too)
    retries: int = 3                # extra attempts after a 5xx, 429, truncated body or reset
    backoff: float = 1.0            # first retry wait; doubles each attempt
    max_retry_after: float = 120.0  # a longer Retry-After gives up (the next run retries)
    max_bytes: int = 20 * 2 ** 20
    max_redirects: int = 5
    checkpoint_s: float = 10.0      # manifest written at least this often during a run
    retry_failed: bool = False      # also retry permanent failures (404, not_image, ...)
    user_agent: str = USER_AGENT
    allow_hosts: tuple[str, ...] = ()   # HOST or HOST:PORT opted in despite a non-public address (netguard)

    def __post_init__(self) -> None:
        # A bad knob must fail loudly: retries=-1 would record every URL as a permanent failure
        # that later runs skip, and max_bytes=0 would mark every image too_large for good.
        bad = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, ok, rule in (
            ("workers", self.workers >= 1, "at least 1"), ("retries", self.retries >= 0, "0 or more"),
            ("max_redirects", self.max_redirects >= 0, "0 or more"), ("max_bytes", self.max_bytes >= 1, "at least 1"),
            ("delay", self.delay >= 0, "0 or more"), ("backoff", self.backoff >= 0, "0 or more"),
            ("connect_timeout", self.connect_timeout > 0, "over 0"), ("read_timeout", self.read_timeout > 0, "over 0"),
            ("total_timeout", self.total_timeout > 0, "over 0")) if not ok]
        if bad:
            raise DownloadError("bad download settings: " + "; ".join(bad))


@dataclass
class Outcome:
    """What happened to one URL; becomes one manifest record."""

    status: str
    detail: str = ""
    file: str | None = None
    bytes: int = 0
    attempts: int = 0


# One attempt's result: (outcome, body when ok, content type, seconds to wait before a retry or None).
Attempt = tuple[Outcome, bytes | None, str, float | None]


def _failed(status: str, detail: str, ctype: str = "", retry_in: float | None = None) -> Attempt:
    return Outcome(status, detail), None, ctype, retry_in


class Fetcher:
    """GET image URLs from many threads at once, with the rules of the module docstring."""

    def __init__(self, config: DownloadConfig) -> None:
        self.config = config
        self.limiter = HostRateLimiter(config.delay)
        self.sessions = ThreadSessions({"User-Agent": config.user_agent, "Accept": "image/*"})
        self._stopping = False
        self._active: set[Deadline] = set()      # attempts in flight, cut short on an interruption
        self._active_lock = threading.Lock()

    def fetch(self, url: str) -> tuple[Outcome, bytes | None, str]:
        """GET with retries; returns (outcome, body, content type). Body only when status is ok."""
        cfg = self.config
        outcome = Outcome("bad_url")
        for attempt in range(cfg.retries + 1):
            if self._stopping:
                return Outcome("interrupted", "the run was interrupted"), None, ""
            outcome, body, ctype, retry_in = self._attempt(url, attempt)
            outcome.attempts = attempt + 1
            if retry_in is None or attempt == cfg.retries:
                return outcome, body, ctype
            log.debug("%s: %s, retrying in %.1fs", url, outcome.status, retry_in)
        return outcome, None, ""

    def start(self) -> None:
        """Ready for a run (again after a stop)."""
        self._stopping = False

    def stop(self) -> None:
        """No new attempts, and the attempts in flight are cut short (their deadline fires now)."""
        self._stopping = True
        with self._active_lock:
            active = list(self._active)
        for deadline in active:
            deadline.fire()

    def close(self) -> None:
        self.sessions.close()

    def _attempt(self, url: str, attempt: int) -> Attempt:
        """One try, following redirects by hand. The last value is the wait before a retry, or None;
        when there is one, the host that asked for it is rested that long (every thread waits)."""
        deadline = Deadline(self.config.total_timeout)
        current.deadline, current.allow = deadline, self._allow()
        with self._active_lock:
            self._active.add(deadline)
        try:
            result = self._hops(url, attempt, deadline)
        finally:
            deadline.cancel()
            current.deadline = current.allow = None
            with self._active_lock:
                self._active.discard(deadline)
        if deadline.fired:   # whatever the read then raised or returned, the cause is the deadline
            self.sessions.drop()
            return _failed("timeout", f"over the total timeout of {self.config.total_timeout:g}s "
                                      "(headers and body together)", result[2])
        return result

    def _hops(self, url: str, attempt: int, deadline: Deadline) -> Attempt:
        """_attempt's body: each redirect hop through the host's politeness slot."""
        cfg = self.config
        hop_url = url
        for _hop in range(cfg.max_redirects + 1):
            parts = urlsplit(hop_url)
            if parts.scheme.lower() not in ("http", "https"):
                return _failed("bad_scheme", f"scheme {parts.scheme or '(none)'!r} in {hop_url[:200]}")
            if not parts.hostname:
                return _failed("bad_url", f"no host in {hop_url[:200]}")
            host = parts.hostname.lower()
            refused = self._refused(host, parts, hop_url)
            if refused is not None:
                return refused, None, "", None
            try:
                with self.limiter.slot(host):
                    deadline.start()
                    resp = self.sessions.get().get(hop_url, stream=True, allow_redirects=False,
                                                   timeout=(cfg.connect_timeout, cfg.read_timeout))
            except (BlockedAddress, requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as exc:
                return self._request_failed(exc, hop_url, host, attempt)
            with resp:
                if resp.status_code in REDIRECT_CODES:
                    location = resp.headers.get("Location")
                    if not location:
                        return _failed(f"http_{resp.status_code}", "redirect without Location")
                    hop_url = urljoin(hop_url, location)
                    continue
                result = self._read(resp, attempt)
            if result[3] is not None:
                self.limiter.defer(host, result[3])
            return result
        return _failed("too_many_redirects", f"more than {cfg.max_redirects} redirects")

    def _request_failed(self, exc: Exception, url: str, host: str, attempt: int) -> Attempt:
        """The status of a request that raised before any response came back."""
        if isinstance(exc, BlockedAddress):   # the name answered differently at connect time (rebinding)
            return _failed("blocked_address", f"{url[:200]}: {exc}")
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            return _failed("bad_encoding", str(exc)[:200])
        if isinstance(exc, requests.Timeout):
            return _failed("timeout", str(exc)[:200])
        if isinstance(exc, requests.ConnectionError):
            if malformed_headers(exc):   # e.g. a 100 kB header line: the server will send it again
                return _failed("bad_headers", str(exc)[:200])
            self.limiter.defer(host, self._backoff(attempt))
            return _failed("connection_error", str(exc)[:200], "", self._backoff(attempt))
        if isinstance(exc, requests.RequestException):   # InvalidURL, InvalidSchema, ...
            return _failed("bad_url", str(exc)[:200])
        return _failed("bad_headers", f"{type(exc).__name__}: {exc}"[:200])   # e.g. too many Content-Encodings

    def _allow(self) -> frozenset[tuple[str, int | None]]:
        return allowed_entries(self.config.allow_hosts)

    def _refused(self, host: str, parts: SplitResult, url: str) -> Outcome | None:
        """blocked_address when the hop's host resolves to any non-public address (collect.netguard);
        a name that does not resolve is left to the request, which reports it as a connection error."""
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            checked_addresses(host, port, self._allow())
        except BlockedAddress as exc:
            return Outcome("blocked_address", f"{url[:200]}: {exc}")
        except (OSError, ValueError, UnicodeError):   # unresolvable name, bad port: the request says so
            pass
        return None

    def _backoff(self, attempt: int) -> float:
        return self.config.backoff * 2 ** attempt

    def _read(self, resp: requests.Response, attempt: int) -> Attempt:
        """The answer's status, headers and body, checked: image/*, at most max_bytes, whole."""
        cfg = self.config
        code = resp.status_code
        if code == 429 or 500 <= code < 600:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if retry_after is not None and retry_after > cfg.max_retry_after:
                return _failed(f"http_{code}", f"Retry-After {retry_after:.0f}s is over the "
                                               f"{cfg.max_retry_after:.0f}s cap; the next run retries")
            return _failed(f"http_{code}", "", "", max(retry_after or 0.0, self._backoff(attempt)))
        if code != 200:
            return _failed(f"http_{code}", "")
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if not ctype.startswith("image/"):
            return _failed("bad_content_type", ctype or "(none)", ctype)
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cfg.max_bytes:
            return _failed("too_large", f"Content-Length {declared} > {cfg.max_bytes}", ctype)
        return self._body(resp, ctype, attempt)

    def _body(self, resp: requests.Response, ctype: str, attempt: int) -> Attempt:
        """Stream the body, stopping as soon as it is over max_bytes."""
        max_bytes = self.config.max_bytes
        body = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    return _failed("too_large", f"body over {max_bytes} bytes", ctype)
        except requests.exceptions.ContentDecodingError as exc:   # a bad or over-long Content-Encoding
            return _failed("bad_encoding", f"{resp.headers.get('Content-Encoding', '')[:60]!r}: {exc}"[:200], ctype)
        except (urllib3.exceptions.DecodeError, ValueError) as exc:
            return _failed("bad_encoding", f"{type(exc).__name__}: {exc}"[:200], ctype)
        except requests.exceptions.ChunkedEncodingError as exc:  # urllib3 enforces Content-Length
            return _failed("truncated", str(exc)[:200], ctype, self._backoff(attempt))
        except requests.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                return _failed("timeout", str(exc)[:200], ctype)
            return _failed("connection_error", str(exc)[:200], ctype, self._backoff(attempt))
        except requests.Timeout as exc:
            return _failed("timeout", str(exc)[:200], ctype)
        return Outcome(OK, bytes=len(body)), bytes(body), ctype, None
