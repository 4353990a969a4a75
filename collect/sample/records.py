"""The sample library's attribution: one record per image (ATTRIBUTION.json) and its Markdown summary."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from retrieval.attribution import licence_id, make_record
from retrieval.paths import ATTRIBUTION

from .sources import GCOMPRIS_PACKAGE, TUXPAINT_PACKAGE, Candidate


def records(selected: list[Candidate], split_of: dict[str, str]) -> list[dict]:
    """One attribution record per image, sorted by file: who made it, under which licence, from where.
    `original_sha256` lets the next run notice a picture that changed upstream."""
    out = []
    for cand in selected:
        split = split_of[cand.name]
        credit = cand.credit
        fields: dict[str, Any] = {
            "file": f"{split}/{cand.cls}/{cand.name}.jpg", "class": cand.cls, "split": split,
            "original": cand.original,
            "author": credit.get("copyright"),
            "page_url": credit.get("source"),
            "licence_stated": credit.get("licence"),
            "comment": credit.get("comment"),
            "note": credit.get("note"),
            **cand.extra,
            "credits_from": credit.get("credits_from"),
            "original_sha256": cand.digest,
        }
        out.append(make_record(source=cand.package, licence=licence_id(credit.get("licence", "")), **fields))
    out.sort(key=lambda r: r["file"])
    return out


def attribution_md(records: list[dict], summary: dict) -> str:
    """ATTRIBUTION.md: where the pictures come from, what was done to them, and the credits by licence."""
    by_pkg = Counter(r["source"] for r in records)
    by_lic = Counter(r["licence"] for r in records)
    authors: dict[str, set[str]] = defaultdict(set)
    for r in records:
        authors[r["licence"]].update(p.strip() for p in r.get("author", "").split(";") if p.strip())
    lines = [
        "# Sample library: attribution",
        "",
        f"{len(records)} images in {len(summary['classes'])} classes, built offline by "
        "`python build_index.py sample` from the Debian packages "
        f"`{GCOMPRIS_PACKAGE}` ({by_pkg[GCOMPRIS_PACKAGE]} images) and "
        f"`{TUXPAINT_PACKAGE}` ({by_pkg[TUXPAINT_PACKAGE]} images).",
        "The pictures were resized (longer side at most "
        f"{summary['params']['max_side']} px), transparent cut-outs were flattened onto white, and all "
        "were re-encoded as JPEG.",
        "",
        f"`{ATTRIBUTION}` has one record per image: file, class, split, source (the Debian package), "
        "licence id, original file, author (the copyright holder), the licence as the package states it, "
        "the upstream page where there is one and the file the credit was read from.",
        "GCompris credits come from the README inside each bundle folder; Tux Paint stamps carry the "
        "package licence from its debian/copyright.",
        "",
        "| licence | images |",
        "|---|---|",
        *[f"| {lic} | {n} |" for lic, n in sorted(by_lic.items(), key=lambda kv: (-kv[1], kv[0]))],
        "",
        "## Credits by licence",
        "",
    ]
    for lic in sorted(authors):
        lines.append(f"- **{lic}**: " + "; ".join(sorted(authors[lic])))
    return "\n".join(lines) + "\n"
