"""The app's explanations: the Evaluation and About tabs, and the test-split examples.

Paths shown on the page are relative to the app's folder: a public Space must not reveal where
its files live on the server.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, Mapping, cast

from retrieval.attribution import read_attribution
from retrieval.errors import LibraryError, LookalikeError
from retrieval.evaluate import measured_on
from retrieval.evaluation_file import Report, best_method, load, problem
from retrieval.library import evaluation_skip_reason, file_sha256, inside_root, scan_split
from retrieval.methods import Method
from retrieval.records import EmbedderRecord
from retrieval.paths import ATTRIBUTION, ATTRIBUTION_MD, EVALUATION, PROJECT_ROOT
from retrieval.search import LookalikeIndex

log = logging.getLogger(__name__)

# Why a metric ranks as it does, in one clause (the Evaluation tab's explanation of a pixel winner).
METRIC_WHY = {
    "l1": "adds up absolute differences, so a few very different pixels weigh less than with L2",
    "l2": "averages squared differences, so large local differences dominate",
    "cosine": "compares the direction of the vectors, ignoring their overall scale (e.g. brightness)",
    "corr": "centres and scales each vector first, ignoring shifts in brightness and contrast",
}
# What a visitor reads where the evaluation is missing or unusable: who can fix it, in plain words
# (the page names no commands or flags: a visitor cannot run any; docs/evaluation.md has them).
EVALUATE_AGAIN = "Whoever runs this app can write it anew by evaluating the index again."
BEST_MARK = "★ best"   # the best row of a scores table (the Evaluation tab's winner sentence names it)


def read_evaluation(index_dir: Path) -> dict[str, Any] | None:
    """The index's evaluation report, or None when there is none or it is malformed (a hand edit,
    a Hub pull): the tab then says so (evaluation_problem) and the app starts all the same. As
    plain JSON: the tab reads it field by field (retrieval.evaluation_file reads and checks it)."""
    return load(index_dir).json


def evaluation_problem(report: Any) -> str | None:
    """What makes a parsed evaluation.json unusable, or None (retrieval.evaluation_file.problem)."""
    return problem(report)


def _malformed_note(why: str) -> str:
    return (f"_Note: `{EVALUATION}` in the index folder is malformed ({why}), so no scores are shown. "
            f"{EVALUATE_AGAIN} Search works all the same._")


def explain_winner(report: dict[str, Any]) -> str:
    """Which method wins on mAP, by how much, and why that kind of method wins."""
    methods = report.get("methods") or {}
    if not methods:
        return "The evaluation holds no methods."
    best, r = max(methods.items(), key=lambda kv: kv[1]["map"])
    chance = report["chance"]["map"]
    out = [f"**{best}** wins with mAP {r['map']:.3f} ({r['map'] / max(chance, 1e-9):.1f}× chance, {chance:.3f}); "
           f"its P@5 of {r['p@5']:.2f} means {r['p@5'] * 5:.1f} of the top 5 results share the query's class on average."]
    parsed = {n: _parsed(n) for n in methods}
    pixel = {n: v for n, v in methods.items() if _is_pixel(parsed[n])}
    size = report.get("pixel_size", "?")
    won = parsed[best]
    if won is not None and won.pixel:
        out.append(f"Among pixel metrics {won.metric} does best here: it {METRIC_WHY.get(won.metric, '')}. "
                   "An index built with a deep model (efficientnet-lite0 or CLIP) does far better.")
    elif pixel:
        bp, bv = max(pixel.items(), key=lambda kv: kv[1]["map"])
        out.append(
            f"The best pixel metric, {bp}, reaches {bv['map']:.3f}, so the deep features are "
            f"{r['map'] / max(bv['map'], 1e-9):.1f}× better. Pixels compare the colour at each position of a "
            f"{size}×{size} thumbnail: a photo matches others with similar colours and layout, whatever they show. "
            f"Deep features ({report.get('model')}) describe shapes, textures and object parts learned from "
            "millions of photos, so two different photos of the same kind of thing land close together.")
    for name, v in methods.items():
        method = parsed[name]
        if method is not None and method.hnsw:
            exact = str(method.exact())
            if exact in methods:
                out.append(f"{name} (Chroma's approximate HNSW graph) scores {v['map']:.3f} against "
                           f"{methods[exact]['map']:.3f} for exact {exact}: at this library size it finds "
                           "(almost) the same neighbours.")
                break
    return "\n\n".join(out)


def _parsed(name: str) -> Method | None:
    """A method name from evaluation.json; None for one outside the grammar (a hand edit), which the
    explanation then leaves out rather than failing the tab."""
    try:
        return Method.parse(name)
    except LookalikeError:
        return None


def _is_pixel(method: Method | None) -> bool:
    return method is not None and method.pixel


def evaluation_markdown(index: LookalikeIndex) -> str:
    """The Evaluation tab; a malformed evaluation.json gives a note there, never a failed start."""
    path = Path(index.index_dir) / EVALUATION
    try:
        raw = json.loads(path.read_text("utf-8")) if path.is_file() else None
    except (OSError, ValueError) as exc:
        return _malformed_note(f"not readable JSON: {type(exc).__name__}")
    problem = evaluation_problem(raw) if raw is not None else None
    if problem:
        return _malformed_note(problem)
    try:
        return _evaluation_markdown(index)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as exc:
        log.warning("malformed %s: %r", path, exc)
        return _malformed_note(f"{type(exc).__name__}: {exc}")


def _evaluation_markdown(index: LookalikeIndex) -> str:
    report = read_evaluation(index.index_dir)
    skip = evaluation_skip_reason(index.manifest.labels, index.rels, index.data_dir)
    if report is None and skip:
        head, _, why = skip.partition(": ")
        why = why.replace("<", "&lt;").replace(">", "&gt;")
        return (f"**{head[0].upper()}{head[1:]}.** {why[0].upper()}{why[1:]}.\n\n"
                "Search works all the same: every tab ranks the whole library.")
    if report is not None and report.get("protocol") == "kfold":   # labelled, but no test split
        return (f"This library has no test split, so every image is a query against the other "
                f"{report.get('folds', '?')} folds (class-stratified, seed {report.get('seed', '?')}); a result is "
                f"relevant when it has the query's class.\n\n{explain_winner(report)}\n\n{scores_table(report)}")
    if report is None:
        return f"No `{EVALUATION}` in the index folder: the index was built without its evaluation. {EVALUATE_AGAIN}"
    return kfold_markdown(report) + (
            f"### Test split as queries\n\nEvery test image is a query against the train library; a result is relevant when it has "
            f"the query's class. P@k is the share of relevant results in the top k; mAP averages precision "
            f"over the whole ranking. Computed when the index was built (`{EVALUATION}`).\n\n"
            f"{explain_winner(report)}\n\n{scores_table(report)}")


def kfold_markdown(report: dict[str, Any]) -> str:
    """The k-fold section (first: with every image a query, it holds where the test split is small)."""
    kfold = report.get("kfold") or {}
    if not kfold.get("methods"):
        return ""
    return (f"### {kfold['folds']}-fold: every image a query\n\nTrain and test are pooled and split into "
            f"{kfold['folds']} class-stratified folds (seed {kfold['seed']}); every image queries the other folds, "
            f"and re-ranking's library side is recomputed without the query's fold. With {kfold['queries']} queries "
            f"instead of {report['queries']}, the 95% intervals are narrow enough to rank methods.\n\n"
            f"{explain_winner(kfold)}\n\n{scores_table(kfold)}\n\n")


def best_name(scores: Mapping[str, Any]) -> str | None:
    """The method a report (or its k-fold part) scores best, as evaluation_file.best_method picks it
    (the first of equal scores); names outside the grammar (a hand edit) are not candidates."""
    parsed = [m for m in map(_parsed, scores.get("methods") or {}) if m is not None]
    best = best_method(cast(Report, scores), parsed)
    return None if best is None else str(best)


def scores_table(scores: Mapping[str, Any]) -> str:
    """A Markdown table, best mAP first, the best row in bold and marked; one number format per
    column (three decimals); chance last, then what was measured."""
    ks = [key for key in scores["chance"] if key.startswith("p@")]
    best = best_name(scores)
    lines = ["| method | " + " | ".join(k.upper() for k in ks) + " | mAP | 95% CI |",
             "|---|" + "---|" * (len(ks) + 2)]
    for name, r in sorted(scores["methods"].items(), key=lambda kv: -kv[1]["map"]):
        ci = f"{r['map_ci'][0]:.3f}–{r['map_ci'][1]:.3f}" if r.get("map_ci") else ""
        cells = [*(f"{r[k]:.3f}" for k in ks), f"{r['map']:.3f}", ci]
        if name == best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append(f"| {f'**{name}** {BEST_MARK}' if name == best else name} | " + " | ".join(cells) + " |")
    lines.append("| *chance* | " + " | ".join(f"{scores['chance'][k]:.3f}" for k in ks)
                 + f" | {scores['chance']['map']:.3f} | |")
    return "\n".join(lines) + f"\n\n{measured_on(scores)}"


def shown_path(path: Path) -> str:
    """A path as the page shows it: relative to the app's folder, never the server's absolute path."""
    path = Path(path)
    try:
        rel = os.path.relpath(path.resolve(), PROJECT_ROOT)
    except ValueError:   # another drive on Windows
        return path.name
    return path.name if rel.startswith("..") else Path(rel).as_posix()


def credits_markdown(data_dir: Path) -> str:
    """Sources and licences of the library, from its attribution file (one schema, retrieval.attribution)."""
    attribution = read_attribution(data_dir)
    note = f"\n\n_Note: {attribution.problem}_" if attribution.problem else ""
    if not attribution.records:
        return f"No readable `{ATTRIBUTION}` in the library folder, so sources and licences are not known here.{note}"
    return (f"**Sources:** {_counts(attribution.sources)}.\n\n**Licences:** {_counts(attribution.licences)}.\n\n"
            f"{_provenance_markdown(attribution.records)}"
            f"Per-image credits (author, licence, original file) are in `{ATTRIBUTION}` and `{ATTRIBUTION_MD}` "
            f"in the library folder.{note}")


def _provenance_markdown(records: list[dict]) -> str:
    """For a crawled library: the licence filter, the search terms and a few source links."""
    crawled = [r for r in records if r.get("url")]
    if not crawled:
        return ""
    filters = Counter(str(r.get("licence_filter", "unknown")) for r in crawled)
    terms = sorted({r["term"] for r in crawled if r.get("term")})
    shown = ", ".join(f"`{f}`" + (" (no filter: licences unknown)" if f == "none" else "") for f in filters)
    examples = "\n".join(f"- `{r.get('file', '?')}`: [image]({r['url']})"
                         + (f", [photo page]({r['page_url']})" if r.get("page_url") else "")
                         + (f", term *{r['term']}*" if r.get("term") else "") for r in crawled[:3])
    return (f"**Provenance:** {len(crawled)} images were crawled for {len(terms)} search "
            f"term{'s' if len(terms) != 1 else ''} with the licence "
            f"filter {shown}; each keeps its source URL, photo page and search term. For example:\n"
            f"{examples}\n\n")


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key} ({n})" for key, n in counter.most_common()) or "unknown"


def _library_line(items: list, train: Counter, test_counts: Counter) -> str:
    if not any(train):
        return (f"{len(items)} library images, unlabelled (a photo folder without class folders), so there is "
                "no evaluation; the examples are a few library images.")
    return (f"{len(items)} library (train) images in {len(train)} classes, {sum(test_counts.values())} test images "
            "used as examples and queries.")


def how_to_use(index: LookalikeIndex) -> str:
    """The About tab's first lines: what to do with the app, in four steps."""
    labelled = any(index.manifest.labels)
    tabs = ["Pixel metrics"] + (["Deep features"] if index.manifest.embedder else []) \
        + (["Text → image"] if index.has_text else [])
    frames = (" For an example query, a green frame marks a result of its class, a red frame another class."
              if labelled else "")
    evaluation = " **Evaluation** says which method wins on this library." if labelled else ""
    deep = index.manifest.embedder is not None
    refine = (" On **Deep features**, tick results as right or wrong and press *Refine*: the query moves toward "
              "the right ones, and the wrong ones leave the list; repeat as often as you like." if deep else "")
    return ("### How to use\n"
            "1. **Pick a query:** click one of the example images, or upload, paste or photograph your own.\n"
            f"2. **Search:** choose a tab ({', '.join(tabs)}) and a method, then press *Search*.{frames}\n"
            f"3. **Compare** runs every method on one query at once.{evaluation}\n"
            f"4. **Look closer:** click a result on the {'Pixel or Deep tab' if deep else 'Pixel tab'} to see *why* it matched: a heat map over "
            "both images of where the score comes from, and the formula with this pair's numbers." + refine
            + " The **Map** tab lays the whole library out flat" + (", pixels beside deep features" if deep else "")
            + ": similar images sit together, and *Place on map* shows where your query lands.")


