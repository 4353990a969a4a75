"""Quarantine near-duplicates out of a library folder, with a record that undoes it.

Any folder an index was built from works (flat, nested, class folders): every image of a group
but its kept one (retrieval.duplicate_groups) moves to the quarantine folder under its own
library-relative path. Rules, and why:
- Nothing is ever overwritten or lost. A move is a hard link then an unlink (one file system:
  the link fails if the target exists, so no race can overwrite), else an exclusive copy,
  checked against the file's content hash, then the unlink.
- A file moves only when it is what the index saw (same sha256), and only when its group's kept
  image is still there with its indexed content: otherwise the group's last copy could leave.
- The record (JSON, written atomically into the quarantine folder before anything moves, then
  again with the outcome) lists each move: from, to, sha256, group, kind. Undo reads it and
  moves each file back, refusing per file, and leaving it where it is, when the original path is
  taken again by other content or the quarantined file changed or vanished (when the same
  content is back at the original path, the quarantined copy is the extra one and goes). Paths in the record
  are relative: to the library root (recorded) and to the record's own folder, so the quarantine
  folder may itself be moved.
- The quarantine folder may not be inside the library unless hidden (a hidden folder is never
  indexed): the next build would index the quarantined copies again.
The index is out of date afterwards; the front end says how to rebuild it.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_json
from .duplicate_groups import Analysis
from .errors import LookalikeError
from .library import file_sha256
from .manifest import Manifest

log = logging.getLogger(__name__)

RECORD_VERSION = 1
PLANNED, MOVED, REFUSED, RESTORED = "planned", "moved", "refused", "restored"
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


@dataclass
class Move:
    """One file's move: library-relative `source`, quarantine-relative `target`."""

    group: int
    source: str
    target: str
    sha256: str
    kind: str
    kept: str
    similarity: float
    status: str = PLANNED
    note: str = ""       # why it was refused, in words


