"""Read Qt binary resource bundles (`.rcc`), the container GCompris keeps its pictures in.

GCompris ships no loose image files: each activity's images, READMEs and credits are packed into a
`/usr/share/gcompris-qt/rcc/<activity>.rcc` bundle. Reading the format directly (it is small) keeps
the sample library free of a Qt dependency.

Layout (all integers big-endian): magic `qres`, u32 version, u32 tree offset, u32 data offset,
u32 names offset. Tree entries are 22 bytes (version 2 and 3 add an 8-byte modification time, which
is skipped): u32 name offset, u16 flags, then for a directory (flag 2) u32 child count and u32 first
child index, else u16 country, u16 language and u32 data offset. A name is u16 length, u32 hash,
then UTF-16BE text. A data blob is u32 size then bytes; flag 1 means zlib, after a 4-byte
uncompressed-length prefix.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from retrieval.errors import LookalikeError

MAGIC = b"qres"
FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04
ENTRY_SIZE = 14  # name u32 + flags u16 + 8 bytes of directory or file fields
TIMESTAMP_SIZE = 8  # versions >= 2 follow each entry with a u64 modification time


class QrcError(LookalikeError):
    """A file is not a readable Qt resource bundle."""


@dataclass(frozen=True)
class QrcEntry:
    """One file inside a bundle: its path (with '/' separators, no leading slash) and where its data is."""

    path: str
    flags: int
    data_offset: int


class QrcBundle:
    """A Qt resource bundle held in memory, listing and reading its files by internal path."""

    def __init__(self, data: bytes, name: str = "bundle") -> None:
        self.name = name
        self._data = data
        if len(data) < 20 or data[:4] != MAGIC:
            raise QrcError(f"{name}: not a Qt resource bundle (no 'qres' magic)")
        self.version, self._tree, self._payload, self._names = struct.unpack_from(">4I", data, 4)
        if self.version not in (1, 2, 3):
            raise QrcError(f"{name}: unsupported Qt resource format version {self.version}")
        self._stride = ENTRY_SIZE + (TIMESTAMP_SIZE if self.version >= 2 else 0)
        self._entries: dict[str, QrcEntry] = {}
        try:
            self._walk(0, "", depth=0)
        except struct.error as exc:
            raise QrcError(f"{name}: truncated or corrupt resource tree ({exc})") from None

    @classmethod
    def open(cls, path: str | Path) -> "QrcBundle":
        path = Path(path)
        return cls(path.read_bytes(), name=path.name)

    def _name(self, offset: int) -> str:
        pos = self._names + offset
        (length,) = struct.unpack_from(">H", self._data, pos)
        raw = self._data[pos + 6:pos + 6 + 2 * length]  # skip u16 length and u32 hash
        return raw.decode("utf-16-be")

    def _walk(self, index: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise QrcError(f"{self.name}: resource tree too deep (a loop?)")
        pos = self._tree + index * self._stride
        name_off, flags = struct.unpack_from(">IH", self._data, pos)
        name = "" if index == 0 else self._name(name_off)
        path = f"{prefix}/{name}" if prefix else name
        if flags & FLAG_DIRECTORY:
            count, first = struct.unpack_from(">II", self._data, pos + 6)
            for child in range(first, first + count):
                self._walk(child, path, depth + 1)
        else:
            (data_off,) = struct.unpack_from(">I", self._data, pos + 10)
            self._entries[path] = QrcEntry(path, flags, data_off)

    def paths(self) -> list[str]:
        """All file paths in the bundle, sorted."""
        return sorted(self._entries)

    def __contains__(self, path: str) -> bool:
        return path.lstrip("/") in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths())

    def entry(self, path: str) -> QrcEntry:
        """The tree entry of a file (its flags say how it is stored)."""
        entry = self._entries.get(path.lstrip("/"))
        if entry is None:
            raise KeyError(f"{self.name}: no file {path!r}")
        return entry

    def read(self, path: str) -> bytes:
        """The file's bytes, decompressed."""
        entry = self.entry(path)
        pos = self._payload + entry.data_offset
        (size,) = struct.unpack_from(">I", self._data, pos)
        blob = self._data[pos + 4:pos + 4 + size]
        if len(blob) != size:
            raise QrcError(f"{self.name}: {path}: data runs past the end of the bundle")
        if entry.flags & FLAG_COMPRESSED_ZSTD:
            raise QrcError(f"{self.name}: {path}: zstd-compressed entries are not supported")
        if entry.flags & FLAG_COMPRESSED:
            try:
                return zlib.decompress(blob[4:])  # after the u32 uncompressed-length prefix
            except zlib.error as exc:
                raise QrcError(f"{self.name}: {path}: corrupt zlib data ({exc})") from None
        return blob
