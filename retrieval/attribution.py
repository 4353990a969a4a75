"""Where a library's images come from and under which licence: one schema, written and read here.

Every library writer (the sample library, Fashion-MNIST, the crawler) writes `ATTRIBUTION.json`
through `write_attribution`, and every reader (the app's About tab, the Hub dataset card) reads it
through `read_attribution`, so the file has one shape and one place where that shape is defined.

On disk: `{"schema": 1, "records": [record, ...]}`. A record says which images it covers and how
they may be used:

- `source` (required): where the images come from: a Debian package, "Fashion-MNIST", a crawl host.
- `licence` (required): a licence id ("CC-BY-SA-4.0", "MIT", "Public-Domain"); normalised by
  `licence_id` so that "CC-BY-SA 4.0" and "CC-BY-SA-4.0" count as one licence.
- `images` (>= 1; a record without it covers 1): how many images the record covers: 1 for a per-image record, the
  size of the data set for a record that covers a whole data set (Fashion-MNIST: one record, not
  70,000).
- optional text fields, see `FIELDS`: `file` (library-relative posix path), `class`, `split`,
  `author`, `credit`, `original` (original file or URL), `url`, `page_url`, `term`.
- other keys are kept as they are when their value is a plain JSON scalar (a writer's own
  bookkeeping, e.g. the sample library's `original_sha256`); readers that do not know them ignore them.

The reader also understands the files earlier versions wrote: a bare list of per-image sample
records (`package`, `licence_id`, `copyright`, `source` = upstream page) and Fashion-MNIST's dict
(`{"source": ..., "license": "MIT", "classes": [...]}`), and maps them onto this schema.

Core module: imports neither gradio nor `collect`.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .atomic import write_bytes, write_json
from .paths import ATTRIBUTION, ATTRIBUTION_MD

SCHEMA = 1
REQUIRED = ("source", "licence", "images")
FIELDS = ("file", "class", "split", "author", "credit", "original", "url", "page_url", "term")
# Key order in the written file: the per-image keys people look for first, then the rest.
_ORDER = ("file", "class", "split", "source", "licence", "images") + FIELDS[3:]
FASHION_MNIST_IMAGES = 70_000  # the whole published set: a legacy dict's count when no images are found
_MAX_REASONS = 3  # how many skipped records `problem` describes one by one


@dataclass
class Attribution:
    """The records of a library's ATTRIBUTION.json and what they add up to."""

    records: list[dict] = field(default_factory=list)
    licences: Counter = field(default_factory=Counter)  # images per licence id
    sources: Counter = field(default_factory=Counter)   # images per source
    problem: str | None = None  # why the file could not be read, or what in it was skipped

    @property
    def images(self) -> int:
        """How many images the records cover."""
        return sum(r["images"] for r in self.records)


def licence_id(stated: str) -> str:
    """A normalised licence name for counting ('CC-BY-SA 4.0' and 'CC-BY-SA-4.0' are one licence)."""
    s = re.sub(r"\s+", "-", stated.strip())
    s = re.sub(r"^GPLv", "GPL-", s, flags=re.IGNORECASE)
    if s.lower() in ("public-domain", "pd"):
        return "Public-Domain"
    return s or "unknown"


def _checked(fields: dict[str, Any]) -> dict:
    """The record in canonical key order, or ValueError saying which key is wrong."""
    rec = {k: v for k, v in fields.items() if v is not None and v != ""}
    for key in ("source", "licence"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise ValueError(f"no {key}" if key not in rec else f"{key} is not a non-empty text: {rec[key]!r}")
        rec[key] = rec[key].strip()
    rec["licence"] = licence_id(rec["licence"])
    images = rec.get("images", 1)
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a whole number >= 1, not {images!r}")
    rec["images"] = images
    for key in FIELDS:
        if key in rec and not isinstance(rec[key], str):
            raise ValueError(f"{key} must be text, not {type(rec[key]).__name__}")
    if "file" in rec:
        path = PurePosixPath(rec["file"])
        if "\\" in rec["file"] or path.is_absolute() or ".." in path.parts:
            raise ValueError(f"file must be a library-relative posix path, not {rec['file']!r}")
    for key, value in rec.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"{key!r} must be text or a number, not {type(value).__name__}")
    ordered = {k: rec[k] for k in _ORDER if k in rec}
    return {**ordered, **{k: v for k, v in rec.items() if k not in ordered}}


def make_record(*, source: str, licence: str, images: int = 1, **fields: Any) -> dict:
    """One attribution record; fields that are None (or empty) are left out.

    Raises ValueError for a record the reader would refuse (no source or licence, images < 1, a
    non-text optional field, a `file` outside the library), so a writer fails at once instead of
    writing a file whose records are later skipped. `class` is a keyword: pass it as **{"class": c}.
    """
    return _checked({"source": source, "licence": licence, "images": images, **fields})


