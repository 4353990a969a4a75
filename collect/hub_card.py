"""The Hub dataset's card (README.md): YAML metadata the Hub reads (licence, task, configs,
features) and the text a visitor reads (classes, counts, sources, the provenance columns).

The per-image provenance columns are defined here too, because the card documents them;
collect.hub fills them from data/ATTRIBUTION.json.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import yaml

from retrieval.attribution import read_attribution

log = logging.getLogger(__name__)

# Per-image provenance columns, from data/ATTRIBUTION.json ("" where a record does not say):
# source_url = the image's URL, page_url = its photo page, licence = the record's licence,
# licence_filter = the licence ids the crawl's search asked for ("none": no filter).
PROVENANCE_COLUMNS = {"source_url": "url", "page_url": "page_url", "licence": "licence",
                      "licence_filter": "licence_filter"}
HF_LICENSES = {  # normalised stated licence -> Hub licence id
    "cc0": "cc0-1.0", "cc0-1.0": "cc0-1.0", "cc-by-4.0": "cc-by-4.0", "cc-by-3.0": "cc-by-3.0",
    "cc-by-2.0": "cc-by-2.0", "cc-by-sa-4.0": "cc-by-sa-4.0", "cc-by-sa-3.0": "cc-by-sa-3.0",
    "cc-by-nc-4.0": "cc-by-nc-4.0", "gpl-2": "gpl-2.0", "gpl-2.0": "gpl-2.0", "gpl-3": "gpl-3.0",
    "gpl-3.0": "gpl-3.0", "mit": "mit", "apache-2.0": "apache-2.0", "pddl": "pddl",
}
CRAWLED_LICENCE_NOTE = (
    "The images were collected from public web search results (Flickr by default) by "
    "`python build_index.py crawl` and `download`. Each photo remains under its owner's "
    "licence, which this dataset does not change; check a photo's licence on its source "
    "page before reusing it outside research and teaching.")
PROVENANCE_NOTES = [
    "- `source_url`: the URL the image was downloaded from (empty for images that were not crawled).",
    "- `page_url`: the photo's page on the source site, where the search result linked one; "
    "its licence and author are stated there.",
    "- `licence`: the licence of the image's attribution record. For crawled images it is the "
    "search's licence filter, e.g. `CC/PD:flickr-license=1,2,3,4,5,6,9,10`: the photo is under one "
    "of those Creative Commons / public-domain licences (Flickr ids 1-6 CC 2.0, 9 CC0, 10 Public "
    "Domain Mark); check `page_url` for which one before reuse.",
    "- `licence_filter`: the licence ids the crawl asked the search page for (`none`: no filter, "
    "so the licence is unknown and may be all rights reserved).",
]

Attribution = tuple[Counter, Counter]   # (images per licence, images per source)


def class_names(dd: Any) -> list[str]:
    """The dataset's classes: the ClassLabel's names, else the sorted label values."""
    first = next(iter(dd.values()))
    label = first.features["label"]
    return list(label.names) if hasattr(label, "names") else sorted({str(x) for ds in dd.values() for x in ds["label"]})


def summarise_attribution(data_dir: Path) -> Attribution | None:
    """(images per licence, images per source) from data/ATTRIBUTION.json, if it has usable records."""
    attribution = read_attribution(Path(data_dir))
    if attribution.problem:
        log.warning("%s (in %s)", attribution.problem, data_dir)
    if not attribution.records:
        return None
    return attribution.licences, attribution.sources


def hub_license(licences: Iterable[str]) -> str:
    """The card's `license`: the Hub id when all images share one known licence, else 'other'."""
    ids = {HF_LICENSES.get(re.sub(r"[\s_]+", "-", str(x).strip().lower())) for x in licences}
    only = ids.pop() if len(ids) == 1 else None
    return only or "other"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _metadata(dd: Any, repo_id: str, classes: list[str], lic: str, mixed: bool) -> dict[str, Any]:
    """The card's YAML header, as the Hub's dataset viewer and `load_dataset` read it."""
    columns = next(iter(dd.values())).column_names
    return {
        "license": lic,
        **({"license_name": "mixed" if mixed else "flickr-photo-licences"} if lic == "other" else {}),
        "task_categories": ["image-classification"],
        "pretty_name": f"Lookalike library ({repo_id.split('/')[-1]})",
        "size_categories": [_size_category(sum(len(ds) for ds in dd.values()))],
        "tags": ["image-retrieval", "lookalike"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in dd]}],
        "dataset_info": {
            "features": [{"name": "image", "dtype": "image"},
                         {"name": "label", "dtype": {"class_label": {"names": {str(i): c for i, c in enumerate(classes)}}}},
                         {"name": "file", "dtype": "string"},
                         *[{"name": c, "dtype": "string"} for c in PROVENANCE_COLUMNS if c in columns]],
            "splits": [{"name": s, "num_examples": len(ds)} for s, ds in dd.items()],
        },
    }


def _sources(attribution: Attribution | None) -> list[str]:
    """The 'Sources and licences' section: counts from ATTRIBUTION.json, else the crawl's caveat."""
    if not attribution:
        return [CRAWLED_LICENCE_NOTE, ""]
    licences, sources = attribution
    return ["Summarised from `ATTRIBUTION.json` (per-image or per-data-set records, included in this repo):", "",
            "| licence | images |", "|---|---|", *[f"| {k} | {v} |" for k, v in licences.most_common()], "",
            "| source | images |", "|---|---|", *[f"| {k} | {v} |" for k, v in sources.most_common()], ""]


def dataset_card(dd: Any, repo_id: str, *, attribution: Attribution | None = None,
                 license: str | None = None) -> str:
    """README.md: YAML metadata (license, task, configs, features) plus classes, counts, sources."""
    classes = class_names(dd)
    per_class = {s: Counter(ds["label"]) for s, ds in dd.items()}
    total = sum(len(ds) for ds in dd.values())
    lic = license or (hub_license(attribution[0]) if attribution else "other")
    meta = _metadata(dd, repo_id, classes, lic, mixed=bool(attribution))
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {meta['pretty_name']}", "",
        f"An image-retrieval library for Lookalike: {total} images in {len(classes)} classes "
        f"({', '.join(f'{len(ds)} {s}' for s, ds in dd.items())}). Each image keeps its original bytes; "
        "`label` is the class, `file` the original file name.", "",
        "```python", "from datasets import load_dataset", f'ds = load_dataset("{repo_id}")', "```", "",
        f"Restore the folder layout `data/<split>/<class>/<file>` with "
        f"`python build_index.py pull --repo-id {repo_id} --data data`.", "",
        "## Classes", "", "| class | " + " | ".join(dd) + " |", "|---|" + "---|" * len(dd),
        *[f"| {c} | " + " | ".join(str(per_class[s][i]) for s in dd) + " |" for i, c in enumerate(classes)],
        "", "## Sources and licences", "", *_sources(attribution),
    ]
    if "source_url" in next(iter(dd.values())).column_names:
        lines += ["## Provenance columns", "", *PROVENANCE_NOTES, ""]
    return "\n".join(lines)
