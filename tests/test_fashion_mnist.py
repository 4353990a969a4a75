"""Fashion-MNIST import: IDX parsing, the exported library layout, reruns, and the CLI stage."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from collect import fashion_mnist as fm
from retrieval.attribution import read_attribution
from retrieval.errors import LibraryError
from retrieval.library import scan_split


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, fm.IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path) -> Path:
    """A miniature Fashion-MNIST in the Debian package's file layout: 7 train, 3 test images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    for split, n in (("train", 7), ("test", 3)):
        images_file, labels_file = fm.FILES[split]
        write_idx(root / images_file, rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(root / labels_file, np.arange(n) % 10)
    return root


def test_read_idx_round_trips_and_rejects_bad_files(tmp_path, fake_root):
    images, labels = fm.load_split("train", fake_root)
    assert images.shape == (7, 28, 28) and images.dtype == np.uint8 and labels.tolist() == list(range(7))
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x0d\x01" + struct.pack(">I", 3) + b"abc")      # float IDX, not bytes
    with pytest.raises(LibraryError, match="unsigned-byte"):
        fm.read_idx(bad)
    with gzip.open(bad, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc")      # header says 5, holds 3
    with pytest.raises(LibraryError, match="holds 3 bytes"):
        fm.read_idx(bad)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(LibraryError, match="gzip"):
        fm.read_idx(bad)
    with pytest.raises(LibraryError, match="apt-get install dataset-fashion-mnist"):
        fm.load_split("test", tmp_path / "nowhere")


def test_export_writes_a_library_the_index_reads(tmp_path, fake_root):
    out = tmp_path / "lib"
    summary = fm.export_library(out, root=fake_root, limit_train=5)
    assert summary["written"] == 5 + 3 and summary["splits"]["train"]["images"] == 5
    items = scan_split(out, "train")
    assert [it.label for it in items] == sorted(fm.CLASSES[i] for i in range(5))
    images, _ = fm.load_split("train", fake_root)
    png = out / "train" / fm.CLASSES[2] / "train-00002.png"
    np.testing.assert_array_equal(np.asarray(Image.open(png)), images[2])       # lossless, greyscale
    assert len(scan_split(out, "test")) == 3
    attribution = read_attribution(out)  # the reader the app and the Hub card use
    assert attribution.problem is None and attribution.images == 8
    assert attribution.licences == {"MIT": 8} and attribution.sources == {"Fashion-MNIST": 8}
    (record,) = attribution.records  # one record for the whole export, not one per image
    assert "Zalando" in record["author"] and record["url"].startswith("https://github.com/zalandoresearch/")
    assert "MIT" in (out / "ATTRIBUTION.md").read_text(encoding="utf-8")
    again = fm.export_library(out, root=fake_root, limit_train=5)
    assert again["written"] == 0 and again["kept"] == 8


def test_cli_stage(tmp_path, fake_root, capsys):
    """`python build_index.py fashion-mnist ...` (the stage as build_index.py registers it)."""
    from build_index import make_parser

    parser = make_parser()
    args = parser.parse_args(["fashion-mnist", "--out", str(tmp_path / "out"), "--root", str(fake_root),
                              "--limit-test", "1"])
    assert args.func(args) == 0
    assert "8 images written" in capsys.readouterr().out
    assert len(scan_split(tmp_path / "out", "test")) == 1


@pytest.mark.skipif(not (fm.ROOT / fm.FILES["test"][0]).is_file(), reason="dataset-fashion-mnist not installed")
def test_the_installed_dataset():
    images, labels = fm.load_split("test")
    assert images.shape == (10_000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10
