"""The app's explanations: the Evaluation and About tabs, and the test-split examples.

Paths shown on the page are relative to the app's folder: a public Space must not reveal where
its files live on the server.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from retrieval.attribution import read_attribution
from retrieval.errors import LibraryError
from retrieval.library import scan_split
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



def read_evaluation(index_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(index_dir) / EVALUATION).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def explain_winner(report: dict[str, Any]) -> str:
    """Which method wins on mAP, by how much, and why that kind of method wins."""
    methods = report.get("methods") or {}
    if not methods:
        return "The evaluation holds no methods."
    best, r = max(methods.items(), key=lambda kv: kv[1]["map"])
    chance = report["chance"]["map"]
    out = [f"**{best}** wins with mAP {r['map']:.3f} ({r['map'] / max(chance, 1e-9):.1f}× chance, {chance:.3f}); "
           f"its P@5 of {r['p@5']:.2f} means {r['p@5'] * 5:.1f} of the top 5 results share the query's class on average."]
    pixel = {n: v for n, v in methods.items() if n.startswith("pixel-")}
    size = report.get("pixel_size", "?")
    if not best.startswith("pixel-") and pixel:
        bp, bv = max(pixel.items(), key=lambda kv: kv[1]["map"])
        out.append(
            f"The best pixel metric, {bp}, reaches {bv['map']:.3f}, so the deep features are "
            f"{r['map'] / max(bv['map'], 1e-9):.1f}× better. Pixels compare the colour at each position of a "
            f"{size}×{size} thumbnail: a photo matches others with similar colours and layout, whatever they show. "
            f"Deep features ({report.get('model')}) describe shapes, textures and object parts learned from "
            "millions of photos, so two different photos of the same kind of thing land close together.")
    else:
        metric = best.split("-")[-1]
        out.append(f"Among pixel metrics {metric} does best here: it {METRIC_WHY.get(metric, '')}. "
                   "An index built with a deep model (`--model effnet` or CLIP) does far better.")
    for name, v in methods.items():
        if "-hnsw-" in name:
            exact = name.replace("-hnsw-", "-")
            if exact in methods:
                out.append(f"{name} (Chroma's approximate HNSW graph) scores {v['map']:.3f} against "
                           f"{methods[exact]['map']:.3f} for exact {exact}: at this library size it finds "
                           "(almost) the same neighbours.")
                break
    return "\n\n".join(out)


def evaluation_markdown(index: LookalikeIndex) -> str:
    from retrieval.evaluate import format_table
    report = read_evaluation(index.index_dir)
    if report is None:
        return (f"No `{EVALUATION}` in the index folder. Write it with "
                f"`python -m retrieval evaluate --index {shown_path(index.index_dir)} --save` "
                "(or rebuild the index without `--no-eval`).")
    return (f"Every test image is a query against the train library; a result is relevant when it has "
            f"the query's class. P@k is the share of relevant results in the top k; mAP averages precision "
            f"over the whole ranking. Computed when the index was built (`{EVALUATION}`).\n\n"
            f"{format_table(report)}\n\n{explain_winner(report)}")


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
            f"Per-image credits (author, licence, original file) are in `{ATTRIBUTION}` and `{ATTRIBUTION_MD}` "
            f"in the library folder.{note}")


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key} ({n})" for key, n in counter.most_common()) or "unknown"


def about_markdown(index: LookalikeIndex, test_counts: Counter) -> str:
    m = index.manifest
    train = Counter(m.labels)
    rows = "\n".join(f"| {c} | {train[c]} | {test_counts.get(c, 0)} |" for c in sorted(set(train) | set(test_counts)))
    credits = credits_markdown(index.data_dir)
    emb = m.embedder
    model = (f"`{emb['spec']}`: {emb['dim']}-d vectors, "
             f"{'with' if emb.get('has_text') else 'no'} text encoder" if emb else "none (pixel-only index)")
    chroma = f"Chroma collections `{m.chroma['prefix']}-*` ({m.chroma['mode']})" if m.chroma else "no Chroma collections"
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items())
    build_model = emb["source"] if emb else "none"
    return f"""### Library
{len(m.items)} library (train) images in {len(train)} classes, {sum(test_counts.values())} test images used as examples and queries.

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
```
python build_index.py sample --out data            # the offline sample library (or your own data/train/<class>/*)
python build_index.py index --data data --index index --model {build_model}
python app.py --index index
```
Re-running `index` re-embeds only new or changed images. Methods: {', '.join(f'`{x}`' for x in index.methods)}."""


def test_examples(data_dir: Path) -> tuple[list[str], Counter]:
    """Test-split images (paths) for gr.Examples, and their class counts."""
    try:
        items = scan_split(data_dir, "test")
    except LibraryError as exc:
        log.info("no examples: %s", exc)
        return [], Counter()
    return [str(it.path(data_dir)) for it in items], Counter(it.label for it in items)

