"""Scanning a library: any folder of images, with or without class folders.

Accepted layouts (detected in this order; `describe()` gives the one-line log of which was found):
- `train/test split`: DATA/train/<class>/... (any depth below the class folder), plus an optional
  DATA/test/<class>/... whose images are the evaluation queries (and the app's examples).
- `class folders`: two or more top-level folders holding images and no loose images at the top:
  each top-level folder is a class (DATA/bird/..., DATA/fish/...).
- `flat folder` / `nested folders`: anything else (DATA/*.jpg, DATA/2023/summer/*.jpg, a mix):
  the images have no class, so there is nothing to evaluate.

The scan only lists files (cheap); decoding happens once, at index time, where an unreadable file
is reported and skipped. What is never indexed, and why:
- hidden files and folders (".thumbnails", ".git"), and files whose extension we do not read;
- the index folder (and anything else passed as `exclude`) when it sits inside the library;
- symbolic links: a symlinked folder is never followed (a link can loop, and can lead anywhere),
  and a symlinked file is followed only when its resolved target is inside the library root
  (`inside_root`). So nothing outside the library root is ever indexed or served;
- files whose name is not valid UTF-8 (a manifest, Chroma and JSON need text): reported by a
  printable form of the name (`printable`), with the advice to rename them; the rest is indexed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import LibraryError, LookalikeError, Remedy
from .images import IMAGE_EXTENSIONS, is_image_name
from .paths import DEFAULT_DATA

log = logging.getLogger(__name__)

SPLIT_LAYOUT = "train/test split"
CLASS_LAYOUT = "class folders"
FLAT_LAYOUT = "flat folder"
NESTED_LAYOUT = "nested folders"
LABEL_MODES = ("auto", "folders", "none")
ACCEPTED_LAYOUTS = (
    "A library is any folder of images (" + ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)) + "): "
    "flat (DIR/*.jpg), nested folders of any depth (DIR/**/*.jpg; with two or more top-level folders "
    "and no loose images, each top-level folder is a class), or DIR/train/<class>/ with an optional "
    "DIR/test/<class>/ whose images become the evaluation queries."
)


class NothingToEvaluate(LookalikeError):
    """The library has no usable queries (no readable test image, or fewer than 2 classes for
    k-fold): raised by the protocols when called directly (evaluate_index, evaluate_kfold).
    retrieval.evaluate.run, which the build and `evaluate` use, reports these cases instead."""


@dataclass(frozen=True)
class LibraryItem:
    """One image: its path relative to the data root (posix, stable across machines) and class
    ("" in an unlabelled library)."""

    rel: str
    label: str

    def path(self, root: Path) -> Path:
        return root / self.rel


@dataclass
class Library:
    """What a scan found: the library images, the test-split queries, the layout and what was skipped."""

    root: Path
    layout: str
    items: list[LibraryItem]
    queries: list[LibraryItem] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)   # {"path": printable, "reason": ...}

    @property
    def labelled(self) -> bool:
        return any(it.label for it in self.items)

    def describe(self) -> str:
        classes = len({it.label for it in self.items if it.label})
        what = f"{classes} classes" if classes else "no classes (unlabelled)"
        test = f", {len(self.queries)} test images" if self.layout == SPLIT_LAYOUT else ""
        return f"library {self.root}: {self.layout} layout, {len(self.items)} images, {what}{test}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inside_root(path: Path | str, root: Path | str) -> bool:
    """True when `path`, with every symbolic link resolved, lies inside `root` (resolved too).

    The one symlink check of the project: the library scan, the index build, the cleaner and the
    app's file serving all ask it, so a link that leaves the library is refused everywhere alike."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False