def write_attribution(data_dir: Path, records: list[dict], *, markdown: str | None = None) -> None:
    """Write DATA/ATTRIBUTION.json (and DATA/ATTRIBUTION.md when `markdown` is given), atomically.

    Records are checked again (ValueError on a bad one); an existing ATTRIBUTION.md is left alone
    when `markdown` is None.
    """
    checked = []
    for i, rec in enumerate(records):
        try:
            checked.append(_checked(dict(rec)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"attribution record {i}: {exc}") from None
    write_json(Path(data_dir) / ATTRIBUTION, {"schema": SCHEMA, "records": checked})
    if markdown is not None:
        write_bytes(Path(data_dir) / ATTRIBUTION_MD, markdown.encode("utf-8"))


# --- reading -------------------------------------------------------------------------------------

def _from_legacy_item(item: dict) -> dict:
    """A record of the bare list the sample library used to write, mapped onto the schema.

    Old sample keys: `package` (now `source`), `licence_id` (now `licence`), `licence` (the stated
    text, now `licence_stated`), `copyright` (now `author`), `source` (the upstream page, now
    `page_url`). A list item already in the schema passes through unchanged.
    """
    rec = dict(item)
    if "package" in rec:
        upstream = rec.pop("source", None)
        rec["source"] = rec.pop("package")
        if upstream is not None:
            rec.setdefault("page_url", upstream)
    if "licence_id" in rec:
        stated = rec.pop("licence", None)
        rec["licence"] = rec.pop("licence_id")
        if stated is not None:
            rec.setdefault("licence_stated", stated)
    elif "licence" not in rec and "license" in rec:
        rec["licence"] = rec.pop("license")
    if "copyright" in rec and "author" not in rec:
        rec["author"] = rec.pop("copyright")
    return rec


def _count_images(data_dir: Path) -> int:
    """Files under DATA/<split>/<class>/ (for a legacy dict, which did not say how many it covers)."""
    n = 0
    for split in ("train", "test"):
        try:
            with os.scandir(Path(data_dir) / split) as classes:
                for cls in classes:
                    if cls.is_dir() and not cls.name.startswith("."):
                        with os.scandir(cls.path) as files:
                            n += sum(1 for f in files if f.is_file() and not f.name.startswith("."))
        except OSError:
            continue
    return n


def _from_legacy_dict(data: dict, data_dir: Path) -> dict:
    """Fashion-MNIST's old `{"source": <credit line>, "license": "MIT", "classes": [...]}`."""
    credit = data.get("source")
    source = "Fashion-MNIST" if isinstance(credit, str) and "fashion-mnist" in credit.lower() else credit
    return {"source": source, "licence": data.get("license", data.get("licence")), "credit": credit,
            "images": _count_images(data_dir) or FASHION_MNIST_IMAGES}


def _json_type(value: Any) -> str:
    names = {bool: "true/false", int: "number", float: "number", str: "string", list: "list",
             dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _parse(data: Any, data_dir: Path) -> tuple[list, list[str], bool]:
    """(raw records, problems, legacy list?) for each form the file may take."""
    if isinstance(data, list):
        return data, [], True
    if not isinstance(data, dict):
        return [], [f"it holds a JSON {_json_type(data)}, not an object with records"], False
    if "records" not in data:
        if ("license" in data or "licence" in data) and "source" in data:
            return [_from_legacy_dict(data, data_dir)], [], False
        return [], ["it is a JSON object without records"], False
    problems = []
    schema = data.get("schema")
    if schema != SCHEMA:
        newer = isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA
        problems.append(f"it was written by a newer version (schema {schema}); only the fields this "
                        "one knows are used" if newer else f"it has an unknown schema {schema!r}")
    records = data["records"]
    if not isinstance(records, list):
        return [], problems + [f"its records are a JSON {_json_type(records)}, not a list"], False
    return records, problems, False


def read_attribution(data_dir: Path) -> Attribution:
    """The attribution of the library in `data_dir`. Never raises.

    No file: an empty Attribution with `problem` None. A file that cannot be read, is not JSON or
    has the wrong shape: an empty Attribution whose `problem` says why. Records of the wrong shape
    are skipped and `problem` says which and why; the valid ones are kept and counted.
    """
    path = Path(data_dir) / ATTRIBUTION
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return Attribution()
    except (OSError, UnicodeDecodeError) as exc:
        return Attribution(problem=f"{ATTRIBUTION} could not be read ({exc})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Attribution(problem=f"{ATTRIBUTION} is not valid JSON ({exc.msg} at line {exc.lineno})")
    except (ValueError, RecursionError) as exc:
        return Attribution(problem=f"{ATTRIBUTION} is not valid JSON ({type(exc).__name__})")
    try:
        return _collect(data, data_dir)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; say what happened instead
        return Attribution(problem=f"{ATTRIBUTION} could not be interpreted ({type(exc).__name__}: {exc})")


def _collect(data: Any, data_dir: Path) -> Attribution:
    raw, problems, legacy = _parse(data, data_dir)
    records: list[dict] = []
    reasons: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            reasons.append(f"record {i} is a JSON {_json_type(item)}, not an object")
            continue
        try:
            records.append(_checked(_from_legacy_item(item) if legacy else item))
        except (ValueError, TypeError) as exc:
            reasons.append(f"record {i}: {exc}")
    if reasons:
        more = f"; and {len(reasons) - _MAX_REASONS} more" if len(reasons) > _MAX_REASONS else ""
        problems.append(f"{len(reasons)} of {len(raw)} records were skipped ("
                        + "; ".join(reasons[:_MAX_REASONS]) + more + ")")
    licences: Counter = Counter()
    sources: Counter = Counter()
    for rec in records:
        licences[rec["licence"]] += rec["images"]
        sources[rec["source"]] += rec["images"]
    problem = f"{ATTRIBUTION}: " + "; ".join(problems) if problems else None
    return Attribution(records=records, licences=licences, sources=sources, problem=problem)
