"""The downloader's HTTP plumbing: a total deadline per attempt, connections that only reach checked
addresses, per-thread sessions, the per-host rate limiter, Retry-After, and SIGTERM as an
interruption. collect.fetch drives them for one URL, collect.download for a whole run.

- requests' read timeout bounds each silence, not the whole transfer: a server that drips one
  byte every few seconds never trips it. `Deadline` does (see below).
- Every direct connection resolves its host once, checks every address (collect.netguard) and
  connects to those very addresses: no SSRF, no DNS rebinding between the check and the connect.
- Politeness is per host and shared by all worker threads (`HostRateLimiter`).
"""
from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as u3_connection

from .netguard import allowed_entries, connect_checked

# ---- the total timeout ----------------------------------------------------------------------
# requests' read timeout bounds each silence, not the whole transfer: a server that drips one byte
# every few seconds (in the body or in its headers) never trips it. `Deadline` does: a timer shuts
# the attempt's socket down at the total timeout, and the blocked read returns at once. The socket
# is found through our own urllib3 connection classes, which hand it over just before the
# response headers are read.
current = threading.local()


class Deadline:
    """One attempt's total time budget; fired means the socket was shut down at the deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.fired = seconds, False
        self.at: float | None = None   # when the deadline fires (monotonic clock), once started
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the clock (at the first request: waiting for the host's politeness slot is free)."""
        if self._timer is None:
            self.at = time.monotonic() + self.seconds
            self._timer = threading.Timer(self.seconds, self.fire)
            self._timer.daemon = True
            self._timer.start()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def fire(self) -> None:
        """Shut the attempt's socket down now (at the deadline, or when the run is interrupted)."""
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


if TYPE_CHECKING:   # the mixin's attributes come from urllib3's HTTPConnection, its partner below
    _ConnectionBase = HTTPConnection
else:
    _ConnectionBase = object


class _Watched(_ConnectionBase):
    def _new_conn(self) -> socket.socket:
        """Connect only to addresses netguard approved, resolved once (see collect.netguard).
        Through a proxy the proxy resolves the name: the per-hop check before the request applies."""
        if getattr(self, "proxy", None) is not None:
            return super()._new_conn()
        allow = getattr(current, "allow", None)
        try:
            return connect_checked(self._dns_host, self.port, allowed_entries() if allow is None else allow,
                                   connect=u3_connection.create_connection, timeout=self.timeout,
                                   source_address=self.source_address, socket_options=self.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                            f"(connect timeout={self.timeout})") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc

    def getresponse(self, *args: Any, **kwargs: Any):
        deadline = getattr(current, "deadline", None)
        if deadline is not None:
            deadline.watch(self.sock)
        return super().getresponse(*args, **kwargs)


class _WatchedHTTP(_Watched, HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTP


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPS


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections report their socket to the thread's current Deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def malformed_headers(exc: BaseException) -> bool:
    """True when a ConnectionError comes from headers http.client refused (over-long, too many),
    not from a dropped connection (RemoteDisconnected is an HTTPException too, and transient)."""
    seen, todo = set(), [exc]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, http.client.HTTPException) and not isinstance(err, ConnectionError):
            return not isinstance(err, http.client.IncompleteRead)
        todo += [a for a in getattr(err, "args", ()) if isinstance(a, BaseException)]
        todo += [e for e in (err.__cause__, err.__context__) if e is not None]
    return False


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt for the block (main thread only), so a `kill` or a job
    scheduler's timeout still leaves a saved manifest, as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ThreadSessions:
    """One requests.Session per worker thread (a Session is not thread-safe), each mounted on
    DeadlineAdapter, so every connection reports its socket to the thread's current Deadline."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        """This thread's session, made on first use."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            for prefix in ("http://", "https://"):
                session.mount(prefix, DeadlineAdapter())
            session.headers.update(self.headers)
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def drop(self) -> None:
        """Forget this thread's session (its connection was shut down by the deadline)."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def close(self) -> None:
        """Close every thread's session."""
        with self._lock:
            for session in self._all:
                session.close()
            self._all.clear()


# ---- politeness -----------------------------------------------------------------------------

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
    """The limiter's key: the host name without the port (one server, one budget)."""
    return (urlsplit(url).hostname or "").lower()


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