def printable(name: str) -> str:
    """A name as text that can always be shown and stored: bytes that are not UTF-8 (which Python
    carries as surrogate escapes) become backslash escapes such as \\xff."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _walk(top: Path, root: Path, exclude: set[str], skipped: list[dict[str, str]]) -> tuple[list[str], int]:
    """Library-relative posix paths of the images under `top` (sorted), and how many other files
    were ignored. Applies the rules of the module docstring."""
    rels: list[str] = []
    ignored = 0
    real_root = os.path.realpath(root)

    def skip(path: str, reason: str, kind: str | None = None) -> None:
        skipped.append(skip_record(Path(os.path.relpath(path, root)).as_posix(), reason, kind))

    def unlistable(exc: OSError) -> None:   # os.walk drops a folder it cannot list unless told
        why = os_reason(exc)
        skip(exc.filename or str(top), f"cannot list folder ({why}): its images are not indexed",
             f"cannot list folder ({why})")

    for dirpath, dirnames, filenames in os.walk(top, onerror=unlistable, followlinks=False):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d.startswith("."):
                continue
            if os.path.islink(full):
                skip(full, "symbolic link to a folder: not followed (links can loop or leave the library)")
            elif os.path.realpath(full) in exclude:
                log.info("skipping %s: it is the index folder", full)
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            if f.startswith("."):
                continue
            if not is_image_name(f):
                ignored += 1
                continue
            rel = Path(os.path.relpath(full, root)).as_posix()
            if not _valid_utf8(rel):
                skip(full, "the file name is not valid UTF-8; rename the file to index it")
            elif os.path.islink(full) and not Path(os.path.realpath(full)).is_relative_to(real_root):
                skip(full, "symbolic link to a file outside the library: not followed")
            elif (why := _not_a_file(full)) is not None:
                skip(full, *why)
            else:
                rels.append(rel)
    return sorted(rels), ignored


def _not_a_file(full: str) -> tuple[str, str] | None:
    """Why a listed name is not a regular file we can index, as (reason, kind), or None when it is.
    A stat that fails for want of permission says so: it is not a broken link."""
    try:
        st = os.stat(full)
    except PermissionError:
        return "permission denied (its details cannot be read)", "permission denied"
    except FileNotFoundError:
        if os.path.islink(full):
            return "broken symbolic link", "broken symbolic link"
        return "disappeared during the scan", "disappeared during the build"
    except OSError as exc:
        return f"cannot be read ({os_reason(exc)})", "cannot be read"
    return None if stat.S_ISREG(st.st_mode) else ("not a regular file", "not a regular file")


def _missing(root: Path, what: str) -> LibraryError:
    """The error for a missing or empty library: the accepted layouts, and the sample library only
    for someone who asked for the default library folder (the quick start's `data`)."""
    hint = ""
    try:
        if Path(root).resolve() == DEFAULT_DATA.resolve():
            hint = " To try Lookalike first, build the sample library there."
    except OSError:
        pass
    return LibraryError(f"{what}. {ACCEPTED_LAYOUTS}{hint}", remedy=Remedy.BUILD_SAMPLE if hint else None)


def _excluded(paths: Iterable[Path | str | None]) -> set[str]:
    return {os.path.realpath(p) for p in paths if p is not None}


def scan_split(root: Path, split: str = "train", *, exclude: Sequence[Path | str | None] = ()) -> list[LibraryItem]:
    """List DATA/<split>/<class>/... images in a stable (sorted) order; the class is the folder
    right below <split>. Raises LibraryError when the folder is missing or holds no images."""
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir() or split_dir.is_symlink():
        raise _missing(root, f"no library at {split_dir}: expected class folders {split_dir}/<class>/*.jpg")
    skipped: list[dict[str, str]] = []
    rels, ignored = _walk(split_dir, root, _excluded(exclude), skipped)
    _report(split_dir, ignored, skipped)
    items = [LibraryItem(r, r.split("/")[1] if r.count("/") >= 2 else "") for r in rels]
    if not items:
        raise _missing(root, f"the library {split_dir} is empty: no images in {split_dir}/<class>/")
    return items


def _report(where: Path, ignored: int, skipped: list[dict[str, str]]) -> None:
    if ignored:
        log.info("%s: ignored %d files that are not %s images", where, ignored,
                 "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)))
    if skipped:   # a bounded summary: a folder of 100,000 bad files must not log 100,000 lines
        log.warning("%s: %s", where, summarize_skips(skipped))


# Skipped files. Each record is {"path", "reason", "kind"}: `kind` is the short reason that the
# summaries count by. The kinds below mean the build could not *read* part of the library (it
# changed under the build, or access was refused): a rerun, or fixing the permissions, would index
# more, so the build exits with runner.DONE_WITH_SKIPS. Files that are not usable images (empty,
# corrupt, not an image, links not followed, bad names) are reported the same way but leave the
# exit code at 0: they are properties of the library, and a rerun gives the same answer.
UNREAD_KINDS = ("disappeared during the build", "changed during the build", "permission denied",
                "cannot be read", "cannot list folder")
SUMMARY_EXAMPLES = 3


def os_reason(exc: OSError) -> str:
    """An OSError as a short lower-case reason ("permission denied", "no such file or directory")."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()


def skip_kind(reason: str) -> str:
    """The short kind of a free-text reason: its head, before any detail, with numbers as N
    ("corrupt or truncated image (broken data stream ...)" -> "corrupt or truncated image")."""
    head = re.split(r" \(|[:;,]", reason, maxsplit=1)[0].strip()
    return re.sub(r"\d+", "N", head) or "unknown"


def skip_record(rel: str, reason: str, kind: str | None = None) -> dict[str, str]:
    """One skipped file, as the manifest keeps it (the path made printable)."""
    return {"path": printable(rel), "reason": reason, "kind": kind or skip_kind(reason)}


def is_unread(record: dict[str, str]) -> bool:
    """Was this file skipped because the build could not read it (see UNREAD_KINDS)?"""
    return str(record.get("kind") or "").startswith(UNREAD_KINDS)


def summarize_skips(skipped: Sequence[dict[str, str]], examples: int = SUMMARY_EXAMPLES) -> str:
    """One bounded line: the count per kind (most first), and a few examples of each kind."""
    kinds: dict[str, list[dict[str, str]]] = {}
    for s in skipped:
        kinds.setdefault(s.get("kind") or skip_kind(s.get("reason", "")), []).append(s)
    parts = []
    for kind, recs in sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:10]:
        shown = ", ".join(r["path"] for r in recs[:examples]) + (", ..." if len(recs) > examples else "")
        parts.append(f"{len(recs)} {kind} (e.g. {shown})")
    more = f"; and {len(kinds) - 10} other reasons" if len(kinds) > 10 else ""
    return f"skipped {len(skipped)} file{'' if len(skipped) == 1 else 's'}: " + "; ".join(parts) + more


def scan_library(root: Path, *, exclude: Sequence[Path | str | None] = (), labels: str = "auto") -> Library:
    """Scan any library folder (see the module docstring); `labels` is "auto" (detect), "folders"
    (the top-level folder is the class) or "none" (unlabelled)."""
    root = Path(root)
    if labels not in LABEL_MODES:
        raise LookalikeError(f"labels must be one of {', '.join(LABEL_MODES)}, not {labels!r}")
    if not root.is_dir():
        raise _missing(root, f"no library at {root}: the folder does not exist")
    skipped: list[dict[str, str]] = []
    excluded = _excluded(exclude)
    train = root / "train"
    if train.is_dir() and not train.is_symlink() and labels != "none":
        rels, ignored = _walk(train, root, excluded, skipped)
        items = [LibraryItem(r, r.split("/")[1] if r.count("/") >= 2 else "") for r in rels]
        queries: list[LibraryItem] = []
        test = root / "test"
        if test.is_dir() and not test.is_symlink():
            q_rels, q_ignored = _walk(test, root, excluded, skipped)
            ignored += q_ignored
            queries = [LibraryItem(r, r.split("/")[1] if r.count("/") >= 2 else "") for r in q_rels]
        layout = SPLIT_LAYOUT
    else:
        rels, ignored = _walk(root, root, excluded, skipped)
        tops = {r.split("/")[0] for r in rels if "/" in r}
        loose = any("/" not in r for r in rels)
        classes = labels == "folders" or (labels == "auto" and len(tops) >= 2 and not loose)
        layout = CLASS_LAYOUT if classes else (NESTED_LAYOUT if tops else FLAT_LAYOUT)
        items = [LibraryItem(r, r.split("/")[0] if classes and "/" in r else "") for r in rels]
        queries = []
    _report(root, ignored, skipped)
    if not items:
        where = train if layout == SPLIT_LAYOUT else root
        raise _missing(root, f"the library {where} is empty: no images found"
                       + (f" ({len(skipped)} skipped, see above)" if skipped else ""))
    return Library(root, layout, items, queries, skipped)


UNLABELLED = ("no evaluation for an unlabelled library: its images have no classes, so no result can be "
              "counted as right or wrong (put images in class folders, DIR/<class>/, to evaluate)")


def evaluation_protocol(labels: Sequence[str], rels: Sequence[str], data_dir: Path) -> tuple[str | None, str]:
    """How an index can be evaluated: ("test", "") with test-split queries, ("kfold", why) for a
    labelled library without a test split (every image a query against the other folds), or
    (None, why) for an unlabelled one. `labels` and `rels` are the index's own (manifest) rows."""
    if not any(labels):
        return None, UNLABELLED
    if not rels or not all(r.startswith("train/") for r in rels) or not (Path(data_dir) / "test").is_dir():
        return "kfold", (f"the library {data_dir} has no test split, so there are no test queries: "
                         "evaluated by k-fold over its labelled images instead")
    return "test", ""


def evaluation_skip_reason(labels: Sequence[str], rels: Sequence[str], data_dir: Path) -> str | None:
    """Why an index cannot be evaluated with test-split queries, or None when it can."""
    protocol, why = evaluation_protocol(labels, rels, data_dir)
    return None if protocol == "test" else why
