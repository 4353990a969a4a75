"""Building (and incrementally updating) an index from a library folder.

Build once, query many times: every library image is decoded and resized once, embedded once, and
written to the index folder. A re-run reuses rows whose content hash is unchanged, embeds only new
or changed images, and drops deleted ones from the arrays and from Chroma.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, evaluation_file
from .errors import IndexError_, LookalikeError
from .library import file_sha256, is_unread, os_reason, scan_library, skip_record, summarize_skips
from .lock import locked_build
from .manifest import Item, Manifest
from .records import ChromaRecord, EmbedderRecord
from .paths import MANIFEST
from .reading import Job, Reads, read_and_embed, read_pixels

log = logging.getLogger(__name__)

DEFAULT_PIXEL_SIZE = 32
MAX_PIXEL_SIZE = 1024
NO_MODEL = ("none", "pixels", "")


def check_pixel_size(size: int) -> int:
    if not isinstance(size, int) or not 4 <= size <= MAX_PIXEL_SIZE:
        raise LookalikeError(f"pixel size must be a whole number from 4 to {MAX_PIXEL_SIZE}, got {size!r}")
    return size


def _relative_root(data_dir: Path, index_dir: Path) -> str:
    try:
        return os.path.relpath(data_dir.resolve(), index_dir.resolve())
    except ValueError:  # different drives on Windows
        return str(data_dir.resolve())


def _old_manifest(index_dir: Path) -> Manifest | None:
    try:
        return Manifest.read(index_dir)
    except IndexError_:
        return None


def _reuse_rows(old_items: list[Item] | None, new_items: list[Item]) -> dict[int, int]:
    """Map new row -> old row for images whose content is unchanged, matched by content hash (the
    same path first), so a renamed or moved file keeps its pixels and vectors: nothing re-embedded."""
    if not old_items:
        return {}
    by_path = {(it["path"], it["sha256"]): i for i, it in enumerate(old_items)}
    by_sha: dict[str, int] = {}
    for i, it in enumerate(old_items):
        by_sha.setdefault(it["sha256"], i)
    out = {}
    for i, it in enumerate(new_items):
        old = by_path.get((it["path"], it["sha256"]), by_sha.get(it["sha256"]))
        if old is not None:
            out[i] = old
    return out


def _scan(data_dir: Path, index_dir: Path, labels: str) -> tuple[list[Item], list[dict[str, str]]]:
    """The library's rows ({path, label, sha256}) and what the scan skipped (see retrieval.library);
    a file that cannot be read for hashing is skipped too, not fatal."""
    library = scan_library(data_dir, exclude=[index_dir], labels=labels)
    log.info("%s", library.describe())
    items: list[Item] = []
    skipped = list(library.skipped)
    for it in library.items:
        try:
            items.append(Item(path=it.rel, label=it.label, sha256=file_sha256(it.path(data_dir))))
        except FileNotFoundError:   # reported with the build's other skips (summarised)
            skipped.append(skip_record(it.rel, "disappeared during the build (deleted or moved)",
                                       "disappeared during the build"))
        except OSError as exc:
            kind = "permission denied" if isinstance(exc, PermissionError) else "cannot be read"
            skipped.append(skip_record(it.rel, f"cannot be read ({os_reason(exc)})", kind))
    return items, skipped


def _load_array(index_dir: Path, name: str | None, manifest: Manifest | None = None) -> np.ndarray | None:
    """An old array to reuse rows from; None (rebuild it) when unreadable or, checked against its
    manifest, damaged: a NaN or swapped array must not be copied into the new index."""
    if not name or not (index_dir / name).is_file():
        return None
    try:
        arr = np.load(index_dir / name, mmap_mode="r")
        if manifest is not None:
            manifest.check_array(index_dir / name, np.asarray(arr))
        return arr
    except (OSError, ValueError, IndexError_) as exc:
        log.warning("ignoring %s (%s); it will be rebuilt", name, exc)
        return None


@locked_build   # one build per index folder at a time; build_index(..., lock_wait=SECONDS) waits
def build_index(data_dir: Path, index_dir: Path, *, pixel_size: int | None = None,
                model: str | None = None, chroma_url: str | None = None,
                evaluate: bool = True, batch_size: int = 32, labels: str = "auto",
                precision: str = "fp32", rerank: str = "auto", lock_wait: float = 0.0) -> dict[str, Any]:
    """Build or update the index of the library DATA (any layout, see retrieval.library) under
    INDEX; returns a summary for logs and tests. `labels`: "auto", "folders" or "none".
    `lock_wait`: seconds to wait for another build of INDEX to finish (@locked_build takes the lock).
    `precision`: "fp32", "bf16" or "auto" (bf16 where the CPU runs it natively and faster; the
    command line's default), see retrieval.embedders.precision. `rerank`: "auto" (DBA and QE for
    each source whose re-ranking rows fit retrieval.rerank.DBA_AUTO_MAX_BYTES), "on" or "off".

    model: an embedder spec (see retrieval.embedders.load_embedder), None/"auto" for the default,
    or "none" for a pixel-only index.
    """
    data_dir, index_dir = Path(data_dir), Path(index_dir)
    size = _check_options(pixel_size, batch_size, rerank)
    _prepare_folder(index_dir)
    old = _old_manifest(index_dir)
    items, scan_skipped = _scan(data_dir, index_dir, labels)
    embedder = _load_embedder(model, old, precision) if (model or "auto").lower() not in NO_MODEL else None
    rows = _build_rows(data_dir, index_dir, old, items, size, embedder, batch_size)
    skipped = _all_skips(data_dir, index_dir, scan_skipped, rows, size)
    token = secrets.token_hex(4)   # names the new arrays, so they never overwrite the live ones
    manifest = Manifest(data_root=_relative_root(data_dir, index_dir), pixel_size=size,
                        pixels_file=f"pixels-{size}.{token}.npy", items=rows.items, skipped=skipped)
    summary: dict[str, Any] = {"images": len(rows.items), "pixel_size": size, "pixels_reused": rows.pixels_reused,
                               "pixels_decoded": len(rows.reads.pixels), "skipped": skipped,
                               "unread": sum(map(is_unread, skipped)), "embedded": len(rows.reads.vectors),
                               "changed_during_build": [rows.items[i]["path"] for i in rows.changed]}
    summary["rerank_skipped"] = _write_index(index_dir, manifest, rows, embedder, old, token=token, model=model,
                                             batch_size=batch_size, chroma_url=chroma_url, rerank=rerank)
    evaluation_file.remove(index_dir)   # it scored the old index; the new one's is written below (or later, on request)
    _remove_stale(index_dir, manifest)
    summary["manifest"] = str(index_dir / MANIFEST)
    if evaluate:
        _evaluate(index_dir, summary)
    return summary


def _check_options(pixel_size: int | None, batch_size: int, rerank: str) -> int:
    """Refuse a bad setting before anything is read or written; returns the pixel size."""
    size = check_pixel_size(DEFAULT_PIXEL_SIZE if pixel_size is None else pixel_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LookalikeError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    from .rerank import MODES as RERANK_MODES
    if rerank not in RERANK_MODES:
        raise LookalikeError(f"re-ranking mode must be one of {', '.join(RERANK_MODES)}, got {rerank!r}")
    return size


def _prepare_folder(index_dir: Path) -> None:
    """Create the index folder, and refuse one the build cannot write to before any work is done."""
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexError_(f"cannot create the index folder {index_dir}: {exc.strerror or exc}") from None
    if not os.access(index_dir, os.W_OK):
        raise IndexError_(f"cannot write to the index folder {index_dir}; the existing index was left as it is")


def _all_skips(data_dir: Path, index_dir: Path, scan_skipped: list[dict[str, str]], rows: _Rows,
               size: int) -> list[dict[str, str]]:
    """Every file the build skipped (the scan's and the reads'), logged in summary with the pixel
    counts; refuses a library of which nothing could be read."""
    skipped = scan_skipped + rows.skipped
    if skipped:
        log.warning("%s; the full list is under \"skipped\" in %s", summarize_skips(skipped), index_dir / MANIFEST)
    if not rows.items:
        raise IndexError_(f"none of the {len(rows.skipped)} images under {data_dir} could be read: "
                          f"{summarize_skips(skipped)}")
    log.info("pixels: %d images at %dx%d (%d reused, %d decoded, %d skipped)",
             len(rows.items), size, size, rows.pixels_reused, len(rows.reads.pixels), len(rows.skipped))
    return skipped


def _write_index(index_dir: Path, manifest: Manifest, rows: _Rows, embedder, old: Manifest | None, *,
                 token: str, model: str | None, batch_size: int, chroma_url: str | None,
                 rerank: str) -> dict[str, str]:
    """Save the new arrays, sync Chroma and the re-ranking, then seal and write the manifest, last.
    Returns why sources went without re-ranking."""
    try:
        atomic.save_npy(index_dir / manifest.pixels_file, rows.pixels)
        if embedder is not None:
            manifest.embedder = _embedder_record(embedder, model, token, rows.reads, batch_size)
            assert rows.vectors is not None   # _build_rows makes vectors whenever there is an embedder
            atomic.save_npy(index_dir / manifest.embedder.file, rows.vectors)
            manifest.chroma = _sync_chroma(index_dir, manifest, chroma_url, old)
        from .rerank import build_library_side   # DBA from the current library (retrieval.rerank)
        manifest.rerank = build_library_side(index_dir, manifest, token, chroma_url, rerank)
        from .projection import build_maps   # the library's 2-D maps, refitted only when vectors change
        manifest.maps = build_maps(index_dir, manifest, old, token, rows.pixels, rows.vectors)
        manifest.seal(index_dir)   # checksums of the rows and arrays, verified when the index is opened
        manifest.write(index_dir)
    except BaseException:
        # Unless the new manifest made it to disk, no manifest names the new arrays: free their
        # space now (a full disk). A SIGKILL skips this; the next build's _remove_stale clears them.
        live = _old_manifest(index_dir)
        if live is None or live.pixels_file != manifest.pixels_file:
            for f in index_dir.glob(f"*.{token}.npy"):
                f.unlink(missing_ok=True)
        raise
    return manifest.rerank.skipped


def _evaluate(index_dir: Path, summary: dict[str, Any]) -> None:
    """Score the new index where the library allows it (retrieval.evaluate.run decides how), saying
    how in one info line; the build succeeds either way."""
    from .evaluate import run
    from .search import LookalikeIndex
    result = run(LookalikeIndex.open(index_dir))
    if result.note:   # no test split, or none of its images readable: k-fold instead
        log.info("evaluation: %s", result.note)
        summary["evaluation_note"] = result.note
    if result.report is None:
        log.debug("evaluation skipped: %s", result.skipped)   # the front end says it (cli.cmd_index)
        summary["evaluation_skipped"] = result.skipped
        return
    evaluation_file.write(index_dir, result.report)
    summary["evaluation"] = result.report


def _load_embedder(model: str | None, old: Manifest | None, precision: str):
    """The build's embedder, in the build's precision (see _set_build_precision)."""
    from .embedders import load_embedder
    embedder = load_embedder(None if model in (None, "auto") else model)
    if old and old.embedder and old.embedder.name == embedder.name and old.embedder.spec != embedder.spec:
        log.info("the model's features changed (%s, was %s): every image is embedded again",
                 embedder.spec, old.embedder.spec)
    before = old.embedder if old and old.embedder and old.embedder.spec == embedder.spec else None
    _set_build_precision(embedder, precision, before.precision if before else None)
    return embedder


@dataclass
class _Rows:
    """The rows of the new index: items (hashes as read), pixels, vectors, and what was skipped."""

    items: list[Item]
    pixels: np.ndarray
    vectors: np.ndarray | None
    skipped: list[dict[str, str]]
    reads: Reads
    pixels_reused: int
    changed: list[int]   # new rows whose file changed between the scan and its read


def _build_rows(data_dir: Path, index_dir: Path, old: Manifest | None, items: list[Item], size: int,
                embedder, batch_size: int) -> _Rows:
    """Reuse the old index's rows for unchanged files; read every other file once (retrieval.reading)
    for its hash, pixel row and vector. Rows are reused only from vectors of the same model *and*
    precision: the manifest's precision then describes every row."""
    old_items = old.items if old else None
    old_pixels = _load_array(index_dir, old.pixels_file, old) if old and old.pixel_size == size else None
    pixel_reuse = _reuse_rows(old_items if old_pixels is not None else None, items)
    old_vectors: np.ndarray | None = None
    vector_reuse: dict[int, int] = {}
    if embedder is not None:
        built = old.embedder if old else None
        if built and built.spec == embedder.spec and built.precision == embedder.precision:
            old_vectors = _load_array(index_dir, built.file, old)
        vector_reuse = _reuse_rows(old_items if old_vectors is not None else None, items)
    jobs = [Job(i, data_dir / it["path"], it["path"], it["sha256"], i not in pixel_reuse,
                embedder is not None and i not in vector_reuse) for i, it in enumerate(items)]
    jobs = [j for j in jobs if j.pixels or j.vector]
    reads = Reads()
    again = read_pixels([j for j in jobs if not j.vector], size, reads, with_model=embedder is not None)
    if embedder is not None:
        todo = [j for j in jobs if j.vector] + again
        if todo:
            log.info("embedding %d new or changed images with %s", len(todo), embedder.spec)
        read_and_embed(todo, size, embedder, reads, batch_size)
    keep = [i for i in range(len(items)) if i not in reads.failed]
    pixels = np.zeros((len(keep), size * size * 3), dtype=np.uint8)
    vectors = np.zeros((len(keep), embedder.dim), dtype=np.float32) if embedder is not None else None
    for new, i in enumerate(keep):   # a row not read here is reused, so its old array was loaded
        pixels[new] = reads.pixels[i] if i in reads.pixels else _row(old_pixels, pixel_reuse[i])
        if vectors is not None:
            vectors[new] = reads.vectors[i] if i in reads.vectors else _row(old_vectors, vector_reuse[i])
    skipped = [skip_record(items[i]["path"], str(exc), exc.kind) for i, exc in sorted(reads.failed.items())]
    changed = set(reads.changed)
    return _Rows([{**items[i], "sha256": reads.sha256.get(i, items[i]["sha256"])} for i in keep], pixels, vectors,
                 skipped, reads, sum(1 for i in keep if i not in reads.pixels),
                 [new for new, i in enumerate(keep) if i in changed])


