"""A real Chroma server (`chroma run`) on 127.0.0.1 for tests: started on a free port, stopped after."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chroma_cli() -> str:
    beside = Path(sys.executable).with_name("chroma")
    found = str(beside) if beside.is_file() else shutil.which("chroma")
    if not found:
        pytest.skip("the `chroma` CLI (installed with chromadb) is not on PATH")
    return found


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    """`chroma run` on a free 127.0.0.1 port; returns once its heartbeat answers."""
    port = free_port()
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen([chroma_cli(), "run", "--path", str(data / "db"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()   # the child holds its own handle
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"chroma run did not come up: {(data / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
