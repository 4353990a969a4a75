"""Index time: the library side of re-ranking, recomputed from the current library at every build.

DBA depends on every image's neighbours, so after an incremental add or delete it is recomputed from
the whole current library (a matrix product per chunk: seconds for thousands of images), written
beside the plain vectors and, for embeddings in an index with Chroma, synced into its own DBA
collections. The manifest records the outcome as a RerankRecord.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import atomic
from ..vectorstore import row_digest
from .maths import Settings, describe, library_side, settings_for

if TYPE_CHECKING:   # records imports this package (Settings): these are for the types only
    from ..manifest import Manifest
    from ..records import ChromaRecord, RerankRecord, RerankSource

log = logging.getLogger(__name__)

DBA_PREFIX_SUFFIX = "-dba"      # the Chroma collections of DBA vectors: <prefix>-dba-{l2,cosine}
MODES = ("auto", "on", "off")   # within the budget below, always, never
DBA_AUTO_MAX_BYTES = 512 << 20  # "auto"'s budget per source; what it covers: docs/evaluation.md#cost
CHOSEN_BY = "k-fold table on the sample library (docs/evaluation.md)"


def rerank_bytes(rows: int, dim: int, settings: Settings | None = None) -> int:
    """What a source's re-ranking holds in memory: its float32 rows in the re-ranking space (PCA
    narrows them) and, with k-reciprocal re-ranking, the graph (at most k2 x (k1 + 1) weights per
    row before the expansion, 12 bytes each; measured: docs/evaluation.md#cost)."""
    s = settings or Settings()
    width = min(dim, s.pca) if s.pca else dim
    graph = rows * s.k2 * (s.k1 + 1) * 12 if s.k1 else 0
    return rows * width * 4 + graph


def dba_plan(rows: int, dim: int, mode: str = "auto", budget: int | None = None,
             settings: Settings | None = None) -> str | None:
    """Why a source of rows x dim vectors gets no re-ranking under `mode`, or None when it gets it."""
    if mode not in MODES:
        raise ValueError(f"rerank mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return "re-ranking is switched off for this build"
    need = rerank_bytes(rows, dim, settings)
    limit = DBA_AUTO_MAX_BYTES if budget is None else budget
    if mode == "auto" and need > limit:
        return (f"its re-ranking rows would take {need / 2**20:,.0f} MiB ({rows:,} x {dim:,}), over the "
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
        s = settings_for(source)
        why = dba_plan(rows, dim, mode, settings=s)
        if why and s.k1 and dba_plan(rows, dim, mode, settings=replace(s, k1=0)) is None:
            log.info("re-ranking: no k-reciprocal graph for %s (DBA and QE only): %s", source, why)
            s, why = replace(s, k1=0), None   # the graph does not fit the budget; DBA still does
        if why:
            skipped[source] = why
            log.info("re-ranking: none for %s: %s", source, why)
            continue
        done[source], dba_rows = _source_side(index_dir, manifest, source, vectors, token, s)
        if source != "pixel" and manifest.chroma:
            chroma_prefix = sync_dba_chroma(index_dir, manifest, chroma_url, dba_rows)
    if manifest.chroma and chroma_prefix is None:
        drop_dba_chroma(index_dir, manifest, chroma_url)
    return RerankRecord(done, skipped, mode, CHOSEN_BY, chroma_prefix)


def _source_side(index_dir: Path, manifest: Manifest, source: str, vectors: np.ndarray,
                 token: str, s: Settings) -> tuple[RerankSource, np.ndarray]:
    """One source's DBA rows, written as dba-<source>.<token>.npy, with the library-side transform
    (space-<source>) and the k-reciprocal graph (kr-<source>, krw-<source>) where the settings ask
    for them; its record and the DBA rows."""
    from ..records import RerankSource
    with_kr = source != "pixel" and s.k1 > 0 and len(vectors) > 1
    side = library_side(vectors, s, manifest.pixel_size if source == "pixel" else None, with_kr=with_kr)
    assert side.dba is not None   # library_side computes DBA unless told not to
    name = f"dba-{source}.{token}.npy"
    atomic.save_npy(index_dir / name, side.dba)
    space = graph = None
    if side.transform is not None:
        space = f"space-{source}.{token}.npy"
        atomic.save_npy(index_dir / space, side.transform.to_array())
    if side.graph is not None:
        graph = (f"kr-{source}.{token}.npy", f"krw-{source}.{token}.npy")
        for fname, arr in zip(graph, side.graph.to_arrays()):
            atomic.save_npy(index_dir / fname, arr)
    log.info("re-ranking: DBA%s for %s over %d images (%s)", " and k-reciprocal graph" if graph else "",
             source, len(vectors), describe(s))
    return RerankSource(s, name, space, graph), side.dba


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
    if held and len(rows) == len(paths):   # every row changed (a new basis, maybe a new width): a fresh graph
        store.reset()
    elif stale:
        store.delete(stale)
    if rows:
        store.upsert([paths[i] for i in rows], dba_rows[rows],
                     [{"path": paths[i], "label": manifest.items[i]["label"], "dba": digests[i]} for i in rows])
    log.info("chroma DBA: %d upserted, %d deleted", len(rows), len(stale))
    return prefix