def _row(old: np.ndarray | None, row: int) -> np.ndarray:
    """Row `row` of an old array that a reuse map points into (so the array was loaded)."""
    assert old is not None, "rows are reused only from an old array that loaded"
    return old[row]


def _embedder_record(embedder, model: str | None, token: str, reads: Reads, batch_size: int) -> EmbedderRecord:
    """The manifest's embedder record (the caller saves the array it names)."""
    return EmbedderRecord(spec=embedder.spec, source=getattr(embedder, "source", model) or embedder.spec,
                          name=embedder.name, dim=embedder.dim, has_text=embedder.has_text,
                          file=f"embeddings-{embedder.name}.{token}.npy", **_precision_record(embedder, reads, batch_size))


def _set_build_precision(embedder, requested: str | None, previous: str | None) -> None:
    """Put the embedder in the build's precision. `auto` on an update keeps the index's own
    precision where this machine can run it (its rows stay reusable, and a borderline
    calibration cannot flip an index back and forth); otherwise see precision.resolve."""
    from .embedders import precision as prec
    requested = prec.check_precision(requested)
    if requested == "auto" and embedder.device.type == "cpu" and (
            previous == "fp32" or (previous == "bf16" and prec.native_bf16())):
        chosen: str = previous
        why: dict[str, object] = {"requested": requested, "why": f"kept the index's precision ({previous})"}
    else:
        chosen, why = prec.resolve(embedder, requested)
    if chosen != embedder.precision:
        embedder.set_precision(chosen)
    embedder.precision_record = why


