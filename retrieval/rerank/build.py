"""Index time: the library side of re-ranking, recomputed from the current library at every build.

DBA depends on every image's neighbours, so after an incremental add or delete it is recomputed from
the whole current library (a matrix product per chunk: seconds for thousands of images), written
beside the plain vectors and, for embeddings in an index with Chroma, synced into its own DBA
collections. The manifest records the outcome as a RerankRecord.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import atomic
from ..vectorstore import row_digest
from .maths import describe, library_side, settings_for

if TYPE_CHECKING:   # records imports this package (Settings): these are for the types only
    from ..manifest import Manifest
    from ..records import ChromaRecord, RerankRecord, RerankSource

log = logging.getLogger(__name__)

DBA_PREFIX_SUFFIX = "-dba"      # the Chroma collections of DBA vectors: <prefix>-dba-{l2,cosine}
MODES = ("auto", "on", "off")   # within the budget below, always, never
DBA_AUTO_MAX_BYTES = 512 << 20  # "auto"'s budget per source; what it covers: docs/evaluation.md#cost
CHOSEN_BY = "k-fold table on the sample library (docs/evaluation.md)"


def dba_plan(rows: int, dim: int, mode: str = "auto", budget: int | None = None) -> str | None:
    """Why a source of rows x dim vectors gets no re-ranking under `mode`, or None when it gets it."""
    if mode not in MODES:
        raise ValueError(f"rerank mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return "re-ranking is switched off for this build"
    need = rows * dim * 4
    limit = DBA_AUTO_MAX_BYTES if budget is None else budget
    if mode == "auto" and need > limit:
        return (f"its float32 re-ranking rows would take {need / 2**20:,.0f} MiB ({rows:,} x {dim:,}), over the "
                f"{limit / 2**20:,.0f} MiB that automatic re-ranking allows; forcing re-ranking on computes "
                "them anyway")
    return None


def build_library_side(index_dir: Path, manifest: Manifest, token: str, chroma_url: str | None = None,
                       mode: str = "auto") -> RerankRecord:
    """DBA vectors of every source (pixels, and the embedder's) within `mode`'s budget (dba_plan),
    and the Chroma DBA collections matching them (dropped when no embeddings are re-ranked). A
    source over the budget gets no re-ranked methods; the record says why."""
    from ..records import RerankRecord
    index_dir = Path(index_dir)
    sources = [("pixel", manifest.pixels_file)]
    if manifest.embedder:
        sources.append((manifest.embedder.name, manifest.embedder.file))
    done: dict[str, RerankSource] = {}
    skipped: dict[str, str] = {}
    chroma_prefix = None
    for source, fname in sources:
        vectors = np.load(index_dir / fname, mmap_mode="r")
        rows, dim = vectors.shape
        why = dba_plan(rows, dim, mode)
        if why:
            skipped[source] = why
            log.info("re-ranking: none for %s: %s", source, why)
            continue
        done[source], dba_rows = _source_side(index_dir, manifest, source, vectors, token)
        if source != "pixel" and manifest.chroma:
            chroma_prefix = sync_dba_chroma(index_dir, manifest, chroma_url, dba_rows)
    if manifest.chroma and chroma_prefix is None:
        drop_dba_chroma(index_dir, manifest, chroma_url)
    return RerankRecord(done, skipped, mode, CHOSEN_BY, chroma_prefix)


def _source_side(index_dir: Path, manifest: Manifest, source: str, vectors: np.ndarray,
                 token: str) -> tuple[RerankSource, np.ndarray]:
    """One source's DBA rows, written as dba-<source>.<token>.npy; its record and the rows."""
    from ..records import RerankSource
    s = settings_for(source)
    side = library_side(vectors, s, manifest.pixel_size if source == "pixel" else None)
    assert side.dba is not None   # library_side computes DBA unless told not to
    name = f"dba-{source}.{token}.npy"
    atomic.save_npy(index_dir / name, side.dba)
    log.info("re-ranking: DBA for %s over %d images (%s)", source, len(vectors), describe(s))
    return RerankSource(s, name), side.dba


def _chroma(manifest: Manifest) -> ChromaRecord:
    if manifest.chroma is None:
        raise ValueError("the manifest records no Chroma collections")
    return manifest.chroma


def drop_dba_chroma(index_dir: Path, manifest: Manifest, chroma_url: str | None) -> None:
    """Delete the DBA collections an earlier build made, when this build re-ranks no embeddings."""
    from ..vectorstore import VectorStore
    chroma = _chroma(manifest)
    path, url = chroma.location(index_dir, chroma_url)
    VectorStore.drop(path=path, url=url, prefix=chroma.prefix + DBA_PREFIX_SUFFIX)


def sync_dba_chroma(index_dir: Path, manifest: Manifest, chroma_url: str | None, dba_rows: np.ndarray) -> str:
    """Make the DBA collections hold exactly the current DBA rows: upsert rows whose vector changed
    (by a digest kept in the metadata; an incremental add changes its neighbours' rows too), delete
    rows of removed images. Returns the collections' prefix."""
    from ..vectorstore import VectorStore
    chroma = _chroma(manifest)
    prefix = chroma.prefix + DBA_PREFIX_SUFFIX
    path, url = chroma.location(index_dir, chroma_url)
    store = VectorStore.open(path=path, url=url, prefix=prefix)
    held = store.metadatas()
    paths = [it["path"] for it in manifest.items]
    digests = [row_digest(r) for r in dba_rows]
    stale = sorted(set(held) - set(paths))
    rows = [i for i, (p, d) in enumerate(zip(paths, digests)) if held.get(p, {}).get("dba") != d]
    if stale:
        store.delete(stale)
    if rows:
        store.upsert([paths[i] for i in rows], dba_rows[rows],
                     [{"path": paths[i], "label": manifest.items[i]["label"], "dba": digests[i]} for i in rows])
    log.info("chroma DBA: %d upserted, %d deleted", len(rows), len(stale))
    return prefix
