"""The Duplicates tab: groups of near-duplicates in the library, with thumbnails, how alike each copy
is to the kept image and what kind of copy it is, and the groups as JSON and CSV downloads.

A "Find near-duplicates" button and a threshold slider (starting at the measured default for the
index's features, retrieval.duplicates) give a summary line and one gallery per group (at most
MAX_GROUPS; the summary says how many more the export holds). The groups come from what the index
stores; only the shown groups' images are read, to tell the kept image (the largest) and the kind
of each copy (retrieval.duplicate_groups); the export reads every group's.

The page never moves or deletes a file: a web visitor is not the library's owner. It says, in
words, that the owner can move the copies aside from the command line (and undo it).

Endpoints: /duplicates (threshold -> summary, then a (title, gallery) pair per group slot) and
/duplicates_export (threshold -> the two files, a note). `DuplicateFinder` is the plain handler.
"""
from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from retrieval.duplicate_groups import Analysis, DuplicateGroup, analyse, write_exports
from retrieval.duplicates import check_threshold, default_threshold, feature_kind, find_duplicates
from retrieval.errors import LookalikeError
from retrieval.search import LookalikeIndex

from .handlers import user_errors

MAX_GROUPS = 30                      # groups shown on the page; the export holds them all
THRESHOLD_MIN, THRESHOLD_STEP = 0.5, 0.01
CACHED = 4                           # analyses kept (by threshold and extent), newest last
OWNER_NOTE = ("Nothing is moved or deleted from this page. Whoever runs this app can move all but one image of "
              "each group out of the library from the command line, and undo that.")


def features_text(kind: str) -> str:
    return "perceptual hash of the pixels" if kind == "phash" else kind


@dataclass(frozen=True)
class GroupView:
    """One group as the page shows it: a title line and the gallery's (library path, caption) items."""

    title: str
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class DuplicatesPage:
    summary: str
    groups: list[GroupView]


def caption(member_kind: str, similarity: float, size: str) -> str:
    """"kept · 1200×800" for the kept image, "resized · 0.97" for a copy."""
    return f"kept · {size}" if member_kind == "kept" else f"{member_kind} · {similarity:.2f}"


class DuplicateFinder:
    """The tab's handler over one opened index: plain values in and out, testable without a server.
    Searches are cached by threshold, so exporting what the page shows does not search again."""

    def __init__(self, index: LookalikeIndex) -> None:
        self.index = index
        self.features = feature_kind(index)
        self.default_threshold = default_threshold(self.features)
        self._lock = threading.Lock()
        self._cache: dict[tuple[float, bool], Analysis] = {}
        self._exports: tempfile.TemporaryDirectory[str] | None = None

    def threshold(self, value: Any) -> float:
        """The slider's value as a threshold (the default when empty); a bad value is refused."""
        if value is None or value == "":
            return self.default_threshold
        try:
            t = float(value)
        except (TypeError, ValueError):
            raise LookalikeError("the threshold is a number from 0 (exclusive) to 1") from None
        if not math.isfinite(t):
            raise LookalikeError("the threshold is a number from 0 (exclusive) to 1")
        return round(check_threshold(t), 4)

    def analysis(self, value: Any, complete: bool = False) -> Analysis:
        """The groups at a threshold: the first MAX_GROUPS analysed, or (complete) all of them."""
        t = self.threshold(value)
        with self._lock:
            cached = self._cache.get((t, complete)) or (self._cache.get((t, True)) if not complete else None)
            if cached is None:
                report = find_duplicates(self.index, t)
                cached = analyse(self.index, report, None if complete else MAX_GROUPS)
                self._cache[(t, complete)] = cached
                while len(self._cache) > CACHED:
                    self._cache.pop(next(iter(self._cache)))
            return cached

    def page(self, value: Any) -> DuplicatesPage:
        a = self.analysis(value)
        return DuplicatesPage(summary_line(a), [self.view(g) for g in a.groups[:MAX_GROUPS]])

    def view(self, group: DuplicateGroup) -> GroupView:
        """A group's title and gallery items; a member that cannot be read now is named, not shown."""
        items = [(str(self.index.paths[m.row]), caption(m.kind, m.similarity, m.size))
                 for m in group.members if m.kind != "unreadable" and self.index.paths[m.row].is_file()]
        missing = len(group.members) - len(items)
        sim = (f"{group.min_similarity:.2f}" if group.min_similarity == group.max_similarity
               else f"{group.min_similarity:.2f}–{group.max_similarity:.2f}")
        title = (f"**Group {group.number}** · {len(group.members)} images · similarity {sim} · kept: "
                 f"{group.kept.rel}" + (f" · {missing} not readable now" if missing else ""))
        return GroupView(title, items)

    def export(self, value: Any) -> tuple:
        """(the JSON and CSV files of every group, in a folder of this app's own; a note for the page)."""
        a = self.analysis(value, complete=True)
        with self._lock:
            if self._exports is None:
                self._exports = tempfile.TemporaryDirectory(prefix="lookalike-duplicates-")
            folder = Path(self._exports.name) / f"{a.features}-{a.threshold:.4f}"
        stem = f"near-duplicates-{a.features}-{a.threshold:.2f}"
        paths = write_exports(a, folder, stem)
        note = (f"{_count(a.total_groups, 'group')} ({_count(a.images_in_groups, 'image')}) exported: one row per "
                "image in the CSV, with its group, whether it is kept, its kind and its similarity to the kept image.")
        return [str(p) for p in paths], note

    def outputs(self, value: Any) -> tuple:
        """The tab's outputs: the summary, then a (title, gallery) pair per slot, hidden when unused."""
        page = self.page(value)
        pairs: list[Any] = []
        for i in range(MAX_GROUPS):
            if i < len(page.groups):
                view = page.groups[i]
                pairs += [gr.Markdown(view.title, visible=True), gr.Gallery(view.items, visible=True)]
            else:
                pairs += [gr.Markdown("", visible=False), gr.Gallery(None, visible=False)]
        return (page.summary, *pairs)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word if n == 1 else word + 's'}"


