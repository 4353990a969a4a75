"""Which pictures the sample library holds: discovery in the two Debian packages, classes from
`collect/sample_classes.json`, then selection (readable, large enough, no duplicates, classes capped).

Nothing here writes: `plan_sample` returns the candidates, `collect.sample.build` writes them.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

from PIL import Image

from retrieval.errors import LibraryError
from retrieval.image_formats import OPENERS

from ..qrc import QrcBundle, QrcError
from .credits import Credit, CreditCache, find_credit, package_credit

log = logging.getLogger(__name__)

GCOMPRIS_ROOT = Path("/usr/share/gcompris-qt/rcc")
TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")
GCOMPRIS_COPYRIGHT = Path("/usr/share/doc/gcompris-qt-data/copyright")
TUXPAINT_COPYRIGHT = Path("/usr/share/doc/tuxpaint-stamps-default/copyright")
CLASS_MAP = Path(__file__).parent.parent / "sample_classes.json"
INSTALL_HINT = "sudo apt-get install gcompris-qt-data tuxpaint-stamps-default"

GCOMPRIS_PACKAGE = "gcompris-qt-data"
TUXPAINT_PACKAGE = "tuxpaint-stamps-default"
GCOMPRIS_PREFIX = "gcompris/src/activities/"
# Used only when a package's debian/copyright is absent (docs are often stripped in containers).
PACKAGE_DEFAULTS = {
    GCOMPRIS_PACKAGE: {"copyright": "GCompris developers", "licence": "GPL-3+"},
    TUXPAINT_PACKAGE: {"copyright": "2002-2022 by Bill Kendrick <bill@newbreedsoftware.com>",
                       "licence": "GPL-2"},
}
SOURCE_EXTENSIONS = (".webp", ".png", ".jpg", ".jpeg")

Rule = dict[str, Any]   # one entry of sample_classes.json


@dataclass
class Candidate:
    """One source picture, its class, where it comes from and who made it."""

    cls: str
    name: str  # output file stem, unique in the library
    package: str
    original: str  # human-readable origin: "bundle.rcc:internal/path" or the stamp's path
    credit: Credit
    bundle: QrcBundle | None = None
    internal: str = ""  # path inside the bundle
    path: Path | None = None  # Tux Paint stamp file
    digest: str = ""
    size: tuple[int, int] = (0, 0)
    extra: dict[str, str] = field(default_factory=dict)

    def read(self) -> bytes:
        if self.bundle is not None:
            return self.bundle.read(self.internal)
        assert self.path is not None
        return self.path.read_bytes()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "_", text.lower().replace("/", "-")).strip("_")


def _rule_classes(rule: Mapping[str, Any], stems: Iterable[str], where: str) -> dict[str, str]:
    """{stem: class} for one rule of sample_classes.json."""
    stems = set(stems)
    chosen: dict[str, str] = {}
    if rule.get("class"):
        excluded = set(rule.get("exclude", []))
        chosen = {s: rule["class"] for s in stems if s not in excluded}
    for cls, names in rule.get("files", {}).items():
        for stem in names:
            if stem in stems:
                chosen[stem] = cls
            else:
                log.warning("%s: %s is listed in sample_classes.json but not found", where, stem)
    return chosen


def _open_bundle(root: Path, name: str, bundles: dict[str, QrcBundle | None]) -> QrcBundle | None:
    """The bundle `name`.rcc, opened once; None (with a warning) when it is missing or damaged."""
    if name not in bundles:
        try:
            bundles[name] = QrcBundle.open(root / f"{name}.rcc")
        except (OSError, QrcError) as exc:
            log.warning("skipping GCompris bundle %s: %s", name, exc)
            bundles[name] = None
    return bundles[name]


def _bundle_images(bundle: QrcBundle, folder: str, recursive: bool) -> dict[str, str]:
    """{stem relative to folder: internal path} of the pictures in one bundle folder."""
    images: dict[str, str] = {}
    for path in bundle.paths():
        rel = path[len(folder):] if path.startswith(folder) else None
        if rel is None or ("/" in rel and not recursive):
            continue
        if rel.lower().endswith(SOURCE_EXTENSIONS):
            images[rel.rsplit(".", 1)[0]] = path
    return images


def _gcompris_candidates(root: Path, rules: list[Rule], fallback: Credit) -> list[Candidate]:
    bundles: dict[str, QrcBundle | None] = {}
    readmes: CreditCache = {}
    out: list[Candidate] = []
    for rule in rules:
        name = rule["bundle"]
        bundle = _open_bundle(root, name, bundles)
        if bundle is None:
            continue
        folder = GCOMPRIS_PREFIX + rule["folder"].strip("/") + "/"
        images = _bundle_images(bundle, folder, bool(rule.get("recursive")))
        for stem, cls in sorted(_rule_classes(rule, images, f"{name}.rcc:{folder}").items()):
            internal = images[stem]
            alias = rule.get("credit_aliases", {}).get(stem)
            found, credit_file = find_credit(bundle, internal, readmes, alias)
            if found is None:
                log.info("%s:%s has no README credit; recording the package licence", name, internal)
                credit = {**fallback, "note": "no per-file credit in the bundle; package licence"}
            else:
                credit = {**found, "credits_from": f"{root / (name + '.rcc')}:{credit_file}"}
            out.append(Candidate(
                cls=cls, name=f"gcompris-{_slug(name)}-{_slug(stem)}", package=GCOMPRIS_PACKAGE,
                original=f"{root / (name + '.rcc')}:{internal}", credit=credit, bundle=bundle,
                internal=internal))
    return out


def _tuxpaint_candidates(root: Path, rules: list[Rule], credit: Credit) -> list[Candidate]:
    out: list[Candidate] = []
    for rule in rules:
        folder = root / rule["folder"]
        if not folder.is_dir():
            log.warning("skipping Tux Paint folder %s: not found", folder)
            continue
        images = {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
        for stem, cls in sorted(_rule_classes(rule, images, str(folder)).items()):
            path = images[stem]
            extra = {}
            desc = path.with_suffix(".txt")
            if desc.is_file():
                first = desc.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
                if first and first[0].strip():
                    extra["title"] = first[0].strip()
            out.append(Candidate(
                cls=cls, name=f"tuxpaint-{_slug(rule['folder'])}-{_slug(stem)}", package=TUXPAINT_PACKAGE,
                original=str(path), credit=dict(credit), path=path, extra=extra))
    return out


def _usable(candidates: list[Candidate], *, min_side: int) -> list[Candidate]:
    """Drop unreadable and tiny pictures and duplicates (same bytes or same upstream photo)."""
    seen_digest: set[str] = set()
    seen_source: set[str] = set()
    names: set[str] = set()
    kept: list[Candidate] = []
    for cand in candidates:
        data = cand.read()
        cand.digest = hashlib.sha256(data).hexdigest()
        try:
            with Image.open(io.BytesIO(data), formats=OPENERS) as img:   # the decoder's allowlist
                cand.size = img.size
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: not a readable image (%s)", cand.original, exc)
            continue
        if max(cand.size) < min_side:
            log.debug("skipping %s: %dx%d is smaller than %d px", cand.original, *cand.size, min_side)
            continue
        source = unquote(cand.credit.get("source", "")).strip().lower()
        if cand.digest in seen_digest or (source and source in seen_source):
            log.debug("skipping %s: duplicate of a picture already taken", cand.original)
            continue
        if cand.name in names:
            raise LibraryError(f"two sample pictures map to the same file name {cand.name!r}; "
                               "fix collect/sample_classes.json")
        seen_digest.add(cand.digest)
        if source:
            seen_source.add(source)
        names.add(cand.name)
        kept.append(cand)
    return kept


def _select(candidates: list[Candidate], *, min_side: int, max_per_class: int) -> list[Candidate]:
    """The usable pictures (`_usable`), at most `max_per_class` per class, sorted by class and name."""
    by_class: dict[str, list[Candidate]] = defaultdict(list)
    for cand in _usable(candidates, min_side=min_side):
        by_class[cand.cls].append(cand)
    selected: list[Candidate] = []
    for cls in sorted(by_class):
        items = by_class[cls]
        if len(items) > max_per_class:
            # A fixed, seed-independent choice: the library's content does not change with --seed.
            items = sorted(items, key=lambda c: hashlib.sha256(f"{cls}:{c.name}".encode()).hexdigest())
            items = items[:max_per_class]
        selected.extend(sorted(items, key=lambda c: c.name))
    return selected


def plan_sample(
    *,
    gcompris_root: Path = GCOMPRIS_ROOT,
    tuxpaint_root: Path = TUXPAINT_ROOT,
    gcompris_copyright: Path = GCOMPRIS_COPYRIGHT,
    tuxpaint_copyright: Path = TUXPAINT_COPYRIGHT,
    class_map: Path = CLASS_MAP,
) -> list[Candidate]:
    """The pictures the sample library will hold, with classes and credits (nothing is written)."""
    missing = []
    if not gcompris_root.is_dir() or not any(gcompris_root.glob("*.rcc")):
        missing.append(f"{GCOMPRIS_PACKAGE} ({gcompris_root})")
    if not tuxpaint_root.is_dir() or not any(tuxpaint_root.iterdir()):
        missing.append(f"{TUXPAINT_PACKAGE} ({tuxpaint_root})")
    if missing:
        raise LibraryError(
            "the sample library is built from Debian packages that are not installed here: "
            f"{', '.join(missing)}. Install them with: {INSTALL_HINT}")
    spec = json.loads(class_map.read_text(encoding="utf-8"))
    candidates = _gcompris_candidates(gcompris_root, spec["gcompris"], package_credit(
        gcompris_copyright, GCOMPRIS_PACKAGE, PACKAGE_DEFAULTS[GCOMPRIS_PACKAGE]))
    candidates += _tuxpaint_candidates(tuxpaint_root, spec["tuxpaint"], package_credit(
        tuxpaint_copyright, TUXPAINT_PACKAGE, PACKAGE_DEFAULTS[TUXPAINT_PACKAGE]))
    selected = _select(candidates, min_side=int(spec.get("min_side", 64)),
                       max_per_class=int(spec.get("max_per_class", 60)))
    if not selected:
        raise LibraryError(f"no usable pictures found in {gcompris_root} or {tuxpaint_root}; "
                           f"reinstall the packages: {INSTALL_HINT}")
    return selected
