"""The Qt resource bundle reader: a real GCompris bundle, and bundles written here byte by byte."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from collect.qrc import FLAG_COMPRESSED, FLAG_DIRECTORY, QrcBundle, QrcError
from retrieval.errors import LookalikeError

ERASE = Path("/usr/share/gcompris-qt/rcc/erase.rcc")
RESOURCE = "gcompris/src/activities/erase/resource/"


def make_rcc(files: dict[str, tuple[bytes, int]], version: int = 3) -> bytes:
    """Write a bundle the way rcc lays it out: header, data blobs, names, then the tree.

    The tree is breadth-first with each folder's children contiguous; versions 2 and 3 add an
    8-byte timestamp to every entry. `files` maps a path to (bytes, flag 0 or 1).
    """
    root: dict = {}
    for path, item in files.items():
        *folders, leaf = path.split("/")
        node = root
        for folder in folders:
            node = node.setdefault(folder, {})
        node[leaf] = item
    names = bytearray()
    name_offsets: dict[str, int] = {}
    payload = bytearray()
    entries: dict[int, bytes] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            names.extend(struct.pack(">HI", len(name), 0) + name.encode("utf-16-be"))
        return name_offsets[name]

    queue = [(0, "", root)]
    next_index = 1
    while queue:
        index, name, node = queue.pop(0)
        name_off = name_offset(name) if index else 0
        if isinstance(node, dict):
            children = sorted(node.items())
            entries[index] = struct.pack(">IHII", name_off, FLAG_DIRECTORY, len(children), next_index)
            for child_name, child in children:
                queue.append((next_index, child_name, child))
                next_index += 1
        else:
            data, flag = node
            blob = struct.pack(">I", len(data)) + zlib.compress(data) if flag == FLAG_COMPRESSED else data
            entries[index] = struct.pack(">IHHHI", name_off, flag, 0, 0, len(payload))
            payload.extend(struct.pack(">I", len(blob)) + blob)
    stamp = b"\0" * 8 if version >= 2 else b""
    tree = b"".join(entries[i] + stamp for i in range(len(entries)))
    data_off = 20
    names_off = data_off + len(payload)
    tree_off = names_off + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    return header + bytes(payload) + bytes(names) + tree


@pytest.mark.parametrize("version", [1, 3])
def test_round_trip_stored_and_zlib_entries(version: int) -> None:
    text = "Grüße, ünïcode names too\n".encode() * 20
    files = {
        "top.txt": (b"stored as is", 0),
        "a/b/deep.bin": (bytes(range(256)), 0),
        "a/zipped.txt": (text, FLAG_COMPRESSED),
        "a/ünï.txt": (b"x", FLAG_COMPRESSED),
    }
    bundle = QrcBundle(make_rcc(files, version), name="tiny.rcc")
    assert bundle.version == version
    assert bundle.paths() == sorted(files)
    for path, (data, flag) in files.items():
        assert bundle.entry(path).flags == flag
        assert bundle.read(path) == data
    assert "a/zipped.txt" in bundle and "/a/zipped.txt" in bundle and "a/missing" not in bundle
    with pytest.raises(KeyError):
        bundle.read("a/missing")


def test_rejects_what_is_not_a_bundle() -> None:
    with pytest.raises(QrcError, match="no 'qres' magic"):
        QrcBundle(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, name="fake.rcc")
    good = make_rcc({"x.txt": (b"hello", 0)})
    with pytest.raises(QrcError, match="truncated or corrupt"):
        QrcBundle(good[:-10], name="cut.rcc")
    assert issubclass(QrcError, LookalikeError)


def test_corrupt_zlib_entry_is_a_clear_error() -> None:
    raw = bytearray(make_rcc({"z.txt": (b"some text " * 50, FLAG_COMPRESSED)}))
    start = 20 + 4 + 4 + 2  # header, blob size, length prefix, then two bytes into the zlib stream
    raw[start:start + 20] = b"\xff" * 20
    with pytest.raises(QrcError, match="corrupt zlib"):
        QrcBundle(bytes(raw), name="bad.rcc").read("z.txt")


@pytest.mark.skipif(not ERASE.is_file(), reason="needs: sudo apt-get install gcompris-qt-data")
def test_reads_a_real_gcompris_bundle() -> None:
    bundle = QrcBundle.open(ERASE)
    assert bundle.version == 3
    paths = bundle.paths()
    for name in ("README", "alpaca.webp", "toucan.webp", "bee.webp"):
        assert RESOURCE + name in paths
    # The README is zlib-compressed in the bundle; the photos are stored as they are.
    assert bundle.entry(RESOURCE + "README").flags == FLAG_COMPRESSED
    readme = bundle.read(RESOURCE + "README").decode("utf-8")
    assert "Files: alpaca.webp" in readme and "License:" in readme
    assert bundle.entry(RESOURCE + "alpaca.webp").flags == 0
    img = Image.open(io.BytesIO(bundle.read(RESOURCE + "alpaca.webp")))
    assert img.format == "WEBP" and min(img.size) >= 500
    compressed = [p for p in paths if bundle.entry(p).flags & FLAG_COMPRESSED]
    assert compressed and all(bundle.read(p) for p in compressed)