def _precision_record(embedder, reads: Reads, batch_size: int) -> dict[str, Any]:
    """The manifest's precision fields; for bf16, the quality guard's check against fp32, run on
    the very model inputs the build embedded (kept by retrieval.reading), not on a second read."""
    from .embedders.precision import quality_check
    out: dict[str, Any] = {"precision": embedder.precision, "precision_choice": embedder.precision_record}
    if embedder.precision == "bf16" and reads.guard:
        inputs = [tensor for _, tensor in reads.guard]
        vectors = np.stack([reads.vectors[row] for row, _ in reads.guard])
        out["precision_check"] = quality_check(embedder, inputs, vectors, batch_size, decode=lambda tensor: tensor)
    return out


def _sync_chroma(index_dir: Path, manifest: Manifest, chroma_url: str | None,
                 old: Manifest | None = None) -> ChromaRecord:
    """Make Chroma hold exactly the manifest's rows: upsert new/changed, delete removed. A row is
    changed when its content hash or its vector differs from what Chroma holds: a digest of each
    vector is kept with the row, so whatever changes the vectors (model, precision, preprocessing,
    content) rewrites them; comparing only hashes and the model let a precision change slip through.

    Comparing against what Chroma holds (not against the old manifest) also repairs a store left
    behind by a build that was killed between the Chroma write and the manifest write. Before the
    first change to collections that the old manifest uses, that manifest is marked `syncing`, so
    a build killed from here until the new manifest is written leaves an index whose HNSW methods
    refuse with "rerun the build" instead of answering from collections that no longer match it.
    """
    from .vectorstore import row_digest
    emb = manifest.embedder
    assert emb is not None, "only an index with embeddings has Chroma collections"
    record = ChromaRecord.at(chroma_url, f"lookalike-{emb.name}-{emb.dim}")
    store, held = _open_store(index_dir, chroma_url, record.prefix, old)
    vectors = np.load(index_dir / emb.file, mmap_mode="r")
    digests = [row_digest(v) for v in vectors]   # what each row's vector is, for the next sync
    wanted = {it["path"]: i for i, it in enumerate(manifest.items)}
    stale = [i for i in held if i not in wanted]
    rows = [i for p, i in wanted.items() if held.get(p, {}).get("vector") != digests[i]
            or held.get(p, {}).get("sha256") != manifest.items[i]["sha256"]]
    if (stale or rows) and old is not None and old.chroma is not None \
            and old.chroma.same_place(record):
        old.chroma = old.chroma.marked_syncing()
        old.write(index_dir)
    rewrite = bool(held) and len(rows) == len(wanted)
    if rewrite:   # every vector changed (another model or precision): a fresh graph, not one updated in place
        store.reset()
    elif stale:
        store.delete(stale)
    if rows:
        store.upsert([manifest.items[i]["path"] for i in rows], np.asarray(vectors[rows]),
                     [{"label": manifest.items[i]["label"], "path": manifest.items[i]["path"],
                       "sha256": manifest.items[i]["sha256"], "spec": emb.spec,
                       "vector": digests[i]} for i in rows])
    log.info("chroma: %d upserted, %d deleted%s, %s", len(rows), len(held) if rewrite else len(stale),
             " (rewritten: every vector changed)" if rewrite else "", store.count())
    return replace(record, hnsw=_tune_hnsw(store, len(manifest.items)))