def no_text_tab(embedder: EmbedderRecord | None) -> str:
    """Why the app has no Text tab, in one plain sentence ("" when its model has a text encoder)."""
    if embedder is not None and embedder.has_text:
        return ""
    model = embedder.spec.split(":")[1] if embedder and ":" in embedder.spec else (embedder.spec if embedder else "")
    built = (f"with {model}, which has no text encoder" if embedder
             else "with pixels only")
    return ("There is no Text tab because text search needs a CLIP index: this one was built "
            f"{built}, and whoever runs this app can rebuild it with CLIP.")


def about_markdown(index: LookalikeIndex, test_counts: Counter) -> str:
    """How to use the app (four lines, and why there is no Text tab where there is none), then the
    reference: the library, its credits, the model, the index and how it is rebuilt."""
    m = index.manifest
    train = Counter(m.labels)
    rows = "\n".join(f"| {c} | {train[c]} | {test_counts.get(c, 0)} |" for c in sorted(set(train) | set(test_counts)))
    if not any(train):   # an unlabelled library (a flat or nested photo folder)
        rows = f"| (unlabelled) | {len(m.items)} | {sum(test_counts.values())} |"
    credits = credits_markdown(index.data_dir)
    emb = m.embedder
    model = (f"`{emb.spec}`: {emb.dim}-d vectors, "
             f"{'with' if emb.has_text else 'no'} text encoder" if emb else "none (pixel-only index)")
    chroma = f"Chroma collections `{m.chroma.prefix}-*` ({m.chroma.mode})" if m.chroma else "no Chroma collections"
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items())
    build_model = f"with the same model (`{emb.spec}`)" if emb else "(pixels only, or with a model for deep search)"
    text = no_text_tab(emb)
    head = how_to_use(index) + (f"\n\n{text}" if text else "")
    return f"""{head}

### Library
{_library_line(m.items, train, test_counts)}

| class | library | test |
|---|---|---|
{rows}

{credits}

### Model
{model}. Pixel search compares {m.pixel_size}×{m.pixel_size} RGB thumbnails.

### Index
`{shown_path(index.index_dir)}` over the library `{shown_path(index.data_dir)}`: {len(m.items)} images, {chroma}.
Built with {versions}.

### Rebuild
When the library changes, whoever runs this app rebuilds the index {build_model} and restarts
the app; a rebuild re-embeds only new or changed images. The README's *Your own photos* section
says how. Methods: {', '.join(f'`{x}`' for x in index.methods)}."""


