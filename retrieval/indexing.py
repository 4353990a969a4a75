"""Building (and incrementally updating) an index from a library folder.

Build once, query many times: every library image is decoded and resized once, embedded once, and
written to the index folder. A re-run reuses rows whose content hash is unchanged, embeds only new
or changed images, and drops deleted ones from the arrays and from Chroma.
"""
from __future__ import annotations

import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from . import atomic
from .errors import ImageError, IndexError_, LookalikeError
from .images import load_image, resize_pixels
from .library import file_sha256, scan_split
from .manifest import Manifest
from .paths import EVALUATION

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
    """Map new row -> old row for images whose path and content hash are unchanged."""
    if not old_items:
        return {}
    old = {(it["path"], it["sha256"]): i for i, it in enumerate(old_items)}
    return {i: old[(it["path"], it["sha256"])] for i, it in enumerate(new_items)
            if (it["path"], it["sha256"]) in old}


def _load_array(index_dir: Path, name: str | None) -> np.ndarray | None:
    if not name or not (index_dir / name).is_file():
        return None
    try:
        return np.load(index_dir / name, mmap_mode="r")
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s; it will be rebuilt", name)
        return None


def build_index(data_dir: Path, index_dir: Path, *, pixel_size: int | None = None,
                model: str | None = None, chroma_url: str | None = None,
                evaluate: bool = True, batch_size: int = 32) -> dict[str, Any]:
    """Build or update the index for DATA/train under INDEX; returns a summary for logs and tests.

    model: an embedder spec (see retrieval.embedders.load_embedder), None/"auto" for the default,
    or "none" for a pixel-only index.
    """
    data_dir, index_dir = Path(data_dir), Path(index_dir)
    size = check_pixel_size(DEFAULT_PIXEL_SIZE if pixel_size is None else pixel_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LookalikeError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexError_(f"cannot create the index folder {index_dir}: {exc.strerror or exc}") from None
    if not os.access(index_dir, os.W_OK):
        raise IndexError_(f"cannot write to the index folder {index_dir}; the existing index was left as it is")
    old = _old_manifest(index_dir)

    library = scan_split(data_dir, "train")
    items = [{"path": it.rel, "label": it.label,
              "sha256": file_sha256(it.path(data_dir))} for it in library]

    # Pixels: reuse unchanged rows, decode the rest once.
    old_pixels = _load_array(index_dir, old.pixels_file) if old and old.pixel_size == size else None
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
    keep = sorted(set(range(len(items))) - {todo[j] for j, _ in failed})
    items = [items[i] for i in keep]
    pixels = pixels[keep]
    if not items:
        raise IndexError_(f"none of the images under {data_dir / 'train'} could be read")
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
            manifest.embedder, summary["embedded"] = _embed(index_dir, data_dir, items, old, model, token, batch_size)
            manifest.chroma = _sync_chroma(index_dir, manifest, chroma_url, old)
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
    summary["manifest"] = str(index_dir / "manifest.json")
    if evaluate:
        from .evaluate import evaluate_index
        from .search import LookalikeIndex
        report = evaluate_index(LookalikeIndex.open(index_dir))
        atomic.write_json(index_dir / EVALUATION, report)
        summary["evaluation"] = report
    return summary


def _embed(index_dir: Path, data_dir: Path, items: list[dict[str, str]], old: Manifest | None,
           model: str | None, token: str, batch_size: int) -> tuple[dict[str, Any], int]:
    """Embed new or changed images only; returns the manifest's embedder record and the count embedded."""
    from .embedders import load_embedder

    embedder = load_embedder(None if model in (None, "auto") else model)
    same_model = bool(old and old.embedder and old.embedder["spec"] == embedder.spec)
    old_vectors = _load_array(index_dir, old.embedder["file"]) if same_model else None
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
              "file": f"embeddings-{embedder.name}.{token}.npy"}
    atomic.save_npy(index_dir / record["file"], vectors)
    return record, len(todo)


def _sync_chroma(index_dir: Path, manifest: Manifest, chroma_url: str | None,
                 old: Manifest | None = None) -> dict[str, Any]:
    """Make Chroma hold exactly the manifest's rows: upsert new/changed, delete removed.

    Comparing against what Chroma holds (not against the old manifest) also repairs a store left
    behind by a build that was killed between the Chroma write and the manifest write. Before the
    first change to collections that the old manifest uses, that manifest is marked `syncing`, so
    a build killed from here until the new manifest is written leaves an index whose HNSW methods
    refuse with "rerun the build" instead of answering from collections that no longer match it.
    """
    from .vectorstore import VectorStore

    record = {"mode": "server", "url": chroma_url} if chroma_url else {"mode": "embedded", "path": "chroma"}
    record["prefix"] = f"lookalike-{manifest.embedder['name']}-{manifest.embedder['dim']}"
    store = VectorStore.open(path=None if chroma_url else index_dir / "chroma", url=chroma_url,
                             prefix=record["prefix"])
    vectors = np.load(index_dir / manifest.embedder["file"], mmap_mode="r")
    held = store.metadatas()
    wanted = {it["path"]: i for i, it in enumerate(manifest.items)}
    stale = [i for i in held if i not in wanted]
    rows = [i for p, i in wanted.items()
            if held.get(p, {}).get("sha256") != manifest.items[i]["sha256"]
            or held.get(p, {}).get("spec") != manifest.embedder["spec"]]
    if (stale or rows) and old is not None and old.chroma is not None \
            and {k: v for k, v in old.chroma.items() if k != "syncing"} == record:
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
    return record


def _remove_stale(index_dir: Path, manifest: Manifest) -> None:
    """Delete array files that the new manifest no longer names (after the manifest is written)."""
    live = {manifest.pixels_file, (manifest.embedder or {}).get("file")}
    for f in index_dir.glob("*.npy"):
        if f.name not in live:
            f.unlink(missing_ok=True)
    atomic.remove_leftovers(index_dir)

