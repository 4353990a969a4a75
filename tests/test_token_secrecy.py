"""The Hub token (HF_TOKEN) is used but never logged or written: an index build that asks the Hub for
weights and a push to a faked Hub, with debug logging on. See docs/reliability.md, "Attacks".
"""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from conftest import make_tiny_library
from reliability_support import ENV, ROOT
from retrieval.paths import MANIFEST

pytestmark = pytest.mark.usefixtures("watchdog")


TOKEN = "hf_reliabilityTestToken0123456789abcdefXYZ"

_FAKE_PUSH = """
import hashlib, pathlib, shutil, sys
import collect.hub as hub
class FakeHfApi:
    def __init__(self, token=None, **kw):
        pathlib.Path(sys.argv[1], "token.sha256").write_text(hashlib.sha256((token or "").encode()).hexdigest())
    def create_repo(self, repo_id, **kw):
        return repo_id
    def upload_folder(self, folder_path, **kw):
        shutil.copytree(folder_path, pathlib.Path(sys.argv[1], "uploaded"))
hub.HfApi = FakeHfApi
import build_index
sys.exit(build_index.main(sys.argv[2:]))
"""


def test_hub_token_is_never_logged_or_written(tmp_path):
    """An index build with --model auto (which asks the Hub for CLIP weights, offline here) and a
    push of the library and index (the Hub faked at HfApi), with HF_TOKEN set and debug logging on:
    the token reaches HfApi, and appears in no output and in no file either of them wrote."""
    work = tmp_path / "work"
    work.mkdir()
    data = make_tiny_library(work / "data", n_train=3, n_test=1)
    env = {**ENV, "HF_TOKEN": TOKEN, "HF_HOME": str(work / "hf-home")}
    runs = [
        [sys.executable, "build_index.py", "-v", "index", "--data", str(data), "--index", str(work / "index"),
         "--model", "auto"],
        [sys.executable, "-c", _FAKE_PUSH, str(work), "-v", "push", "--repo-id", "someone/lib", "--data", str(data),
         "--push-index", str(work / "index")],
    ]
    outputs = []
    for cmd in runs:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout + out.stderr)
    assert (work / "token.sha256").read_text() == hashlib.sha256(TOKEN.encode()).hexdigest()  # it was used
    assert (work / "uploaded" / "index" / MANIFEST).is_file() and "DEBUG" in outputs[0]
    for text in outputs:
        assert TOKEN not in text
    written = [p for p in work.rglob("*") if p.is_file()]
    assert len(written) > 20
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    print(f"token found in 0 of {len(outputs)} outputs ({sum(map(len, outputs))} characters) "
          f"and 0 of {len(written)} files written")
