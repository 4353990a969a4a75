"""The downloader's transport: a total deadline per attempt, connections that only reach checked
addresses, and SIGTERM as an interruption. Split from collect.download, which drives them.

- requests' read timeout bounds each silence, not the whole transfer: a server that drips one
  byte every few seconds never trips it. `Deadline` does (see below).
- Every direct connection resolves its host once, checks every address (collect.netguard) and
  connects to those very addresses: no SSRF, no DNS rebinding between the check and the connect.
"""
from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

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
        self.seconds, self.fired, self.at = seconds, False, None
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


class _Watched:
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
