"""Concurrent users: bench.load.soak (20 gradio_client users against app.py over the bad-image corpus
index), shortened to 10 s. See docs/reliability.md, "Concurrent users", for the 60 s figures.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reliability_support import ENV, ROOT

pytestmark = pytest.mark.usefixtures("watchdog")


def test_twenty_concurrent_users_for_ten_seconds(corpus, tmp_path, capsys):
    """bench.load.soak, shortened: 20 gradio_client users mixing every endpoint against app.py for 10 s
    (the 60 s run in docs/reliability.md uses the same script). Zero errors, every answer correct."""
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "bench.load.soak", "--index", str(corpus.index), "--clients", "20",
                          "--seconds", "10", "--json", str(out)], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=240)
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads(out.read_text())
    with capsys.disabled():
        print(f"\n[soak 10 s] {run.stdout.strip().splitlines()[-1]}")
    assert res["errors"] == 0, res["error_examples"]
    assert res["wrong"] == 0, res["wrong_examples"]
    assert res["requests"] >= 20 and {"pixel", "deep", "bad", "file"} <= set(res["per_kind"])
    assert run.returncode == 0
