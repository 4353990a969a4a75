"""The downloader contacts public addresses only (issue 19, item 9): a hostile crawled page naming
loopback, private, link-local, metadata, unspecified or multicast addresses, or a name resolving to
one, makes no request, on the first hop or on any redirect; each refusal is in the manifest.

Counting: every outgoing connection, whatever address it is for, is redirected by a spy to a local
counting server (a FaultServer that is NOT opted in), and its intended address is recorded. A URL
the guard lets through would therefore show up there as a hit. The allowed stand-ins (FaultServer's
default opt-in) are the only connections not redirected.

Fails before round 3: the downloader fetched every one of these URLs (each one a hit on the counter).
"""
from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import urllib3.util.connection as u3_connection

from collect.download import DownloadConfig, Downloader, is_permanent
from collect.netguard import ALLOW_ENV, address_problem, allowed_entries, is_allowed
from fault_server import FaultServer
from flickr_standin import Reply

CFG = DownloadConfig(workers=4, delay=0.0, connect_timeout=2.0, read_timeout=2.0, retries=1, backoff=0.0)
REAL_GETADDRINFO = socket.getaddrinfo


@pytest.fixture
def counter():
    """The stand-in for whatever sits at a private address: not opted in, counts what reaches it."""
    with FaultServer(allow=False) as srv:
        yield srv


@pytest.fixture
def spy(monkeypatch, counter):
    """Redirect every connection (except to opted-in servers) to the counter; record where it was for."""
    real, wanted = u3_connection.create_connection, []
    allowed_ports = set()

    def connect(address, *args, **kwargs):
        wanted.append(address)
        if address[1] in allowed_ports:
            return real(address, *args, **kwargs)
        return real(("127.0.0.1", int(counter.base_url.rsplit(":", 1)[1])), *args, **kwargs)

    monkeypatch.setattr(u3_connection, "create_connection", connect)
    connect.wanted, connect.allowed_ports = wanted, allowed_ports
    return connect


def _fake_dns(monkeypatch, answers: dict[str, list[str]]) -> None:
    """Made-up names resolve to the given addresses, one list per lookup (the last one repeats)."""
    calls: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            n = calls[host] = calls.get(host, -1) + 1
            ip = answers[host][min(n, len(answers[host]) - 1)]
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (ip, port))]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


HOSTILE = ["127.0.0.1", "127.9.9.9", "10.0.0.5", "172.16.1.1", "192.168.1.1", "100.64.0.1", "169.254.169.254",
           "[::1]", "[fd00:ec2::254]", "[fe80::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "[::]", "224.0.0.1",
           "2130706433", "localhost", "evil-loopback.example", "evil-metadata.example"]


def test_hostile_addresses_make_no_request(tmp_path: Path, counter: FaultServer, spy, monkeypatch) -> None:
    _fake_dns(monkeypatch, {"evil-loopback.example": ["127.0.0.1"], "evil-metadata.example": ["169.254.169.254"]})
    port = counter.base_url.rsplit(":", 1)[1]
    urls = [f"http://{host}:{port}/img/{i}.jpg" for i, host in enumerate(HOSTILE)]
    urls.append("https://169.254.169.254/latest/meta-data/")
    raw = tmp_path / "raw"
    report = Downloader(raw, CFG).run([("c", "t", u) for u in urls], progress=False)

    per_url = {u: counter.hits(urlsplit(u).path) for u in urls}   # each URL has its own path
    print("requests per hostile url:", json.dumps(per_url, indent=1))
    assert set(per_url.values()) == {0}
    assert counter.hits() == 0 and spy.wanted == []
    records = {r["url"]: r for r in json.loads((raw / "manifest.json").read_text())["items"]}
    assert {u: records[u]["status"] for u in urls} == {u: "blocked_address" for u in urls}
    assert dict(report.counts) == {"blocked_address": len(urls)} and is_permanent("blocked_address")
    detail = records[urls[HOSTILE.index("evil-metadata.example")]]["detail"]
    assert "resolves to 169.254.169.254, which is a cloud metadata address" in detail and "--allow-host" in detail
    assert "loopback" in records[urls[HOSTILE.index("localhost")]]["detail"]
    assert "unspecified" in records[urls[HOSTILE.index("0.0.0.0")]]["detail"]
    assert not list(raw.rglob("*.jpg"))
    # The summary the CLI prints: counts by reason, a few examples, the manifest for the rest.
    [line] = report.failures()
    examples = line.split("(e.g. ", 1)[1].split(", ...)", 1)[0].split(", ")
    assert f"skipped {len(urls)} files: {len(urls)} blocked_address (e.g. " in line and len(examples) == 3
    assert set(examples) <= set(urls)
    assert line.endswith(str(raw / "manifest.json"))

    # Control: the same counter, opted in for this run, is reached (the counting works).
    ok = Downloader(raw, DownloadConfig(**{**CFG.__dict__, "allow_hosts": (f"127.0.0.1:{port}",)})).run(
        [("c", "t", f"http://127.0.0.1:{port}/img/y.jpg")], progress=False)
    assert dict(ok.counts) == {"ok": 1} and counter.hits() == 1


