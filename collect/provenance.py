"""Provenance of crawled images: where each came from, under which licence filter, for which term.

The crawler writes a sidecar beside urls.json (`<urls>.provenance.json`): for each photo URL, its
photo page (when the search result links one) and term, plus the search URL template and the
licence filter it asked for. Then every stage carries it forward next to the images, in the one
attribution schema (`retrieval.attribution`, ATTRIBUTION.json):

    crawl -> urls.provenance.json -> download: raw/ATTRIBUTION.json (file = raw path)
          -> clean: clean/ATTRIBUTION.json -> split: data/ATTRIBUTION.json -> Hub columns, About tab

Each record: source (the search site's host), licence (the filter's meaning, e.g.
"CC/PD:flickr-license=1,2,3,4,5,6,9,10", since the search page says only that the photo is under
one of those licences), licence_filter (the ids, or "none"), url (the image), page_url, term,
class, file.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from retrieval.atomic import write_json
from retrieval.attribution import make_record, read_attribution, write_attribution

log = logging.getLogger(__name__)

SCHEMA = 1
# Flickr licence ids: 1-6 the Creative Commons 2.0 licences (BY-NC-SA, BY-NC, BY-NC-ND, BY, BY-SA,
# BY-ND), 9 CC0 1.0, 10 the Public Domain Mark. 0 is "all rights reserved"; 7 ("no known copyright
# restrictions") and 8 ("United States Government work") are left out: neither is a licence.
DEFAULT_LICENCES = "1,2,3,4,5,6,9,10"
NO_FILTER = "none"


def provenance_path(urls_path: Path) -> Path:
    """The sidecar of a urls.json: urls.json -> urls.provenance.json."""
    urls_path = Path(urls_path)
    return urls_path.with_name(urls_path.stem + ".provenance.json")


def licence_text(licences: str | None) -> str:
    """The licence a record states for a crawled image: the filter it was found under."""
    if not licences or licences == NO_FILTER:
        return "unknown:no-licence-filter"
    return f"CC/PD:flickr-license={licences}"


def read_provenance(urls_path: Path) -> dict[str, Any]:
    path = provenance_path(urls_path)
    try:
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, dict) and isinstance(data.get("photos"), dict):
            return data
        log.warning("%s is not a provenance file; ignoring it", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
    return {"schema": SCHEMA, "photos": {}}


def write_provenance(urls_path: Path, *, search_url: str, licences: str | None,
                     photos: Mapping[str, Mapping[str, str | None]]) -> None:
    """Merge `photos` ({url: {page_url, term, category, search_page}}) into the sidecar, atomically."""
    data = read_provenance(urls_path)
    data.update({"schema": SCHEMA, "search_url": search_url, "licence_filter": licences or NO_FILTER})
    data["photos"].update({u: dict(p) for u, p in photos.items()})
    write_json(provenance_path(urls_path), data)


def _record(item: Mapping[str, Any], photo: Mapping[str, Any], default_filter: str) -> dict:
    url = item["url"]
    licences = photo.get("licence_filter") or default_filter
    label: dict[str, Any] = {"class": item.get("term")}   # `class` is a keyword: passed as **label
    return make_record(source=urlsplit(photo.get("search_page") or url).hostname or "unknown",
                       licence=licence_text(licences), licence_filter=licences or NO_FILTER,
                       url=url, page_url=photo.get("page_url"), term=item.get("term"),
                       file=item["file"], **label)


def write_raw_attribution(raw_dir: Path, urls_path: Path) -> int:
    """raw/ATTRIBUTION.json from the download manifest (every stored file and its URL) and the
    crawl's provenance sidecar. Returns the number of records."""
    raw_dir = Path(raw_dir)
    try:
        items = json.loads((raw_dir / "manifest.json").read_text("utf-8")).get("items", [])
    except (OSError, ValueError, AttributeError):
        return 0
    prov = read_provenance(urls_path)
    default_filter = prov.get("licence_filter", NO_FILTER)
    records = []
    for item in items:
        if isinstance(item, dict) and item.get("status") == "ok" and item.get("file") and (raw_dir / item["file"]).is_file():
            records.append(_record(item, prov["photos"].get(item["url"], {}), default_filter))
    if records:
        write_attribution(raw_dir, records)
    log.info("provenance: %d downloaded images recorded in %s", len(records), raw_dir / "ATTRIBUTION.json")
    return len(records)


def carry_attribution(src_dir: Path, dst_dir: Path, mapping: Mapping[str, str]) -> int:
    """Write dst/ATTRIBUTION.json for the files `mapping` ({dst rel: src rel}) from src's records.

    Nothing is written when src has no per-file records (the sample library writes its own)."""
    by_file = {r["file"]: r for r in read_attribution(Path(src_dir)).records if "file" in r}
    if not by_file:
        return 0
    records = []
    for dst_rel, src_rel in sorted(mapping.items()):
        rec = by_file.get(src_rel)
        if rec is not None:
            parts = dst_rel.split("/")
            extra = {"split": parts[0]} if len(parts) == 3 and parts[0] in ("train", "test") else {}
            records.append({**rec, **extra, "file": dst_rel})
    write_attribution(Path(dst_dir), records)
    return len(records)