def summary_line(a: Analysis) -> str:
    """"3 groups, 11 images; features: effnet, threshold 0.84", or that there are none."""
    what = f"features: {features_text(a.features)}, threshold {a.threshold:.2f}"
    if not a.total_groups:
        return (f"**No near-duplicates** among the {_count(a.images, 'image')} of this library ({what}): "
                "no two images are that alike.")
    line = f"**{_count(a.total_groups, 'group')}, {_count(a.images_in_groups, 'image')}**; {what}."
    if a.total_groups > MAX_GROUPS:
        line += f" The first {MAX_GROUPS} are shown; the export holds all {a.total_groups}."
    return line + " Each group's kept image is its largest."


def duplicates_tab(index: LookalikeIndex) -> None:
    """The tab's components and events, inside the caller's `with gr.Tab(...)`."""
    finder = DuplicateFinder(index)
    gr.Markdown("Groups of near-duplicates: the same photo resized, recompressed, cropped or brightened, or "
                "the very same file twice. Each copy is captioned with its kind and its similarity to the "
                f"group's kept image. {OWNER_NOTE}", elem_id="dup-intro")
    with gr.Row():
        threshold = gr.Slider(THRESHOLD_MIN, 1.0, value=finder.default_threshold, step=THRESHOLD_STEP,
                              label="Similarity threshold", scale=3, elem_id="dup-threshold",
                              info=f"Measured default for {features_text(finder.features)}: "
                                   f"{finder.default_threshold:.2f}. Lower finds more, and more mistakes.")
        find = gr.Button("Find near-duplicates", variant="primary", scale=1, elem_id="dup-find")
    summary = gr.Markdown(elem_id="dup-summary")
    slots: list[gr.components.Component] = []
    for i in range(MAX_GROUPS):
        slots.append(gr.Markdown(visible=False, elem_id=f"dup-title-{i}"))
        slots.append(gr.Gallery(show_label=False, columns=6, object_fit="contain", visible=False, buttons=[],
                                elem_id=f"dup-group-{i}", elem_classes=["lk-gallery", "lk-grid"]))
    with gr.Row():
        export = gr.Button("Export the groups (JSON and CSV)", scale=1, elem_id="dup-export")
        files = gr.File(label="Exports", file_count="multiple", interactive=False, scale=2, height=110,
                        elem_id="dup-files")
    note = gr.Markdown(elem_id="dup-export-note")
    find.click(user_errors(finder.outputs), [threshold], [summary, *slots], api_name="duplicates")
    export.click(user_errors(finder.export), [threshold], [files, note], api_name="duplicates_export")