def test_a_redirect_to_a_private_address_is_refused(tmp_path: Path, counter: FaultServer, spy) -> None:
    with FaultServer() as site:   # an allowed stand-in for a public host
        spy.allowed_ports.add(int(site.base_url.rsplit(":", 1)[1]))
        site.routes["/to-loopback.jpg"] = Reply(302, b"", "text/plain", {"Location": counter.url("/img/x.jpg")})
        site.routes["/to-metadata.jpg"] = Reply(302, b"", "text/plain",
                                                {"Location": "http://169.254.169.254/latest/meta-data/"})
        site.routes["/to-ok.jpg"] = Reply(302, b"", "text/plain", {"Location": "/img/fine.jpg"})
        urls = [site.url(p) for p in ("/to-loopback.jpg", "/to-metadata.jpg", "/to-ok.jpg")]
        report = Downloader(tmp_path / "raw", CFG).run([("c", "t", u) for u in urls], progress=False)
        assert site.hits("/to-loopback.jpg") == site.hits("/to-metadata.jpg") == 1
    assert counter.hits() == 0
    records = {r["url"]: r for r in json.loads((tmp_path / "raw" / "manifest.json").read_text())["items"]}
    assert [records[u]["status"] for u in urls] == ["blocked_address", "blocked_address", "ok"]
    assert counter.url("/img/x.jpg") in records[urls[0]]["detail"]
    assert dict(report.counts) == {"blocked_address": 2, "ok": 1}


def test_a_name_that_rebinds_after_the_check_is_refused_at_connect(tmp_path: Path, counter: FaultServer,
                                                                   spy, monkeypatch) -> None:
    """DNS rebinding: public on the first lookup, loopback on the next. The connection resolves once,
    checks, and connects to what it checked, so the second answer is refused, not connected to."""
    _fake_dns(monkeypatch, {"rebind.example": ["93.184.216.34", "127.0.0.1"]})
    port = counter.base_url.rsplit(":", 1)[1]
    url = f"http://rebind.example:{port}/img/x.jpg"
    report = Downloader(tmp_path / "raw", CFG).run([("c", "t", url)], progress=False)
    assert dict(report.counts) == {"blocked_address": 1}
    assert counter.hits() == 0 and spy.wanted == []


def test_address_classes_and_the_opt_in(monkeypatch) -> None:
    ip = ipaddress.ip_address
    assert address_problem(ip("93.184.216.34")) is None and address_problem(ip("2606:4700::1111")) is None
    assert address_problem(ip("169.254.169.254")) == "cloud metadata"
    assert address_problem(ip("fd00:ec2::254")) == "cloud metadata"
    assert address_problem(ip("::ffff:10.1.2.3")).startswith("private")
    assert address_problem(ip("2002:7f00:1::")).startswith("loopback")          # 6to4 of 127.0.0.1
    assert address_problem(ip("64:ff9b::a9fe:a9fe")).startswith("cloud metadata")  # NAT64 of 169.254.169.254
    assert address_problem(ip("240.0.0.1")) == "reserved" and address_problem(ip("0.0.0.0")) == "unspecified"
    monkeypatch.setenv(ALLOW_ENV, "127.0.0.1:8080, [::1]:9000,mirror.lan")
    allow = allowed_entries(["10.0.0.7:81"])
    assert is_allowed("127.0.0.1", 8080, allow) and not is_allowed("127.0.0.1", 22, allow)
    assert is_allowed("::1", 9000, allow) and is_allowed("mirror.lan", 1234, allow)
    assert is_allowed("10.0.0.7", 81, allow) and not is_allowed("10.0.0.7", 80, allow)