NO_TEST_SPLIT = "no test split: the example strip shows library images"
# Each strip is a gr.Examples, whose set-up time grows with the square of its size: Fashion-MNIST's
# 10,000 test images made three strips take 2.5 minutes of start-up. A larger test split is spread.
MAX_EXAMPLES = 100


@dataclass(frozen=True)
class ExampleStrip:
    """The examples the search tabs offer: image paths, what they are, and the test split's class counts."""

    paths: list[str]
    label: str
    test_counts: Counter


def example_images(index: LookalikeIndex) -> ExampleStrip:
    """Test-split images, else (a library without test/, e.g. a photo folder) a few library images;
    never a link out of the library, and one image of each set of exact copies (a duplicated photo
    would show twice)."""
    paths, counts = test_examples(index.data_dir)
    if paths:   # inside the library first: a link out is never read, not even to hash it
        inside = [p for p in paths if inside_root(p, index.data_dir)]
        return ExampleStrip(spread(distinct_files(spread(inside, 2 * MAX_EXAMPLES)), MAX_EXAMPLES),
                            "Test-split images", counts)
    log.info(NO_TEST_SPLIT)   # one plain line: a photo folder without test/ is normal, not an error
    return ExampleStrip([p for p in library_examples(index) if inside_root(p, index.data_dir)],
                        "Library images", counts)


