"""--rerank {auto,on,off}: re-ranking only where its rows fit the budget (big pixel sizes and large
libraries go without, and say why), forced on or off, and no stale DBA files or collections left."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retrieval import rerank
from retrieval.errors import LookalikeError
from retrieval.indexing import build_index
from retrieval.search import LookalikeIndex

ROOT = Path(__file__).resolve().parents[1]


def test_plan_follows_the_budget_and_the_mode():
    assert rerank.dba_plan(1000, 3072, "auto", budget=1000 * 3072 * 4) is None      # exactly fits
    why = rerank.dba_plan(1000, 3072, "auto", budget=1000 * 3072 * 4 - 1)
    assert "1,000 x 3,072" in why and "forcing re-ranking on" in why
    assert rerank.dba_plan(10**6, 10**4, "on") is None                               # forced: no budget
    assert rerank.dba_plan(3, 3, "off") == "re-ranking is switched off for this build"
    with pytest.raises(ValueError, match="auto, on, off"):
        rerank.dba_plan(3, 3, "sometimes")
    # The default budget: the sample library at the seed's 448x448 pixels is over it, at 32x32 well under.
    assert rerank.dba_plan(398, 448 * 448 * 3) and rerank.dba_plan(398, 32 * 32 * 3) is None


def _reranked(index_dir: Path) -> list[str]:
    return [m for m in LookalikeIndex.open(index_dir).methods if "+" in m]


def test_over_budget_source_gets_no_reranked_methods_and_says_why(tiny_library, tmp_path, monkeypatch):
    index = tmp_path / "index"
    monkeypatch.setattr(rerank.build, "DBA_AUTO_MAX_BYTES", 100)    # far below 24 rows of 32x32x3 floats
    summary = build_index(tiny_library, index, model="none", evaluate=False)
    assert "over the 0 MiB that automatic re-ranking allows" in summary["rerank_skipped"]["pixel"]
    assert _reranked(index) == [] and not list(index.glob("dba-*.npy"))
    with pytest.raises(LookalikeError, match="unknown method|not offered|no method"):
        LookalikeIndex.open(index).search(tiny_library / "test/red/test_0.jpg", "pixel-cosine+dba+qe", k=3)

    summary = build_index(tiny_library, index, model="none", evaluate=False, rerank="on")   # forced
    assert summary["rerank_skipped"] == {} and "pixel-cosine+dba+qe" in _reranked(index)
    assert len(list(index.glob("dba-pixel.*.npy"))) == 1

    summary = build_index(tiny_library, index, model="none", evaluate=False, rerank="off")  # and off again
    assert summary["rerank_skipped"] == {"pixel": "re-ranking is switched off for this build"}
    assert _reranked(index) == [] and not list(index.glob("dba-*.npy"))   # the old DBA file is gone


def test_bad_mode_is_refused_before_any_work(tiny_library, tmp_path):
    with pytest.raises(LookalikeError, match="re-ranking mode must be one of auto, on, off"):
        build_index(tiny_library, tmp_path / "index", model="none", rerank="maybe")
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_cli_prints_why_a_source_has_no_reranking(tiny_library, tmp_path):
    index = tmp_path / "index"
    run = subprocess.run([sys.executable, "build_index.py", "index", "--data", str(tiny_library), "--index",
                          str(index), "--model", "none", "--no-eval", "--rerank", "off"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "no re-ranked methods for pixel: re-ranking is switched off for this build" in run.stdout
    listed = subprocess.run([sys.executable, "-m", "retrieval", "methods", "--index", str(index)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "+dba" not in listed.stdout and "# no re-ranked methods for pixel: re-ranking is switched off for this build" in listed.stdout
    tuned = subprocess.run([sys.executable, "-m", "retrieval", "evaluate", "--index", str(index), "--protocol",
                            "kfold", "--tune"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert tuned.returncode == 0, tuned.stderr      # the grid is for sources that are re-ranked: none here
    assert "pixel-l1" in tuned.stdout and "best +dba+qe" not in tuned.stdout


def test_embedder_dba_collections_are_dropped_when_reranking_goes_off(tiny_library, tmp_path):
    import chromadb

    index = tmp_path / "index"
    build_index(tiny_library, index, model="effnet", evaluate=False, rerank="on")
    assert "effnet-hnsw-cosine+dba+qe" in _reranked(index)

    def names() -> set[str]:
        from retrieval.vectorstore import _settings
        client = chromadb.PersistentClient(path=str(index / "chroma"), settings=_settings())
        return {getattr(c, "name", c) for c in client.list_collections()}

    assert any("-dba-" in n for n in names())
    build_index(tiny_library, index, model="effnet", evaluate=False, rerank="off")
    held = names()
    assert held and not any("-dba-" in n for n in held)   # the plain collections stay, the DBA ones go
    assert _reranked(index) == []
    assert "effnet-hnsw-cosine" in LookalikeIndex.open(index).methods
