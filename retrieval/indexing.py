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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from . import atomic
from .errors import ImageError, IndexError_, LookalikeError
from .images import load_image, resize_pixels
from .library import NothingToEvaluate, evaluation_protocol, file_sha256, printable, scan_library
from .lock import locked_build
from .manifest import Manifest
from .paths import EVALUATION, MANIFEST

log = logging.getLogger(__name__)

DEFAULT_PIXEL_SIZE = 32
MAX_PIXEL_SIZE = 1024
NO_MODEL = ("none", "pixels", "")


def check_pixel_size(size: int) -> int:
    if not isinstance(size, int) or not 4 <= size <= MAX_PIXEL_SIZE:
        raise LookalikeError(f"pixel size must be a whole number from 4 to {MAX_PIXEL_SIZE}, got {size!r}")
    return size


def pixel_rows(paths: Sequence[Path], size: int, *, workers: int | None = None,
               desc: str = "pixels") -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decode and resize images in a thread pool: (uint8 rows, indices ok, [(index, reason)] failed)."""
    out = np.zeros((len(paths), size * size * 3), dtype=np.uint8)
    ok: list[int] = []
    failed: list[tuple[int, str]] = []

    def one(i: int) -> tuple[int, str | None]:
        try:
            out[i] = resize_pixels(load_image(paths[i]), size).reshape(-1)
            return i, None
        except ImageError as exc:
            return i, str(exc)

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 2)) as pool:
        for i, err in tqdm(pool.map(one, range(len(paths))), total=len(paths), desc=desc,
                           unit="img", disable=len(paths) < 50, leave=False):
            (failed.append((i, err)) if err else ok.append(i))
    return out, ok, failed


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


def _reuse_rows(old_items: list[dict[str, str]] | None, new_items: list[dict[str, str]]) -> dict[int, int]:
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


def _scan(data_dir: Path, index_dir: Path, labels: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The library's rows ({path, label, sha256}) and what the scan skipped (see retrieval.library);
    a file that cannot be read for hashing is skipped too, not fatal."""
    library = scan_library(data_dir, exclude=[index_dir], labels=labels)
    log.info("%s", library.describe())
    items, skipped = [], list(library.skipped)
    for it in library.items:
        try:
            items.append({"path": it.rel, "label": it.label, "sha256": file_sha256(it.path(data_dir))})
        except OSError as exc:
            skipped.append({"path": printable(it.rel), "reason": f"cannot be read ({exc.strerror or exc})"})
            log.warning("skipped %s: cannot be read (%s)", printable(it.rel), exc.strerror or exc)
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
                precision: str = "fp32", rerank: str = "auto") -> dict[str, Any]:
    """Build or update the index of the library DATA (any layout, see retrieval.library) under
    INDEX; returns a summary for logs and tests. `labels`: "auto", "folders" or "none".
    `precision`: "fp32", "bf16" or "auto" (bf16 where the CPU runs it natively and faster; the
    command line's default), see retrieval.embedders.precision. `rerank`: "auto" (DBA and QE for
    each source whose re-ranking rows fit retrieval.rerank.DBA_AUTO_MAX_BYTES), "on" or "off".

    model: an embedder spec (see retrieval.embedders.load_embedder), None/"auto" for the default,
    or "none" for a pixel-only index.
    """
    data_dir, index_dir = Path(data_dir), Path(index_dir)
    size = check_pixel_size(DEFAULT_PIXEL_SIZE if pixel_size is None else pixel_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LookalikeError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    from .rerank import MODES as RERANK_MODES
    if rerank not in RERANK_MODES:
        raise LookalikeError(f"--rerank must be one of {', '.join(RERANK_MODES)}, got {rerank!r}")
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexError_(f"cannot create the index folder {index_dir}: {exc.strerror or exc}") from None
    if not os.access(index_dir, os.W_OK):
        raise IndexError_(f"cannot write to the index folder {index_dir}; the existing index was left as it is")
    old = _old_manifest(index_dir)

    items, scan_skipped = _scan(data_dir, index_dir, labels)

    # Pixels: reuse unchanged rows, decode the rest once.
    old_pixels = _load_array(index_dir, old.pixels_file, old) if old and old.pixel_size == size else None
    reuse = _reuse_rows(old.items if old_pixels is not None else None, items)
    todo = [i for i in range(len(items)) if i not in reuse]
    fresh, ok, failed = pixel_rows([data_dir / items[i]["path"] for i in todo], size)
    pixels = np.zeros((len(items), size * size * 3), dtype=np.uint8)
    for new_i, old_i in reuse.items():
        pixels[new_i] = old_pixels[old_i]
    for j in ok:
        pixels[todo[j]] = fresh[j]
    skipped = [{"path": items[todo[j]]["path"], "reason": why} for j, why in failed]
    for s in skipped:
        log.warning("skipped %s", s["reason"])
    skipped = scan_skipped + skipped
    keep = sorted(set(range(len(items))) - {todo[j] for j, _ in failed})
    items = [items[i] for i in keep]
    pixels = pixels[keep]
    if not items:
        raise IndexError_(f"none of the {len(todo)} images under {data_dir} could be read")
    log.info("pixels: %d images at %dx%d (%d reused, %d decoded, %d skipped)",
             len(items), size, size, len(reuse), len(ok), len(failed))

    token = secrets.token_hex(4)
    manifest = Manifest(data_root=_relative_root(data_dir, index_dir), pixel_size=size,
                        pixels_file=f"pixels-{size}.{token}.npy", items=items, skipped=skipped)
    summary: dict[str, Any] = {"images": len(items), "pixel_size": size, "pixels_reused": len(reuse),
                               "pixels_decoded": len(ok), "skipped": skipped, "embedded": 0}
    try:
        atomic.save_npy(index_dir / manifest.pixels_file, pixels)
        if (model or "auto").lower() not in NO_MODEL:
            manifest.embedder, summary["embedded"] = _embed(index_dir, data_dir, items, old, model, token, batch_size,
                                                            precision)
            manifest.chroma = _sync_chroma(index_dir, manifest, chroma_url, old)
        from .rerank import build_library_side   # DBA from the current library (retrieval.rerank)
        manifest.rerank = build_library_side(index_dir, manifest, token, chroma_url, rerank)
        summary["rerank_skipped"] = manifest.rerank["skipped"]
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
    # The old evaluation describes the old index; a new one is written below (or, with
    # evaluate=False, by `python -m retrieval evaluate --save`).
    (index_dir / EVALUATION).unlink(missing_ok=True)
    _remove_stale(index_dir, manifest)
    summary["manifest"] = str(index_dir / MANIFEST)
    if evaluate:
        _evaluate(index_dir, summary)
    return summary


def _evaluate(index_dir: Path, summary: dict[str, Any]) -> None:
    """Evaluate where the library allows it, saying how in one info line; the build succeeds either
    way. Test split: the test protocol (and k-fold). Labelled, but no test split or no readable
    test image: k-fold only. Unlabelled (or k-fold impossible): skipped, with the reason."""
    from .evaluate import KFOLD_MAX_IMAGES, evaluate_all, evaluate_kfold
    from .search import LookalikeIndex
    index = LookalikeIndex.open(index_dir)
    protocol, why = evaluation_protocol(index.manifest.labels, index.rels, index.data_dir)
    try:
        if protocol is None:
            raise NothingToEvaluate(why)
        try:
            if protocol == "kfold":
                raise NothingToEvaluate(why)
            report = evaluate_all(index)   # the test protocol, and k-fold under "kfold"
        except NothingToEvaluate as exc:   # no test split, or none of its images readable
            if len(index.rels) > KFOLD_MAX_IMAGES:
                raise NothingToEvaluate(f"{exc}; k-fold is skipped above {KFOLD_MAX_IMAGES} images (run python -m "
                                        "retrieval evaluate --protocol kfold --save)") from None
            log.info("evaluation: %s", exc)
            summary["evaluation_note"] = str(exc)
            report = evaluate_kfold(index)
    except NothingToEvaluate as exc:
        log.info("evaluation skipped: %s", exc)
        summary["evaluation_skipped"] = str(exc)
        return
    atomic.write_json(index_dir / EVALUATION, report)
    summary["evaluation"] = report


def _embed(index_dir: Path, data_dir: Path, items: list[dict[str, str]], old: Manifest | None,
           model: str | None, token: str, batch_size: int,
           precision: str = "fp32") -> tuple[dict[str, Any], int]:
    """Embed new or changed images only; returns the manifest's embedder record and the count embedded."""
    from .embedders import load_embedder

    embedder = load_embedder(None if model in (None, "auto") else model)
    before = old.embedder if old and old.embedder and old.embedder["spec"] == embedder.spec else None
    _set_build_precision(embedder, precision, before.get("precision", "fp32") if before else None)
    # Rows are reused only from vectors of the same model *and* precision: the manifest's precision
    # then describes every row, and `--precision fp32` gives exactly the fp32 vectors.
    same_model = bool(before and before.get("precision", "fp32") == embedder.precision)
    old_vectors = _load_array(index_dir, old.embedder["file"], old) if same_model else None
    reuse = _reuse_rows(old.items if old_vectors is not None else None, items)
    vectors = np.zeros((len(items), embedder.dim), dtype=np.float32)
    for new_i, old_i in reuse.items():
        vectors[new_i] = old_vectors[old_i]
    todo = [i for i in range(len(items)) if i not in reuse]
    done = np.zeros(len(items), dtype=bool)
    done[list(reuse)] = True
    if todo:
        log.info("embedding %d new or changed images with %s", len(todo), embedder.spec)
        for ok, vecs in embedder.encode_files([data_dir / items[i]["path"] for i in todo], batch_size=batch_size):
            rows = [todo[j] for j in ok]
            vectors[rows] = vecs
            done[rows] = True
    if not done.all():
        missing = [items[i]["path"] for i in np.flatnonzero(~done)]
        raise IndexError_(f"{len(missing)} images decoded for pixels but failed to embed: {missing[:5]}")
    record = {"spec": embedder.spec, "source": getattr(embedder, "source", model) or embedder.spec,
              "name": embedder.name, "dim": embedder.dim, "has_text": embedder.has_text,
              "file": f"embeddings-{embedder.name}.{token}.npy",
              **_precision_record(embedder, old if same_model else None, reuse,
                                  [data_dir / items[i]["path"] for i in todo], vectors[todo], batch_size)}
    atomic.save_npy(index_dir / record["file"], vectors)
    return record, len(todo)


def _set_build_precision(embedder, requested: str | None, previous: str | None) -> None:
    """Put the embedder in the build's precision. `auto` on an update keeps the index's own
    precision where this machine can run it (its rows stay reusable, and a borderline
    calibration cannot flip an index back and forth); otherwise see precision.resolve."""
    from .embedders import precision as prec
    requested = prec.check_precision(requested)
    if requested == "auto" and embedder.device.type == "cpu" and (
            previous == "fp32" or (previous == "bf16" and prec.native_bf16())):
        chosen, why = previous, {"requested": requested, "why": f"kept the index's precision ({previous})"}
    else:
        chosen, why = prec.resolve(embedder, requested)
    if chosen != embedder.precision:
        embedder.set_precision(chosen)
    embedder.precision_record = why


def _precision_record(embedder, old: Manifest | None, reuse: dict[int, int], paths: list[Path],
                      vectors: np.ndarray, batch_size: int) -> dict[str, Any]:
    """The manifest's precision fields; for bf16, the quality guard's check against fp32."""
    from .embedders.precision import quality_check
    out: dict[str, Any] = {"precision": embedder.precision, "precision_choice": embedder.precision_record}
    if embedder.precision == "bf16" and paths:
        out["precision_check"] = quality_check(embedder, paths, vectors, batch_size)
    return out


def _sync_chroma(index_dir: Path, manifest: Manifest, chroma_url: str | None,
                 old: Manifest | None = None) -> dict[str, Any]:
    """Make Chroma hold exactly the manifest's rows: upsert new/changed, delete removed.

    Comparing against what Chroma holds (not against the old manifest) also repairs a store left
    behind by a build that was killed between the Chroma write and the manifest write. Before the
    first change to collections that the old manifest uses, that manifest is marked `syncing`, so
    a build killed from here until the new manifest is written leaves an index whose HNSW methods
    refuse with "rerun the build" instead of answering from collections that no longer match it.
    """
    record = {"mode": "server", "url": chroma_url} if chroma_url else {"mode": "embedded", "path": "chroma"}
    record["prefix"] = f"lookalike-{manifest.embedder['name']}-{manifest.embedder['dim']}"
    store, held = _open_store(index_dir, chroma_url, record["prefix"], old)
    vectors = np.load(index_dir / manifest.embedder["file"], mmap_mode="r")
    wanted = {it["path"]: i for i, it in enumerate(manifest.items)}
    stale = [i for i in held if i not in wanted]
    rows = [i for p, i in wanted.items()
            if held.get(p, {}).get("sha256") != manifest.items[i]["sha256"]
            or held.get(p, {}).get("spec") != manifest.embedder["spec"]]
    if (stale or rows) and old is not None and old.chroma is not None \
            and {k: v for k, v in old.chroma.items() if k not in ("syncing", "hnsw")} == record:
        old.chroma = {**record, "syncing": True}
        old.write(index_dir)
    if stale:
        store.delete(stale)
    if rows:
        store.upsert([manifest.items[i]["path"] for i in rows], np.asarray(vectors[rows]),
                     [{"label": manifest.items[i]["label"], "path": manifest.items[i]["path"],
                       "sha256": manifest.items[i]["sha256"], "spec": manifest.embedder["spec"]}
                      for i in rows])
    log.info("chroma: %d upserted, %d deleted, %s", len(rows), len(stale), store.count())
    return {**record, "hnsw": _tune_hnsw(store, len(manifest.items))}


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
            old.chroma = {**old.chroma, "syncing": True}
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
    from .rerank import record_files
    live = {manifest.pixels_file, (manifest.embedder or {}).get("file"), *record_files(manifest.rerank)}
    for f in index_dir.glob("*.npy"):
        if f.name not in live:
            f.unlink(missing_ok=True)
    atomic.remove_leftovers(index_dir)