def spread(paths: list[str], n: int) -> list[str]:
    """The paths as they are when there are at most n; else n of them taken in turn from each class
    folder, so that every class shows on the strip's first pages."""
    if len(paths) <= n:
        return paths
    by_class: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        by_class[Path(path).parent.name].append(path)
    turns = (p for group in zip_longest(*by_class.values()) for p in group if p is not None)
    return [p for _, p in zip(range(n), turns)]


def library_examples(index: LookalikeIndex, n: int = 10) -> list[str]:
    """A few library images, evenly spread over the distinct contents (the manifest's sha256: exact
    copies count once), as the examples of a library without a test split."""
    first: dict[str, Path] = {}
    for item, path in zip(index.manifest.items, index.paths):
        first.setdefault(item["sha256"], path)
    distinct = list(first.values())
    step = max(1, len(distinct) // n)
    return [str(p) for p in distinct[::step][:n]]


def distinct_files(paths: list[str]) -> list[str]:
    """The paths in order, leaving out each file whose bytes an earlier one holds; a file that
    cannot be read is kept (a click on it says why it fails)."""
    seen: set[str] = set()
    out = []
    for path in paths:
        try:
            sha = file_sha256(Path(path))
        except OSError:
            out.append(path)
            continue
        if sha not in seen:
            seen.add(sha)
            out.append(path)
    return out


def test_examples(data_dir: Path) -> tuple[list[str], Counter]:
    """Test-split images (paths) for gr.Examples, and their class counts; none without a test split
    (said at DEBUG: a folder without test/ is a normal library, and example_images says it in one line)."""
    try:
        items = scan_split(data_dir, "test")
    except LibraryError as exc:
        log.debug("no test-split examples: %s", exc)
        return [], Counter()
    return [str(it.path(data_dir)) for it in items], Counter(it.label for it in items)
