"""An index's manifest is untrusted input (an index can come from a Hub dataset repo): one that names
paths outside the index and library folders is refused, and a malformed one is a clear error.
See docs/reliability.md, "Attacks".
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.errors import IndexError_
from retrieval.manifest import Manifest
from retrieval.paths import MANIFEST
from retrieval.search import LookalikeIndex

pytestmark = pytest.mark.usefixtures("watchdog")


@pytest.mark.parametrize("field,value", [
    ("pixels_file", "../../../etc/passwd"), ("pixels_file", "/etc/passwd"), ("pixels_file", ".hidden.npy"),
    ("embedder", {"file": "../outside.npy"}), ("chroma", {"path": "/tmp/lookalike-evil-chroma"}),
    ("chroma", {"path": "../../chroma"}), ("items", [{"path": "../../etc/passwd", "label": "x", "sha256": "0"}]),
    ("items", [{"path": "/etc/passwd", "label": "x", "sha256": "0"}]),
])
def test_a_manifest_naming_paths_outside_its_folders_is_refused(effnet_tiny, field, value):
    """An index can come from a Hub dataset repo: its manifest must not lead reads or Chroma's
    writes outside the index and library folders."""
    raw = json.loads((effnet_tiny.index / MANIFEST).read_text())
    raw[field] = {**raw[field], **value} if isinstance(value, dict) else value
    (effnet_tiny.index / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(IndexError_, match="refusing it"):
        LookalikeIndex.open(effnet_tiny.index)
    assert not Path("/tmp/lookalike-evil-chroma").exists()


@pytest.mark.parametrize("content", ['["not", "a", "manifest"]', '{"format": 1, "pixel_size": 32}', "{"])
def test_a_malformed_manifest_is_a_clear_error(tmp_path, content):
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(IndexError_, match="rebuild the index"):
        Manifest.read(tmp_path)
