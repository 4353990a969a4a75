"""Fashion-MNIST as a Lookalike library: 70,000 labelled 28x28 greyscale images for scale tests.

The Debian package dataset-fashion-mnist (MIT, Zalando Research) ships the four gzipped IDX files
under /usr/share/datasets/fashion-mnist/. `load_split` reads them into arrays (the benchmarks use
these directly); `export_library` writes them out in the layout every other stage reads,
OUT/{train,test}/<class>/<split>-NNNNN.png, so `build_index.py index` indexes them like any library.
The official split is kept: 60,000 train images form the library, 10,000 test images the queries.
"""
from __future__ import annotations

import argparse
import gzip
import io
import logging
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.atomic import write_bytes
from retrieval.attribution import make_record, write_attribution
from retrieval.errors import LibraryError

log = logging.getLogger(__name__)

ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
CLASSES = ("t-shirt-top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IDX_UBYTE = 0x08
ATTRIBUTION = ("Fashion-MNIST, Zalando Research (Xiao, Rasul and Vollgraf, 2017), MIT licence; "
               "https://github.com/zalandoresearch/fashion-mnist, via the Debian package dataset-fashion-mnist")
UPSTREAM = "https://github.com/zalandoresearch/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes as an array of its declared shape."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise LibraryError(f"{path} is missing; install Fashion-MNIST with: {INSTALL_HINT}") from None
    except (OSError, EOFError) as exc:
        raise LibraryError(f"{path} is not a readable gzip file ({exc}); reinstall: {INSTALL_HINT}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise LibraryError(f"{path} is not an unsigned-byte IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise LibraryError(f"{path}: header says {dims} but holds {len(raw) - header} bytes; reinstall: {INSTALL_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_split(split: str, root: Path = ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of the official train or test split."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    images_file, labels_file = FILES[split]
    images, labels = read_idx(Path(root) / images_file), read_idx(Path(root) / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise LibraryError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(CLASSES):
        raise LibraryError(f"{root}: {split} labels go up to {labels.max()}, expected 0-9")
    return images, labels


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "L").save(buf, "PNG")
    return buf.getvalue()


def export_library(out: Path, *, root: Path = ROOT, limit_train: int | None = None,
                   limit_test: int | None = None, workers: int = 4) -> dict[str, Any]:
    """Write OUT/{train,test}/<class>/<split>-NNNNN.png (the first `limit_*` images of each split).

    Each file is written atomically, and files already present are kept, so a rerun (or a
    resumed, interrupted run) only writes what is missing. Returns counts and seconds.
    """
    out = Path(out)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"out": str(out), "written": 0, "kept": 0, "splits": {}}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split, limit in (("train", limit_train), ("test", limit_test)):
            images, labels = load_split(split, root)
            n = len(images) if limit is None else min(limit, len(images))
            for name in CLASSES:
                (out / split / name).mkdir(parents=True, exist_ok=True)

            def write(i: int, split: str = split, images: np.ndarray = images,
                      labels: np.ndarray = labels) -> bool:
                path = out / split / CLASSES[labels[i]] / f"{split}-{i:05d}.png"
                if path.is_file() and path.stat().st_size > 0:
                    return False
                write_bytes(path, png_bytes(images[i]))
                return True

            written = sum(pool.map(write, range(n), chunksize=256))
            summary["written"] += written
            summary["kept"] += n - written
            summary["splits"][split] = {"images": n, "per_class": np.bincount(labels[:n], minlength=len(CLASSES)).tolist()}
    _write_attribution(out, root, sum(s["images"] for s in summary["splits"].values()))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def _write_attribution(out: Path, root: Path, images: int) -> None:
    """One record for the whole export (not one per image: 70,000 would only repeat it)."""
    record = make_record(source="Fashion-MNIST", licence="MIT", images=images,
                         author="Zalando Research (Xiao, Rasul and Vollgraf, 2017)", credit=ATTRIBUTION,
                         url=UPSTREAM, original=str(root))
    markdown = (f"# Fashion-MNIST: attribution\n\n{images} greyscale 28x28 images in {len(CLASSES)} classes "
                f"({', '.join(CLASSES)}), written as PNG by `python build_index.py fashion-mnist` from the "
                f"Debian package dataset-fashion-mnist ({root}).\n\n{ATTRIBUTION}.\n\n"
                "Fashion-MNIST is released under the MIT licence; see the upstream repository for its text.\n")
    write_attribution(out, [record], markdown=markdown)


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `fashion-mnist` subcommand to build_index.py."""
    p = sub.add_parser(
        "fashion-mnist", help="write Fashion-MNIST (70k images) as a library for scale tests",
        description="Write the Fashion-MNIST images from the Debian package dataset-fashion-mnist "
                    f"({INSTALL_HINT}) as OUT/{{train,test}}/<class>/*.png: 60,000 train (library) and "
                    "10,000 test (queries) images in 10 classes. Reruns keep existing files.")
    p.add_argument("--out", type=Path, default=Path("data-fashion"), help="library folder (default: data-fashion)")
    p.add_argument("--limit-train", type=int, default=None, help="only the first N train images")
    p.add_argument("--limit-test", type=int, default=None, help="only the first N test images")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    summary = export_library(args.out, root=args.root, limit_train=args.limit_train, limit_test=args.limit_test)
    print(f"fashion-mnist: {summary['written']} images written, {summary['kept']} kept, under {summary['out']} "
          f"({summary['seconds']} s); index it with: python build_index.py index --data {summary['out']} "
          f"--pixel-size 28 --model effnet")
    return 0
