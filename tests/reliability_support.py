"""Helpers shared by the reliability tests (test_bad_image_corpus, test_indexing, test_storage_faults,
test_collect_resume, ...): the subprocess environment, the SIGKILL seed, a file-tree digest and the
consistency check of an index.

Their fixtures (`corpus`, `effnet_tiny`, `watchdog`) are in tests/conftest.py.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from PIL import Image

from retrieval.errors import IndexError_
from retrieval.paths import MANIFEST
from retrieval.search import LookalikeIndex

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG_S = 300
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
# One seed per test session, printed by the tests that kill processes; set it to replay a run.
KILL_SEED = int(os.environ.get("LOOKALIKE_KILL_SEED") or secrets.randbelow(10 ** 6))


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: sha256} of every file under root, hidden ones included."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)}


def index_state(index_dir: Path, query: Path) -> str:
    """'absent', 'ok' (manifest, arrays and Chroma agree; exact and HNSW answer alike) or
    'refused: ...' (a clear error that the next build repairs). Anything else fails the test:
    a half-written index must never be read as valid."""
    if not (index_dir / MANIFEST).exists():
        return "absent"
    # Read Chroma as a fresh process would: a client this process opened earlier keeps its own
    # in-memory HNSW copy, which does not see what a build in another process wrote since.
    from chromadb.api.shared_system_client import SharedSystemClient
    SharedSystemClient.clear_system_cache()
    try:
        index = LookalikeIndex.open(index_dir)       # arrays: rows == manifest items, or it refuses
        store = index.store                          # Chroma: counts match, no interrupted sync
    except IndexError_ as exc:
        return f"refused: {exc}"
    held = store.metadatas()
    assert set(held) == set(index.rels), "Chroma and the manifest list different images"
    assert all(held[it["path"]]["sha256"] == it["sha256"] for it in index.manifest.items)
    assert all((index_dir / name).is_file() for name in (index.manifest.pixels_file, index.manifest.embedder.file))
    exact, _ = index.search(query, "effnet-cosine", 5)
    approx, _ = index.search(query, "effnet-hnsw-cosine", 5)
    assert [h.rel for h in approx] == [h.rel for h in exact]
    return "ok"


def change_library(data: Path) -> None:
    """One image deleted and one added, so the next build has work to do."""
    (data / "train" / "red" / "train_0.jpg").unlink()
    Image.new("RGB", (80, 60), (250, 40, 40)).save(data / "train" / "red" / "added.jpg")
