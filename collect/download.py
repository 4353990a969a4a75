"""Polite, safe, resumable image downloader: urls.json -> raw/<category>/<term>/<sha1>.<ext>.

Why each rule is here:
- Politeness is a per-host rate limit shared by all worker threads (`HostRateLimiter`): one
  request in flight per host, and the next starts at least `delay` seconds after the previous
  one's response headers came back, whichever thread sends it, while other hosts proceed in
  parallel. The key is the host name without the port (one server, one budget). Retries and
  redirect hops go through the same limiter, and a 429's Retry-After (or a 5xx backoff) rests the
  whole host, not just one thread.
- One GET per image, streamed, no HEAD probe. Redirects are followed by hand (at most
  `max_redirects` hops) so that every hop's scheme is checked: only http and https are fetched.
- Only public addresses are contacted (collect.netguard): every hop's host is resolved and each of
  its addresses checked before the request (loopback, private, link-local, metadata ... are
  `blocked_address`), and the connection itself connects only to addresses it checked
  (collect.transport). `allow_hosts` / LOOKALIKE_ALLOW_PRIVATE_HOSTS opt a local mirror in.
- The body must be `image/*`, under `max_bytes` (streaming stops as soon as it is exceeded) and must
  decode through `retrieval.images.load_image`; only then is it written, atomically.
- File names never come from the URL: `sha1(url)[:16]` plus an extension from a fixed list, under
  sanitised category and term folders whose resolved path is checked to be inside raw/.
- `raw/manifest.json` (written atomically: at the start, within `checkpoint_s` of any finished URL
  even while other downloads hang, on Ctrl-C or SIGTERM before the rest is cut short, and at the end) maps each
  (category, term, url) to its file and status. A re-run skips files already present and failures
  that a retry cannot fix (404, not an image, ...); transient failures (timeouts, 5xx, 429,
  truncated bodies, connection errors) are tried again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from tqdm import tqdm
from urllib3.exceptions import ReadTimeoutError

from retrieval.atomic import remove_leftovers, write_bytes, write_json
from retrieval.errors import ImageError, LookalikeError
from retrieval.images import IMAGE_EXTENSIONS, check_image

from .netguard import BlockedAddress, allowed_entries, checked_addresses
from .transport import Deadline, DeadlineAdapter, current, malformed_headers, terminate_as_interrupt

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
USER_AGENT = "Lookalike/0.1 (image-retrieval course project; polite downloader)"
CHUNK = 64 * 1024
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CONTENT_TYPE_EXT = {
    "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/pjpeg": ".jpg", "image/png": ".png",
    "image/webp": ".webp", "image/gif": ".gif", "image/bmp": ".bmp", "image/x-ms-bmp": ".bmp",
}

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
    """urls.json is missing or not shaped {category: {term: [urls]}}."""


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


@dataclass
class DownloadReport:
    counts: Counter = field(default_factory=Counter)  # status -> URLs (this run's state of every URL)
    fetched: int = 0                                   # URLs requested from the network this run
    skipped: int = 0                                   # URLs settled by an earlier run
    manifest: Path | None = None

    failed: list[dict[str, str]] = field(default_factory=list)  # {"path": url, "kind": status} not ok

    def note(self, record: dict[str, Any]) -> None:
        """Count one manifest record (this run's view of its URL)."""
        self.counts[record["status"]] += 1
        if record["status"] != OK:
            self.failed.append({"path": record["url"][:200], "kind": record["status"]})

    def failures(self) -> list[str]:
        """Counts by reason and a few examples (retrieval.library.summarize_skips: one bounded line
        however many failed), and where the full list with every reason is."""
        if not self.failed:
            return []
        from retrieval.library import summarize_skips
        return [f"  {summarize_skips(self.failed)}; every url with its status and reason: {self.manifest}"]

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{sum(self.counts.values())} urls ({self.fetched} fetched, {self.skipped} skipped): {parts}"


class HostRateLimiter:
    """Per-host politeness: one request in flight per host, and the next one starts at least
    `delay` seconds after the previous one's response headers arrived.

    A per-host next-allowed time and busy flag under one lock (a Condition): a thread bound for a
    busy or resting host waits on the condition, so threads bound for other hosts go ahead. Timing
    from the previous *response* (not the previous start) makes the spacing hold as the server
    sees it: request k+1 cannot reach it less than `delay` after request k did.
    """

    def __init__(self, delay: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay = max(0.0, delay)
        self._clock = clock
        self._next: dict[str, float] = {}
        self._busy: set[str] = set()
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold the host's slot for the duration of the block (send the request, get the headers)."""
        with self._cond:
            while True:
                now = self._clock()
                ready_at = self._next.get(host, now)
                if host not in self._busy and now >= ready_at:
                    self._busy.add(host)
                    break
                self._cond.wait(None if host in self._busy else ready_at - now)
        try:
            yield
        finally:
            with self._cond:
                self._busy.discard(host)
                self._next[host] = max(self._next.get(host, 0.0), self._clock() + self.delay)
                self._cond.notify_all()

    def defer(self, host: str, seconds: float) -> None:
        """Rest the host for at least `seconds` from now (Retry-After, backoff after a 5xx)."""
        with self._cond:
            self._next[host] = max(self._next.get(host, 0.0), self._clock() + seconds)
            self._cond.notify_all()


def host_key(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def safe_component(name: str, max_len: int = 80) -> str:
    """A folder name that cannot climb, hide or nest: letters, digits, ' ', '_', '-', '.' only,
    no leading or trailing dots/spaces. Empty results fall back to a hash of the original."""
    text = unicodedata.normalize("NFKC", str(name))
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^\w.\- ]+", "_", text))
    text = re.sub(r"\s+", " ", text).strip(" .")[:max_len].strip(" .")
    return text or "_" + hashlib.sha1(str(name).encode("utf-8")).hexdigest()[:8]


def url_stem(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def pick_extension(content_type: str, url: str) -> str:
    """From the Content-Type, else the URL's suffix if it is an image one, else .jpg."""
    ext = CONTENT_TYPE_EXT.get(content_type)
    if ext:
        return ext
    suffix = Path(urlsplit(url).path).suffix.lower()
    return suffix if suffix in IMAGE_EXTENSIONS else ".jpg"


def term_dir(raw_dir: Path, category: str, term: str) -> Path:
    """raw/<category>/<term>, refused if it would resolve outside raw/."""
    raw_dir = Path(raw_dir)
    folder = raw_dir / safe_component(category) / safe_component(term)
    if not folder.resolve().is_relative_to(raw_dir.resolve()):
        raise DownloadError(f"refusing folder {folder}: it resolves outside {raw_dir}")
    return folder


def existing_file(folder: Path, stem: str) -> Path | None:
    """A finished download of this URL (any image extension), ignoring temporary files."""
    for ext in sorted(set(CONTENT_TYPE_EXT.values()) | IMAGE_EXTENSIONS):
        path = folder / (stem + ext)
        if path.is_file():
            return path
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def load_urls(path: Path) -> dict[str, dict[str, list[str]]]:
    """Read and check urls.json ({category: {term: [urls]}}), as the crawler writes it."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"no {path}: run `python build_index.py crawl` first (or pass --urls FILE)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DownloadError(f"{path} is not readable JSON ({exc}); crawl again with --force") from None
    ok = isinstance(data, dict) and all(
        isinstance(terms, dict) and all(isinstance(urls, list) for urls in terms.values())
        for terms in data.values())
    if not ok:
        raise DownloadError(f"{path} is not shaped {{category: {{term: [urls]}}}}; crawl again with --force")
    return data


Key = tuple[str, str, str]  # (category, term, url)


def load_manifest(path: Path) -> dict[Key, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8")).get("items", [])
        return {(r["category"], r["term"], r["url"]): r for r in records}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s (%s); files on disk still count as done", path, exc)
        return {}


def save_manifest(path: Path, records: dict[Key, dict[str, Any]]) -> None:
    write_json(path, {"version": 1, "items": [records[k] for k in sorted(records)]})


def _interleave_by_host(jobs: list[Key]) -> list[Key]:
    """Round-robin across hosts so the pool's threads are not all queued behind one host."""
    by_host: dict[str, list[Key]] = defaultdict(list)
    for job in jobs:
        by_host[host_key(job[2])].append(job)
    return [job for batch in zip_longest(*by_host.values()) for job in batch if job is not None]


class Downloader:
    """Downloads jobs (category, term, url) into raw_dir; see the module docstring for the rules."""

    def __init__(self, raw_dir: Path, config: DownloadConfig = DownloadConfig()) -> None:
        self.raw_dir = Path(raw_dir)
        self.config = config
        self.limiter = HostRateLimiter(config.delay)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._stopping = False
        self._active: set[Deadline] = set()      # attempts in flight, cut short on an interruption
        self._active_lock = threading.Lock()

    # ---- network
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            for prefix in ("http://", "https://"):
                session.mount(prefix, DeadlineAdapter())
            session.headers.update({"User-Agent": self.config.user_agent, "Accept": "image/*"})
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

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

    def _attempt(self, url: str, attempt: int) -> tuple[Outcome, bytes | None, str, float | None]:
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
            self._drop_session()
            return (Outcome("timeout", f"over the total timeout of {self.config.total_timeout:g}s "
                                       "(headers and body together)"), None, result[2], None)
        return result

    def _drop_session(self) -> None:
        """Forget this thread's session (its connection was shut down by the deadline)."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _hops(self, url: str, attempt: int,
              deadline: Deadline) -> tuple[Outcome, bytes | None, str, float | None]:
        """_attempt's body: each redirect hop through the host's politeness slot."""
        cfg = self.config
        current = url
        for _hop in range(cfg.max_redirects + 1):
            parts = urlsplit(current)
            if parts.scheme.lower() not in ("http", "https"):
                return Outcome("bad_scheme", f"scheme {parts.scheme or '(none)'!r} in {current[:200]}"), None, "", None
            if not parts.hostname:
                return Outcome("bad_url", f"no host in {current[:200]}"), None, "", None
            host = parts.hostname.lower()
            refused = self._refused(host, parts, current)
            if refused is not None:
                return refused, None, "", None
            try:
                with self.limiter.slot(host):
                    deadline.start()
                    resp = self._session().get(current, stream=True, allow_redirects=False,
                                               timeout=(cfg.connect_timeout, cfg.read_timeout))
            except BlockedAddress as exc:    # the name answered differently at connect time (rebinding)
                return Outcome("blocked_address", f"{current[:200]}: {exc}"), None, "", None
            except requests.exceptions.ContentDecodingError as exc:
                return Outcome("bad_encoding", str(exc)[:200]), None, "", None
            except requests.Timeout as exc:
                return Outcome("timeout", str(exc)[:200]), None, "", None
            except requests.ConnectionError as exc:
                if malformed_headers(exc):   # e.g. a 100 kB header line: the server will send it again
                    return Outcome("bad_headers", str(exc)[:200]), None, "", None
                self.limiter.defer(host, self._backoff(attempt))
                return Outcome("connection_error", str(exc)[:200]), None, "", self._backoff(attempt)
            except requests.RequestException as exc:  # InvalidURL, InvalidSchema, ...
                return Outcome("bad_url", str(exc)[:200]), None, "", None
            except (urllib3.exceptions.HTTPError, ValueError) as exc:   # e.g. too many Content-Encodings
                return Outcome("bad_headers", f"{type(exc).__name__}: {exc}"[:200]), None, "", None
            with resp:
                if resp.status_code in REDIRECT_CODES:
                    location = resp.headers.get("Location")
                    if not location:
                        return Outcome(f"http_{resp.status_code}", "redirect without Location"), None, "", None
                    current = urljoin(current, location)
                    continue
                result = self._read(resp, attempt)
            if result[3] is not None:
                self.limiter.defer(host, result[3])
            return result
        return Outcome("too_many_redirects", f"more than {cfg.max_redirects} redirects"), None, "", None

    def _allow(self) -> frozenset[tuple[str, int | None]]:
        return allowed_entries(self.config.allow_hosts)

    def _refused(self, host: str, parts: Any, url: str) -> Outcome | None:
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

    def _read(self, resp: requests.Response, attempt: int) -> tuple[Outcome, bytes | None, str, float | None]:
        cfg = self.config
        code = resp.status_code
        if code == 429 or 500 <= code < 600:
            status = f"http_{code}"
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if retry_after is not None and retry_after > cfg.max_retry_after:
                return Outcome(status, f"Retry-After {retry_after:.0f}s is over the "
                                       f"{cfg.max_retry_after:.0f}s cap; the next run retries"), None, "", None
            return Outcome(status), None, "", max(retry_after or 0.0, self._backoff(attempt))
        if code != 200:
            return Outcome(f"http_{code}"), None, "", None
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if not ctype.startswith("image/"):
            return Outcome("bad_content_type", ctype or "(none)"), None, ctype, None
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cfg.max_bytes:
            return Outcome("too_large", f"Content-Length {declared} > {cfg.max_bytes}"), None, ctype, None
        body = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                body += chunk
                if len(body) > cfg.max_bytes:
                    return Outcome("too_large", f"body over {cfg.max_bytes} bytes"), None, ctype, None
        except requests.exceptions.ContentDecodingError as exc:   # a bad or over-long Content-Encoding
            return Outcome("bad_encoding", f"{resp.headers.get('Content-Encoding', '')[:60]!r}: "
                                           f"{exc}"[:200]), None, ctype, None
        except (urllib3.exceptions.DecodeError, ValueError) as exc:
            return Outcome("bad_encoding", f"{type(exc).__name__}: {exc}"[:200]), None, ctype, None
        except requests.exceptions.ChunkedEncodingError as exc:  # urllib3 enforces Content-Length
            return Outcome("truncated", str(exc)[:200]), None, ctype, self._backoff(attempt)
        except requests.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                return Outcome("timeout", str(exc)[:200]), None, ctype, None
            return Outcome("connection_error", str(exc)[:200]), None, ctype, self._backoff(attempt)
        except requests.Timeout as exc:
            return Outcome("timeout", str(exc)[:200]), None, ctype, None
        return Outcome(OK, bytes=len(body)), bytes(body), ctype, None

    # ---- one job
    def download(self, category: str, term: str, url: str) -> Outcome:
        """Fetch, check and store one URL; never raises for a bad URL or server."""
        try:
            folder = term_dir(self.raw_dir, category, term)
        except DownloadError as exc:
            return Outcome("unsafe_path", str(exc))
        outcome, body, ctype = self.fetch(url)
        if outcome.status != OK or body is None:
            return outcome
        try:
            check_image(body, name=url)   # decodes fully, without the RGB copy load_image makes
        except ImageError as exc:
            return Outcome("not_image", str(exc)[:200], attempts=outcome.attempts)
        target = folder / (url_stem(url) + pick_extension(ctype, url))
        if not target.resolve().is_relative_to(self.raw_dir.resolve()):  # belt and braces
            return Outcome("unsafe_path", f"{target} is outside {self.raw_dir}", attempts=outcome.attempts)
        write_bytes(target, body)
        outcome.file = target.relative_to(self.raw_dir).as_posix()
        return outcome

    # ---- a whole run
    def run(self, jobs: Iterable[Key], *, progress: bool = True) -> DownloadReport:
        """Download every job not already settled. The manifest is written at the start, within
        `checkpoint_s` of any finished URL (even while other downloads hang), and on an interruption
        (Ctrl-C, SIGTERM) before the downloads in flight are cut short: a re-run resumes."""
        manifest_path = self.raw_dir / MANIFEST_NAME
        if remove_leftovers(self.raw_dir, recursive=True):  # temporaries of a run that was killed
            log.info("removed temporary files left in %s by an interrupted run", self.raw_dir)
        records = load_manifest(manifest_path)
        report = DownloadReport(manifest=manifest_path)
        todo: list[Key] = []
        for key in dict.fromkeys(jobs):
            settled = self._settled(key, records.get(key))
            if settled is None:
                todo.append(key)
            else:
                records[key] = settled
                report.skipped += 1
                report.note(settled)
        log.info("download: %d urls to fetch, %d settled by earlier runs", len(todo), report.skipped)
        save_manifest(manifest_path, records)
        if todo:
            self._run_pool(todo, records, report, manifest_path, progress)
        log.info("download: %s; manifest %s", report.summary(), manifest_path)
        return report

    def _run_pool(self, todo: list[Key], records: dict[Key, dict[str, Any]], report: DownloadReport,
                  manifest_path: Path, progress: bool) -> None:
        """run()'s thread pool: collects outcomes, checkpoints the manifest, handles interruptions."""
        cfg = self.config
        executor = ThreadPoolExecutor(max_workers=max(1, cfg.workers), thread_name_prefix="download")
        bar = tqdm(total=len(todo), desc="downloading", unit="img", disable=not progress)
        last_save, dirty = time.monotonic(), False
        self._stopping = False
        try:
            with terminate_as_interrupt():
                futures = {executor.submit(self.download, *key): key for key in _interleave_by_host(todo)}
                pending = set(futures)
                while pending:   # wakes every checkpoint_s, so a hung download cannot delay a save
                    done, pending = wait(pending, timeout=cfg.checkpoint_s, return_when=FIRST_COMPLETED)
                    for future in done:
                        key = futures[future]
                        records[key] = self._record(key, self._outcome(future, key))
                        report.fetched += 1
                        report.note(records[key])
                        bar.update()
                        dirty = True
                    if dirty and time.monotonic() - last_save >= cfg.checkpoint_s:
                        save_manifest(manifest_path, records)
                        last_save, dirty = time.monotonic(), False
        except BaseException:
            save_manifest(manifest_path, records)   # first what is done, then stop what is not
            log.warning("download interrupted: %d finished urls saved in %s; run again to resume",
                        len(records), manifest_path)
            self._abort(executor)
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            bar.close()
            self.close()
            save_manifest(manifest_path, records)

    @staticmethod
    def _outcome(future: Any, key: Key) -> Outcome:
        try:
            return future.result()
        except Exception as exc:  # a bug or disk error: record it, keep the others going
            log.exception("%s failed unexpectedly", key[2])
            return Outcome("error", f"{type(exc).__name__}: {exc}"[:200])

    def _abort(self, executor: ThreadPoolExecutor) -> None:
        """Cancel queued jobs and cut the attempts in flight short (their deadline fires now)."""
        self._stopping = True
        executor.shutdown(wait=False, cancel_futures=True)
        with self._active_lock:
            active = list(self._active)
        for deadline in active:
            deadline.fire()

    def _settled(self, key: Key, record: dict[str, Any] | None) -> dict[str, Any] | None:
        """The record to keep without fetching, or None when the URL must be fetched (again)."""
        category, term, url = key
        try:
            folder = term_dir(self.raw_dir, category, term)
        except DownloadError:
            return None
        found = existing_file(folder, url_stem(url))
        if found is not None:
            if record is not None and record.get("status") == OK:
                return record
            # The manifest was lost or is stale: the atomically written file is proof of success.
            rel = found.relative_to(self.raw_dir).as_posix()
            return self._record(key, Outcome(OK, "found on disk", rel, found.stat().st_size))
        if record and not self.config.retry_failed and is_permanent(record.get("status", "")):
            return record
        return None

    @staticmethod
    def _record(key: Key, outcome: Outcome) -> dict[str, Any]:
        category, term, url = key
        return {"category": category, "term": term, "url": url, "file": outcome.file,
                "status": outcome.status, "detail": outcome.detail, "bytes": outcome.bytes,
                "attempts": outcome.attempts, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def jobs_from_urls(data: dict[str, dict[str, list[str]]]) -> list[Key]:
    """Flatten urls.json into (category, term, url) jobs, in file order, without repeats."""
    jobs: list[Key] = []
    for category, terms in data.items():
        for term, urls in terms.items():
            jobs.extend((str(category), str(term), u) for u in urls if isinstance(u, str) and u.strip())
    return list(dict.fromkeys(jobs))


def download_images(urls_path: Path, raw_dir: Path, config: DownloadConfig = DownloadConfig(),
                    *, progress: bool = True) -> DownloadReport:
    """The `download` stage: every URL in urls.json into raw_dir, resumable."""
    jobs = jobs_from_urls(load_urls(urls_path))
    report = Downloader(raw_dir, config).run(jobs, progress=progress)
    from .provenance import write_raw_attribution
    write_raw_attribution(raw_dir, urls_path)   # each stored image's URL, photo page, term, licence filter
    return report