@dataclass
class QuarantineRecord:
    """What one quarantine run did, and what undo needs."""

    library: str                       # the library root, absolute
    features: str
    threshold: float
    created: str
    moves: list[Move] = field(default_factory=list)
    version: int = RECORD_VERSION
    index: str = ""                    # the index folder the groups came from, absolute ("" unknown)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "library": self.library, "index": self.index, "features": self.features,
                "threshold": self.threshold, "created": self.created, "moves": [asdict(m) for m in self.moves]}

    @classmethod
    def read(cls, path: Path) -> "QuarantineRecord":
        import json
        try:
            raw = json.loads(Path(path).read_text("utf-8"))
            moves = [Move(**m) for m in raw["moves"]]
            return cls(raw["library"], raw["features"], float(raw["threshold"]), raw["created"], moves,
                       int(raw["version"]), str(raw.get("index") or ""))
        except FileNotFoundError:
            raise LookalikeError(f"no quarantine record at {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LookalikeError(f"{path} is not a quarantine record this version can read ({exc})") from None

    def of(self, status: str) -> list[Move]:
        return [m for m in self.moves if m.status == status]

    def lines(self, quarantine: Path, done: bool) -> list[str]:
        """One line per move (or refusal), then what was done (`done`) or would be done."""
        if not self.moves:
            return ["nothing to move"]
        out = [f"  group {m.group}: {m.source} -> {quarantine / m.target} ({m.kind}, {m.similarity:.3f}; kept {m.kept})"
               for m in self.moves if m.status != REFUSED]
        out += [f"  not moved: {m.source}: {m.note}" for m in self.of(REFUSED)]
        if not done:
            return out + [f"would move {files(len(self.of(PLANNED)))} to {quarantine}, keeping one image of each "
                          "group (dry run: nothing moved)"]
        refused = self.of(REFUSED)
        return out + [f"moved {files(len(self.of(MOVED)))} to {quarantine}"
                      + (f"; {files(len(refused))} not moved" if refused else "")]


def files(n: int) -> str:
    return f"{n:,} file{'' if n == 1 else 's'}"


def _matches(path: Path, sha: str) -> bool:
    """A regular file (not a symbolic link) with this content."""
    try:
        return path.is_file() and not path.is_symlink() and file_sha256(path) == sha
    except OSError:
        return False


def check_quarantine_folder(library: Path, quarantine: Path, index_dir: Path | None = None) -> None:
    """Refuse a quarantine folder that the next build would index, or the index folder itself."""
    lib, q = library.resolve(), quarantine.resolve()
    if lib.is_relative_to(q) and q != lib:
        raise LookalikeError(f"the library {library} is inside the quarantine folder {quarantine}; choose a "
                             "folder outside the library")
    if q == lib or (q.is_relative_to(lib) and not any(p.startswith(".") for p in q.relative_to(lib).parts)):
        raise LookalikeError(f"the quarantine folder {quarantine} is inside the library {library}: the next index "
                             "build would index the quarantined copies again; choose a folder outside it (or a "
                             "hidden one, whose name starts with a dot)")
    if index_dir is not None and (q == index_dir.resolve() or q.is_relative_to(index_dir.resolve())):
        raise LookalikeError(f"the quarantine folder {quarantine} is inside the index folder; choose another")


def plan(analysis: Analysis, library: Path, quarantine: Path, index_dir: Path | None = None) -> QuarantineRecord:
    """The moves of a quarantine, checked against the files as they are now (nothing moves)."""
    if not analysis.complete:
        raise ValueError("a quarantine needs every group of the search, not the first few")
    library, quarantine = Path(library), Path(quarantine)
    check_quarantine_folder(library, quarantine, index_dir)
    record = QuarantineRecord(str(library.resolve()), analysis.features, analysis.threshold,
                              time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              index=str(index_dir.resolve()) if index_dir is not None else "")
    taken: set[str] = set()
    for g in analysis.groups:
        kept_ok = _matches(library / g.kept.rel, g.kept.sha256)
        for m in g.others:
            move = Move(g.number, m.rel, _free_target(quarantine, m.rel, taken), m.sha256, m.kind, g.kept.rel,
                        m.similarity)
            if not kept_ok:
                move.status, move.note = REFUSED, f"its group's kept image {g.kept.rel} is missing or changed"
            elif not _matches(library / m.rel, m.sha256):
                move.status, move.note = REFUSED, "missing, changed or a symbolic link since the index was built"
            taken.add(move.target)
            record.moves.append(move)
    return record


def _free_target(quarantine: Path, rel: str, taken: set[str]) -> str:
    """rel, or rel with .1, .2, ... before its suffix when that name is used in the quarantine."""
    candidate, n = rel, 0
    while candidate in taken or (quarantine / candidate).exists():
        n += 1
        p = Path(rel)
        candidate = p.with_name(f"{p.stem}.{n}{p.suffix}").as_posix()
    return candidate


def record_path(quarantine: Path) -> Path:
    """A new record's name in the quarantine folder: quarantine-<date>-<time>.json, never an old one's."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = quarantine / f"quarantine-{stamp}.json", 0
    while path.exists():
        n += 1
        path = quarantine / f"quarantine-{stamp}-{n}.json"
    return path


def move_aside(record: QuarantineRecord, quarantine: Path) -> Path:
    """Carry out a planned quarantine; returns the record's path. The record is written before the
    first move (a killed run can still be undone) and again with each move's outcome."""
    quarantine = Path(quarantine)
    quarantine.mkdir(parents=True, exist_ok=True)
    path = record_path(quarantine)
    write_json(path, record.to_json())
    library = Path(record.library)
    for m in record.of(PLANNED):
        try:
            safe_move(library / m.source, quarantine / m.target, m.sha256)
            m.status = MOVED
        except (OSError, LookalikeError) as exc:
            m.status, m.note = REFUSED, str(exc)
            log.warning("quarantine: %s: %s", m.source, m.note)
    write_json(path, record.to_json())
    return path


def safe_move(src: Path, dst: Path, sha: str) -> None:
    """Move src to dst, never overwriting dst: a hard link then an unlink; across file systems
    (or where links are not allowed) an exclusive copy whose content is checked, then the unlink."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            _copy_exclusive(src, dst, sha)
    except FileExistsError:
        raise LookalikeError(f"a file named {dst.name} is in the way") from None
    try:
        os.unlink(src)
    except OSError:
        dst.unlink()          # the source stays: take back the link or copy, so there is one file again
        raise


def _copy_exclusive(src: Path, dst: Path, sha: str) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:   # "x": FileExistsError rather than overwrite
        try:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        except BaseException:
            fout.close()
            dst.unlink(missing_ok=True)        # a partial copy (disk full, interrupted) is not left behind
            raise
    if file_sha256(dst) != sha:
        dst.unlink()
        raise LookalikeError("the copy did not match the original; left in place")
    shutil.copystat(src, dst)


@dataclass
class UndoReport:
    record: QuarantineRecord
    quarantine: Path
    restored: list[Move]
    refused: list[Move]

    def lines(self) -> list[str]:
        library = Path(self.record.library)
        return ([f"  restored {library / m.source}" for m in self.restored]
                + [f"  not restored: {library / m.source}: {m.note}" for m in self.refused]
                + [f"restored {files(len(self.restored))}" + (f"; {files(len(self.refused))} left in "
                   f"{self.quarantine} (run the undo again once fixed)" if self.refused else "")])

    def index_manifest(self) -> Manifest | None:
        """The manifest of the index the groups came from, when it is still readable."""
        try:
            return Manifest.read(Path(self.record.index)) if self.record.index else None
        except LookalikeError:
            return None

    def index_lists_restored(self, manifest: Manifest) -> bool:
        """True when the index still lists every restored file (it was not rebuilt in between)."""
        held = {it["path"] for it in manifest.items}
        return all(m.source in held for m in self.restored)


def undo(path: Path) -> UndoReport:
    """Move back every file a quarantine record lists as moved; see the module docstring. The
    record is rewritten with each outcome, so running undo again retries only the refused files."""
    path = Path(path)
    record = QuarantineRecord.read(path)
    library, quarantine = Path(record.library), path.parent
    if not library.is_dir():
        raise LookalikeError(f"the library folder {library} is not there (a drive not mounted?); nothing was moved")
    restored, refused = [], []
    for m in record.moves:
        held = quarantine / m.target
        if m.status not in (MOVED, PLANNED) or (m.status == PLANNED and not held.exists()):
            continue   # refused when planned, restored already, or never moved by a run that was killed
        note = _restore(library / m.source, held, m.sha256)
        if note is None:
            m.status, m.note = RESTORED, ""
            restored.append(m)
            _remove_empty_parents(held, quarantine)
        else:
            m.note = note      # still moved: a later undo tries it again
            refused.append(m)
    write_json(path, record.to_json())
    return UndoReport(record, quarantine, restored, refused)


def _restore(original: Path, quarantined: Path, sha: str) -> str | None:
    """Move one file back; None when it is back, else why it stays where it is."""
    if not quarantined.is_file():
        return "not in the quarantine folder any more (it vanished or was moved)" if not _matches(original, sha) \
            else None
    if not _matches(quarantined, sha):
        return "the quarantined file changed since it was moved; it stays in the quarantine folder"
    if original.exists() or original.is_symlink():
        if _matches(original, sha):           # the same content is back already: drop the extra copy
            quarantined.unlink()
            return None
        return "its original path is taken by another file again; it stays in the quarantine folder"
    try:
        safe_move(quarantined, original, sha)
    except (OSError, LookalikeError) as exc:
        return f"could not move it back ({exc}); it stays in the quarantine folder"
    return None


def _remove_empty_parents(path: Path, root: Path) -> None:
    """Remove the folders a restored file leaves empty in the quarantine, up to (not including) root."""
    folder = path.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
