"""Who made each sample picture: GCompris README credits and Debian copyright files.

GCompris keeps per-folder README files in a Debian-copyright-like shape, but loosely written; the
packages' own `debian/copyright` gives the licence of everything without a per-file credit.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

from ..qrc import QrcBundle

log = logging.getLogger(__name__)

Credit = dict[str, str]
CreditCache = dict[tuple[str, str], dict[str, Credit]]   # (bundle, README path) -> {file: credit}

_CREDIT_KEYS = {
    "copyright": "copyright", "license": "licence", "licence": "licence", "source": "source",
    "files": "files", "file": "files", "comment": "comment", "comments": "comment",
    "author": "copyright", "authors": "copyright",
}
_KEY_LINE = re.compile(r"^([A-Za-z]+):\s*(.*)$")
_FILE_NAME = re.compile(r"[\w./-]+\.(?:webp|svg|png|jpe?g|gif|ogg|oga|wav|qml|js)", re.IGNORECASE)
_FIELD_LINE = re.compile(r"^([A-Za-z-]+):\s*(.*)$")


def parse_credits(text: str) -> dict[str, Credit]:
    """Parse a GCompris README (Debian-copyright-like blocks) into {file path: credit}.

    Tolerates what the real files do: file lists on the `Files:` line or below it, multi-line
    copyright holders, `Comment`/`Comments`, and blocks whose file names follow `License:` with no
    `Files:` key at all.
    """
    out: dict[str, Credit] = {}
    block: dict[str, list[str]] = {}
    files: list[str] = []
    last = ""

    def flush() -> None:
        nonlocal block, files, last
        if files:
            credit = {k: "; ".join(v) if k == "copyright" else " ".join(v) for k, v in block.items() if v}
            for name in files:
                out[name] = credit
        block, files, last = {}, [], ""

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            flush()
            continue
        m = _KEY_LINE.match(line)
        key = _CREDIT_KEYS.get(m.group(1).lower()) if m else None
        if m and key:
            if key == "copyright" and files and "copyright" in block:
                flush()  # a new credit without a blank line in between
            value = m.group(2).strip()
            last = key
            if key == "files":
                files.extend(_FILE_NAME.findall(value))
            else:
                block.setdefault(key, [])
                if value:
                    block[key].append(value)
        elif _FILE_NAME.fullmatch(line):
            files.append(line)
        elif last and last != "files":
            block[last].append(line)
    flush()
    return out


def _fields(paragraph: str) -> dict[str, list[str]]:
    """{lower-case field: its lines} of one paragraph of a Debian copyright file."""
    fields: dict[str, list[str]] = {}
    last = ""
    for line in paragraph.splitlines():
        m = _FIELD_LINE.match(line)
        if m:
            last = m.group(1).lower()
            fields[last] = [m.group(2).strip()] if m.group(2).strip() else []
        elif last and line.strip() and line.strip() != ".":
            fields[last].append(line.strip())
    return fields


def package_credit(copyright_file: Path, package: str, defaults: Mapping[str, str]) -> Credit:
    """The `Files: *` paragraph of a Debian machine-readable copyright file; `defaults` (copyright,
    licence) when the file is absent (docs are often stripped in containers)."""
    credit = dict(defaults)
    try:
        text = copyright_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        log.warning("%s not found; using the %s licence known to this code (%s)",
                    copyright_file, package, credit["licence"])
        credit["credits_from"] = "built-in default (debian/copyright missing)"
        return credit
    for para in re.split(r"\n\s*\n", text):
        fields = _fields(para)
        if fields.get("files") == ["*"]:
            if fields.get("copyright"):
                credit["copyright"] = "; ".join(fields["copyright"])
            if fields.get("license"):
                credit["licence"] = fields["license"][0]
            break
    credit["credits_from"] = str(copyright_file)
    return credit


def find_credit(bundle: QrcBundle, internal: str, cache: CreditCache,
                alias: str | None = None) -> tuple[Credit | None, str]:
    """The README credit for a file: the nearest README in its folder or above that names it
    (or names `alias`, the README's own spelling, relative to the README's folder)."""
    parts = internal.split("/")
    for depth in range(len(parts) - 1, 3, -1):  # stop at gcompris/src/activities/<activity>
        folder = "/".join(parts[:depth])
        readme = f"{folder}/README"
        key = (bundle.name, readme)
        if key not in cache:
            text = bundle.read(readme).decode("utf-8", "replace") if readme in bundle else ""
            cache[key] = parse_credits(text)
        for rel in ("/".join(parts[depth:]), alias):
            if rel and rel in cache[key]:
                return cache[key][rel], readme
    return None, ""