def _open_store(index_dir: Path, chroma_url: str | None, prefix: str, old: Manifest | None) -> tuple[Any, dict]:
    """The store and what it holds. An embedded store that cannot be read (vectorstore.ChromaDamaged)
    is moved aside to chroma.damaged-<time>/, kept for the user, and a new one is filled from the
    embeddings; the live manifest is marked `syncing` first, so HNSW refuses until the new one is in."""
    from .vectorstore import ChromaDamaged, VectorStore
    path = None if chroma_url else index_dir / "chroma"
    try:
        store = VectorStore.open(path=path, url=chroma_url, prefix=prefix)
        return store, store.metadatas()
    except ChromaDamaged as exc:
        if path is None:
            raise
        if old is not None and old.chroma is not None:
            old.chroma = old.chroma.marked_syncing()
            old.write(index_dir)
        aside = path.with_name(f"chroma.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
        path.rename(aside)
        log.warning("the Chroma database in %s could not be read (%s); moved it to %s and rebuilding it from "
                    "the stored embeddings (delete that folder when you no longer need it)", path, exc, aside.name)
    store = VectorStore.open(path=path, url=None, prefix=prefix)
    return store, store.metadatas()


def _tune_hnsw(store, n: int) -> dict[str, int]:
    """Set ef_search for the collection size (vectorstore.ef_search_for) and return the HNSW
    settings the collections hold, for the manifest."""
    from .vectorstore import ef_search_for
    held = store.hnsw_settings()
    if held["ef_search"] != ef_search_for(n):
        store.set_ef_search(ef_search_for(n))
        held = store.hnsw_settings()
    return held


def _remove_stale(index_dir: Path, manifest: Manifest) -> None:
    """Delete array files that the new manifest no longer names (after the manifest is written)."""
    live = set(manifest.files())
    for f in index_dir.glob("*.npy"):
        if f.name not in live:
            f.unlink(missing_ok=True)
    atomic.remove_leftovers(index_dir)

