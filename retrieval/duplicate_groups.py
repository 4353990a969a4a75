"""Near-duplicate groups as people decide on them: which image is kept, how each other one differs
from it, and the groups exported as JSON or CSV.

`retrieval.duplicates` finds the groups from what the index stores, decoding nothing. Here each
group's members are read (only theirs, each distinct file once: `retrieval.edit_kind`) to know
their pixel size, which decides the kept image (`duplicates.keeper`: the largest, then the first
by name), and the kind of copy each other member is. The Duplicates tab, the command line's
export and its quarantine all start from an `Analysis`.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import write_bytes, write_json
from .duplicates import DuplicateReport, Group, keeper
from .edit_kind import SAME_FILE, Look, edit_kind, look
from .errors import ImageError, LookalikeError

if TYPE_CHECKING:
    from .search import LookalikeIndex

log = logging.getLogger(__name__)

KEPT, UNREADABLE = "kept", "unreadable"
CSV_COLUMNS = ("group", "file", "action", "kind", "similarity", "width", "height", "sha256")


@dataclass(frozen=True)
class Member:
    """One image of a group: its library-relative path, what it is to the kept image, and its size
    (0 x 0 when it could not be read now: it vanished or changed since the index was built)."""

    row: int
    rel: str
    sha256: str
    width: int
    height: int
    kept: bool
    kind: str            # "kept", "same file", "resized", "cropped + brightened", ..., "unreadable"
    similarity: float    # to the kept image, on the grouping's scale (1.0 for the kept image)

    @property
    def action(self) -> str:
        """What a quarantine does with it: "keep" or "move"."""
        return "keep" if self.kept else "move"

    @property
    def size(self) -> str:
        return f"{self.width}×{self.height}" if self.width else "size unknown"


@dataclass(frozen=True)
class DuplicateGroup:
    """A group, numbered from 1 as `duplicates` prints it: the kept image first, then the others by name."""

    number: int
    members: tuple[Member, ...]
    min_similarity: float
    max_similarity: float

    @property
    def kept(self) -> Member:
        return self.members[0]

    @property
    def others(self) -> tuple[Member, ...]:
        return self.members[1:]


@dataclass(frozen=True)
class Analysis:
    """The groups of one search (features, threshold) over a library of `images` images.
    `total_groups` and `images_in_groups` count every group found; `groups` holds the first of
    them, or all."""

    features: str
    threshold: float
    images: int
    total_groups: int
    images_in_groups: int
    groups: tuple[DuplicateGroup, ...]

    @property
    def complete(self) -> bool:
        return len(self.groups) == self.total_groups

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features, "threshold": self.threshold, "images": self.images,
                "groups": [{"group": g.number, "kept": g.kept.rel, "min_similarity": g.min_similarity,
                            "max_similarity": g.max_similarity,
                            "members": [{"file": m.rel, "action": m.action, "kind": m.kind,
                                         "similarity": m.similarity, "width": m.width, "height": m.height,
                                         "sha256": m.sha256} for m in g.members]} for g in self.groups]}

    def csv_text(self) -> str:
        """One row per member: CSV_COLUMNS."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for g in self.groups:
            for m in g.members:
                writer.writerow([g.number, m.rel, m.action, m.kind, f"{m.similarity:.4f}", m.width, m.height,
                                 m.sha256])
        return out.getvalue()


def analyse(index: LookalikeIndex, report: DuplicateReport, limit: int | None = None) -> Analysis:
    """The kept image and each member's kind for the groups of `report` (the first `limit` of them,
    or all), reading only their members' files."""
    shas = [it["sha256"] for it in index.manifest.items]
    looks: dict[str, Look | None] = {}   # by content hash: exact copies are read once
    chosen = report.groups if limit is None else report.groups[:limit]
    groups = tuple(_analyse_group(index, report, n, g, shas, looks) for n, g in enumerate(chosen, 1))
    return Analysis(report.kind, report.threshold, len(report.rels), len(report.groups),
                    sum(len(g.rows) for g in report.groups), groups)


def _read(index: LookalikeIndex, row: int, sha: str, looks: dict[str, Look | None]) -> Look | None:
    if sha not in looks:
        try:
            looks[sha] = look(index.paths[row], name=index.rels[row])
        except (ImageError, OSError) as exc:
            log.info("near-duplicates: cannot read %s now: %s", index.rels[row], exc)
            looks[sha] = None
    return looks[sha]


def _analyse_group(index: LookalikeIndex, report: DuplicateReport, number: int, group: Group,
                   shas: list[str], looks: dict[str, Look | None]) -> DuplicateGroup:
    rows = list(group.rows)
    seen = [_read(index, r, shas[r], looks) for r in rows]
    areas = [x.width * x.height if x else 0 for x in seen]
    k = keeper([index.rels[r] for r in rows], areas)
    kept_row, kept_look = rows[k], seen[k]
    kinds: dict[str, str] = {}   # by content hash: one verdict per distinct file

    def kind(row: int, mine: Look | None) -> str:
        if shas[row] == shas[kept_row]:
            return SAME_FILE
        if mine is None or kept_look is None:
            return UNREADABLE
        if shas[row] not in kinds:
            kinds[shas[row]] = " + ".join(edit_kind(kept_look, mine))
        return kinds[shas[row]]

    members = [_member(index, kept_row, kept_look, shas, KEPT, 1.0)]
    for row, mine in sorted(zip(rows, seen), key=lambda p: index.rels[p[0]]):
        if row != kept_row:
            members.append(_member(index, row, mine, shas, kind(row, mine), report.similarity(row, kept_row)))
    return DuplicateGroup(number, tuple(members), group.min_similarity, group.max_similarity)


def _member(index: LookalikeIndex, row: int, seen: Look | None, shas: list[str], kind: str,
            similarity: float) -> Member:
    return Member(row, index.rels[row], shas[row], seen.width if seen else 0, seen.height if seen else 0,
                  kind == KEPT, kind if seen or kind == SAME_FILE else UNREADABLE, similarity)


def write_export(analysis: Analysis, path: Path) -> Path:
    """Write the groups to `path`, as JSON or CSV by its suffix (atomically)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        write_json(path, analysis.to_json())
    elif suffix == ".csv":
        write_bytes(path, analysis.csv_text().encode("utf-8"))
    else:
        raise LookalikeError(f"export to a .json or .csv file, not {path.name!r}")
    return path


def write_exports(analysis: Analysis, folder: Path, stem: str = "duplicates") -> tuple[Path, Path]:
    """Both exports in `folder`: (stem.json, stem.csv)."""
    folder = Path(folder)
    return write_export(analysis, folder / f"{stem}.json"), write_export(analysis, folder / f"{stem}.csv")
