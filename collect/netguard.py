"""Which addresses the downloader may connect to: public ones only (no SSRF through a crawled page).

A crawled page is hostile input: an image URL (or any redirect hop after it) naming 127.0.0.1,
10.0.0.5, 169.254.169.254 (a cloud's metadata service) or a name that resolves to one of them
would make the downloader request something on the user's own machine or network. So every host
is resolved and *every* address it resolves to must be public (`ipaddress`: not loopback,
private, link-local, multicast, reserved, unspecified, shared/CGNAT, documentation, nor a known
metadata address; IPv4 addresses embedded in IPv6 (mapped, 6to4, NAT64) are checked as IPv4).

The check is done twice on purpose: before each hop (a clear status in the manifest, no
politeness slot spent) and again when the connection is opened, which connects to the very
addresses it just checked (`connect_checked`), so a name that answers differently the second time
(DNS rebinding) cannot slip through. Through an HTTP(S) proxy the proxy resolves the name itself:
there, only the first check applies (resolve-then-connect).

Opt-in for local mirrors and the test stand-ins: `--allow-host HOST[:PORT]` (the download
config's `allow_hosts`) or the environment variable LOOKALIKE_ALLOW_PRIVATE_HOSTS, a
comma-separated list of HOST or HOST:PORT entries (IPv6 in brackets: [::1]:8080). An entry
matches the host as written in the URL, so allowing 127.0.0.1:8080 does not allow 127.0.0.1:22.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from retrieval.errors import LookalikeError

ALLOW_ENV = "LOOKALIKE_ALLOW_PRIVATE_HOSTS"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud instance metadata services (AWS, GCP, Azure, OpenStack, AWS ECS, Alibaba, AWS IPv6).
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_KINDS = (("unspecified", "is_unspecified"), ("loopback", "is_loopback"), ("link-local", "is_link_local"),
          ("multicast", "is_multicast"), ("reserved", "is_reserved"), ("private", "is_private"))


class BlockedAddress(LookalikeError):
    """A host resolves to an address the downloader must not contact."""


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is ("loopback", "cloud metadata", ...), or None if public."""
    inner = _embedded_v4(ip)
    if inner is not None:
        problem = address_problem(inner)
        return f"{problem} (IPv4 {inner} inside IPv6)" if problem else None
    if ip in METADATA:
        return "cloud metadata"
    for kind, attr in _KINDS:
        if getattr(ip, attr):
            return kind
    return None if ip.is_global else "non-public"


def _parse_entry(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, int(port) if port.isdigit() else None


def allowed_entries(extra: Iterable[str] = ()) -> frozenset[tuple[str, int | None]]:
    """The opt-in (host, port or None) entries: `extra` plus the environment variable."""
    raw = [*extra, *os.environ.get(ALLOW_ENV, "").split(",")]
    return frozenset(_parse_entry(e) for e in raw if e.strip())


def is_allowed(host: str, port: int, allow: frozenset[tuple[str, int | None]]) -> bool:
    host = host.lower().strip("[]")
    return (host, port) in allow or (host, None) in allow


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself), in resolver order.
    Raises socket.gaierror when the name does not resolve."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])   # an IPv6 address may carry a %zone
        if ip not in out:
            out.append(ip)
    return out


def checked_addresses(host: str, port: int, allow: frozenset[tuple[str, int | None]]) -> list[IPAddress]:
    """The addresses to connect to for host:port, every one of them checked; BlockedAddress if any
    is not public (unless host[:port] is opted in)."""
    addresses = resolve(host, port)
    if is_allowed(host, port, allow):
        return addresses
    for ip in addresses:
        problem = address_problem(ip)
        if problem:
            named = "" if host.strip("[]") == str(ip) else f" resolves to {ip}, which"
            raise BlockedAddress(
                f"{host}{named} is a {problem} address: refused (only public addresses are downloaded; "
                f"allow a local mirror with --allow-host HOST:PORT or {ALLOW_ENV})")
    return addresses


def connect_checked(host: str, port: int, allow: frozenset[tuple[str, int | None]], *,
                    connect: Callable[..., socket.socket], timeout: Any, **kwargs: Any) -> socket.socket:
    """Resolve once, check, and connect to those very addresses (first that answers): no second
    lookup that a rebinding name could answer differently. `connect` is urllib3's create_connection."""
    last: OSError | None = None
    for ip in checked_addresses(host, port, allow):
        try:
            return connect((str(ip), port), timeout, **kwargs)
        except OSError as exc:   # timeouts are OSErrors too; try the next address like urllib3 does
            last = exc
    raise last or OSError(f"no address to connect to for {host}")


@contextmanager
def allowing(*entries: str) -> Iterator[None]:
    """Opt `entries` (HOST or HOST:PORT) in through the environment for the block: how the local
    test stand-ins let the downloader (and its subprocesses) reach them, and nothing else."""
    before = os.environ.get(ALLOW_ENV)
    os.environ[ALLOW_ENV] = ",".join([*(before.split(",") if before else []), *entries])
    try:
        yield
    finally:
        current = [e for e in os.environ.get(ALLOW_ENV, "").split(",") if e]
        for entry in entries:
            if entry in current:
                current.remove(entry)
        if current:
            os.environ[ALLOW_ENV] = ",".join(current)
        else:
            os.environ.pop(ALLOW_ENV, None)
