"""Offline sample library: a real, class-labelled photo set built from two Debian packages.

Crawling needs the internet; this does not. GCompris (`gcompris-qt-data`) packs Wikimedia-style
photos, with per-folder README credits, into Qt resource bundles; Tux Paint
(`tuxpaint-stamps-default`) ships photo cut-outs as transparent PNGs. `collect/sample_classes.json`
says which pictures go to which class. The result has the same layout as the crawled library,
`OUT/{train,test}/<class>/*.jpg`, plus `OUT/ATTRIBUTION.json` (one record per image: origin, licence,
credit) and `OUT/ATTRIBUTION.md`. `OUT/sample.json` is written last, so its absence marks an
unfinished run; a rerun reuses the images already written and gives the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

from PIL import Image
from tqdm import tqdm

from retrieval.atomic import write_bytes, write_json
from retrieval.attribution import licence_id, make_record, read_attribution, write_attribution
from retrieval.errors import ImageError, LibraryError
from retrieval.image_formats import OPENERS
from retrieval.images import load_image
from retrieval.paths import ATTRIBUTION, DEFAULT_DATA

from .qrc import QrcBundle, QrcError
from .split import assign_splits

log = logging.getLogger(__name__)

GCOMPRIS_ROOT = Path("/usr/share/gcompris-qt/rcc")
TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")
GCOMPRIS_COPYRIGHT = Path("/usr/share/doc/gcompris-qt-data/copyright")
TUXPAINT_COPYRIGHT = Path("/usr/share/doc/tuxpaint-stamps-default/copyright")
CLASS_MAP = Path(__file__).with_name("sample_classes.json")
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

MAX_SIDE = 512
JPEG_QUALITY = 90
FORMAT_VERSION = 1
SPLITS = ("train", "test")
SUMMARY_NAME = "sample.json"
PARTIAL_NAME = ".sample-partial.json"
OUR_FILE = re.compile(r"^(gcompris|tuxpaint)-[a-z0-9_.-]+\.jpg$")
SOURCE_EXTENSIONS = (".webp", ".png", ".jpg", ".jpeg")


@dataclass
class Candidate:
    """One source picture, its class, where it comes from and who made it."""

    cls: str
    name: str  # output file stem, unique in the library
    package: str
    original: str  # human-readable origin: "bundle.rcc:internal/path" or the stamp's path
    credit: dict[str, str]
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


# --- credits -------------------------------------------------------------------------------------

_CREDIT_KEYS = {
    "copyright": "copyright", "license": "licence", "licence": "licence", "source": "source",
    "files": "files", "file": "files", "comment": "comment", "comments": "comment",
    "author": "copyright", "authors": "copyright",
}
_KEY_LINE = re.compile(r"^([A-Za-z]+):\s*(.*)$")
_FILE_NAME = re.compile(r"[\w./-]+\.(?:webp|svg|png|jpe?g|gif|ogg|oga|wav|qml|js)", re.IGNORECASE)


def parse_credits(text: str) -> dict[str, dict[str, str]]:
    """Parse a GCompris README (Debian-copyright-like blocks) into {file path: credit}.

    Tolerates what the real files do: file lists on the `Files:` line or below it, multi-line
    copyright holders, `Comment`/`Comments`, and blocks whose file names follow `License:` with no
    `Files:` key at all.
    """
    out: dict[str, dict[str, str]] = {}
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
        if key:
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


def _package_credit(copyright_file: Path, package: str) -> dict[str, str]:
    """The `Files: *` paragraph of a Debian machine-readable copyright file."""
    credit = dict(PACKAGE_DEFAULTS[package])
    try:
        text = copyright_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        log.warning("%s not found; using the %s licence known to this code (%s)",
                    copyright_file, package, credit["licence"])
        credit["credits_from"] = "built-in default (debian/copyright missing)"
        return credit
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        last = ""
        for line in para.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                last = m.group(1).lower()
                fields[last] = [m.group(2).strip()] if m.group(2).strip() else []
            elif last and line.strip() and line.strip() != ".":
                fields[last].append(line.strip())
        if fields.get("files") == ["*"]:
            if fields.get("copyright"):
                credit["copyright"] = "; ".join(fields["copyright"])
            if fields.get("license"):
                credit["licence"] = fields["license"][0]
            break
    credit["credits_from"] = str(copyright_file)
    return credit


# --- planning ------------------------------------------------------------------------------------

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


def _gcompris_candidates(root: Path, rules: list[dict], fallback: dict[str, str]) -> list[Candidate]:
    bundles: dict[str, QrcBundle | None] = {}
    readmes: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    out: list[Candidate] = []
    for rule in rules:
        name = rule["bundle"]
        if name not in bundles:
            try:
                bundles[name] = QrcBundle.open(root / f"{name}.rcc")
            except (OSError, QrcError) as exc:
                log.warning("skipping GCompris bundle %s: %s", name, exc)
                bundles[name] = None
        bundle = bundles[name]
        if bundle is None:
            continue
        folder = GCOMPRIS_PREFIX + rule["folder"].strip("/") + "/"
        images: dict[str, str] = {}  # stem relative to folder -> internal path
        for path in bundle.paths():
            rel = path[len(folder):] if path.startswith(folder) else None
            if rel is None or ("/" in rel and not rule.get("recursive")):
                continue
            if rel.lower().endswith(SOURCE_EXTENSIONS):
                images[rel.rsplit(".", 1)[0]] = path
        for stem, cls in sorted(_rule_classes(rule, images, f"{name}.rcc:{folder}").items()):
            internal = images[stem]
            alias = rule.get("credit_aliases", {}).get(stem)
            credit, credit_file = _find_credit(bundle, internal, readmes, alias)
            if credit is None:
                log.info("%s:%s has no README credit; recording the package licence", name, internal)
                credit = {**fallback, "note": "no per-file credit in the bundle; package licence"}
            else:
                credit = {**credit, "credits_from": f"{root / (name + '.rcc')}:{credit_file}"}
            out.append(Candidate(
                cls=cls, name=f"gcompris-{_slug(name)}-{_slug(stem)}", package=GCOMPRIS_PACKAGE,
                original=f"{root / (name + '.rcc')}:{internal}", credit=credit, bundle=bundle,
                internal=internal))
    return out


def _find_credit(bundle: QrcBundle, internal: str, cache: dict[tuple[str, str], dict[str, dict[str, str]]],
                 alias: str | None = None) -> tuple[dict | None, str]:
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


def _tuxpaint_candidates(root: Path, rules: list[dict], credit: dict[str, str]) -> list[Candidate]:
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


def _select(candidates: list[Candidate], *, min_side: int, max_per_class: int) -> list[Candidate]:
    """Drop unreadable and tiny pictures and duplicates (same bytes or same upstream photo); cap classes."""
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
    by_class: dict[str, list[Candidate]] = defaultdict(list)
    for cand in kept:
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
    candidates = _gcompris_candidates(
        gcompris_root, spec["gcompris"], _package_credit(gcompris_copyright, GCOMPRIS_PACKAGE))
    candidates += _tuxpaint_candidates(
        tuxpaint_root, spec["tuxpaint"], _package_credit(tuxpaint_copyright, TUXPAINT_PACKAGE))
    selected = _select(candidates, min_side=int(spec.get("min_side", 64)),
                       max_per_class=int(spec.get("max_per_class", 60)))
    if not selected:
        raise LibraryError(f"no usable pictures found in {gcompris_root} or {tuxpaint_root}; "
                           f"reinstall the packages: {INSTALL_HINT}")
    return selected


# --- writing -------------------------------------------------------------------------------------

def encode_jpeg(data: bytes, label: str, *, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """RGB JPEG bytes, longer side capped; transparency is flattened onto white by load_image."""
    img = load_image(data, name=label)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _our_files(out: Path) -> dict[str, Path]:
    """{file name: path} of the images an earlier sample run wrote; refuses a folder with others."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        base = out / split
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            rel = path.relative_to(out)
            if len(rel.parts) != 3 or not OUR_FILE.match(path.name):
                raise LibraryError(
                    f"{out} already holds images that `sample` did not write (e.g. {rel}); "
                    "build the sample library into another folder with --out, or move them away")
            found[path.name] = path
    return found


def _clean_temp_and_empty(out: Path) -> None:
    for split in SPLITS:
        base = out / split
        if not base.is_dir():
            continue
        for tmp in base.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        for folder in sorted(base.iterdir()):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _attribution_md(records: list[dict], summary: dict) -> str:
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


def _assign_splits(selected: list[Candidate], *, test_fraction: float, seed: int
                   ) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, str]]:
    """(per class (train names, test names), split of each name): the seeded split, kept apart
    from the files so that another seed only moves images."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for cand in selected:
        by_class[cand.cls].append(cand.name)
    splits = assign_splits(by_class, n_test=None, n_train=None, test_fraction=test_fraction, seed=seed)
    split_of = {name: split for cls, (train, test) in splits.items()
                for split, names in (("train", train), ("test", test)) for name in names}
    return splits, split_of


def _previous_build(out: Path, params: dict) -> tuple[bool, dict[str, str]]:
    """(may images be reused, {file name: sha256 of the picture it was made from}).

    Reuse needs the same encoding settings as the earlier run (finished or not); the digests come
    from its attribution, so a picture that changed in an upgraded package is made again.
    """
    previous = {}
    for marker in (out / SUMMARY_NAME, out / PARTIAL_NAME):
        try:
            previous = json.loads(marker.read_text(encoding="utf-8")).get("params", {})
            break
        except (OSError, ValueError, AttributeError):
            continue
    made_from = {PurePosixPath(r["file"]).name: r["original_sha256"]
                 for r in read_attribution(out).records
                 if "file" in r and isinstance(r.get("original_sha256"), str)}
    return previous == params, made_from


@dataclass
class _Placement:
    """What bringing the folder up to date involves: images still to encode, and what was kept."""

    todo: list[tuple[Candidate, Path]]
    reused: int = 0
    moved: int = 0
    removed: int = 0


def _place_existing(out: Path, selected: list[Candidate], split_of: dict[str, str], existing: dict[str, Path],
                    *, reuse: bool, made_from: dict[str, str]) -> _Placement:
    """Keep or move the images an earlier run wrote and delete those no longer planned, so a rerun
    only encodes what is new or changed."""
    placement = _Placement(todo=[])
    planned: set[Path] = set()
    for cand in selected:
        dest = out / split_of[cand.name] / cand.cls / f"{cand.name}.jpg"
        planned.add(dest)
        old = existing.get(dest.name)
        if old is not None and (not reuse or made_from.get(dest.name, cand.digest) != cand.digest):
            old = None
        if old is not None and old == dest:
            placement.reused += 1
        elif old is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, dest)
            placement.moved += 1
        else:
            placement.todo.append((cand, dest))
    for path in existing.values():
        if path not in planned and path.exists():
            path.unlink()
            placement.removed += 1
    _clean_temp_and_empty(out)
    return placement


def _encode_all(todo: list[tuple[Candidate, Path]], *, max_side: int, quality: int, workers: int | None) -> None:
    """Encode and write the images in threads (PIL releases the GIL); on Ctrl-C, stop without the
    queued work, so what was written stays and the next run resumes from there."""
    def work(item: tuple[Candidate, Path]) -> None:
        cand, dest = item
        write_bytes(dest, encode_jpeg(cand.read(), cand.original, max_side=max_side, quality=quality))

    n_workers = workers or min(8, os.cpu_count() or 1)
    failed: list[str] = []
    pool = ThreadPoolExecutor(max_workers=n_workers)
    try:
        with tqdm(total=len(todo), desc="sample images", unit="img", disable=not todo) as bar:
            for item, future in [(item, pool.submit(work, item)) for item in todo]:
                try:
                    future.result()
                except ImageError as exc:
                    failed.append(item[0].name)
                    log.warning("skipping %s: %s", item[0].original, exc)
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C, stop without the queued work
    if failed:
        raise LibraryError(f"{len(failed)} sample pictures could not be converted (first: {failed[0]}); "
                           f"the packages may be damaged: reinstall them with {INSTALL_HINT}")


def _records(selected: list[Candidate], split_of: dict[str, str]) -> list[dict]:
    """One attribution record per image, sorted by file: who made it, under which licence, from where.
    `original_sha256` lets the next run notice a picture that changed upstream."""
    records = []
    for cand in selected:
        split = split_of[cand.name]
        credit = cand.credit
        records.append(make_record(
            source=cand.package,
            licence=licence_id(credit.get("licence", "")),
            **{"file": f"{split}/{cand.cls}/{cand.name}.jpg", "class": cand.cls, "split": split},
            original=cand.original,
            author=credit.get("copyright"),
            page_url=credit.get("source"),
            licence_stated=credit.get("licence"),
            comment=credit.get("comment"),
            note=credit.get("note"),
            **cand.extra,
            credits_from=credit.get("credits_from"),
            original_sha256=cand.digest,
        ))
    records.sort(key=lambda r: r["file"])
    return records


def build_sample_library(
    out: Path,
    *,
    seed: int = 0,
    test_fraction: float = 0.1,
    workers: int | None = None,
    gcompris_root: Path = GCOMPRIS_ROOT,
    tuxpaint_root: Path = TUXPAINT_ROOT,
    gcompris_copyright: Path = GCOMPRIS_COPYRIGHT,
    tuxpaint_copyright: Path = TUXPAINT_COPYRIGHT,
    class_map: Path = CLASS_MAP,
    max_side: int = MAX_SIDE,
    quality: int = JPEG_QUALITY,
) -> dict:
    """Build (or bring up to date) the sample library under `out`; return a summary dict.

    Reruns reuse the images already there when the encoding settings and the source picture match,
    move images whose split changed (another seed) instead of re-encoding them, and delete images
    no longer planned.
    """
    if not 0.0 < test_fraction < 1.0:
        raise LibraryError(f"--test-fraction must be between 0 and 1 (got {test_fraction})")
    start = time.perf_counter()
    out = Path(out)
    selected = plan_sample(gcompris_root=gcompris_root, tuxpaint_root=tuxpaint_root,
                           gcompris_copyright=gcompris_copyright, tuxpaint_copyright=tuxpaint_copyright,
                           class_map=class_map)
    splits, split_of = _assign_splits(selected, test_fraction=test_fraction, seed=seed)

    out.mkdir(parents=True, exist_ok=True)
    params = {"format_version": FORMAT_VERSION, "max_side": max_side, "jpeg_quality": quality}
    existing = _our_files(out)
    reuse, made_from = _previous_build(out, params)
    if existing and not reuse:
        log.info("encoding settings changed (or unknown); re-encoding every image")
    # Mark the run as unfinished before touching anything: sample.json only comes back at the end.
    write_json(out / PARTIAL_NAME, {"params": params})
    (out / SUMMARY_NAME).unlink(missing_ok=True)

    placement = _place_existing(out, selected, split_of, existing, reuse=reuse, made_from=made_from)
    _encode_all(placement.todo, max_side=max_side, quality=quality, workers=workers)

    records = _records(selected, split_of)
    classes = {cls: {"train": len(tr), "test": len(te)} for cls, (tr, te) in sorted(splits.items())}
    summary = {
        "format_version": FORMAT_VERSION,
        "params": params,
        "seed": seed,
        "test_fraction": test_fraction,
        "images": len(records),
        "classes": classes,
        "packages": dict(sorted(Counter(r["source"] for r in records).items())),
        "licences": dict(sorted(Counter(r["licence"] for r in records).items())),
        "attribution": ATTRIBUTION,
    }
    write_attribution(out, records, markdown=_attribution_md(records, summary))
    write_json(out / SUMMARY_NAME, summary)  # last: marks a finished build
    (out / PARTIAL_NAME).unlink(missing_ok=True)
    return {**summary, "out": str(out), "encoded": len(placement.todo), "reused": placement.reused,
            "moved": placement.moved, "removed": placement.removed,
            "seconds": round(time.perf_counter() - start, 2)}


# --- command line --------------------------------------------------------------------------------

def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `sample` subcommand to build_index.py."""
    p = sub.add_parser(
        "sample", help="build the offline sample library from Debian packages",
        description="Build a class-labelled photo library (OUT/{train,test}/<class>/*.jpg, with "
                    f"OUT/{ATTRIBUTION}) offline from the Debian packages gcompris-qt-data and "
                    f"tuxpaint-stamps-default ({INSTALL_HINT}). Reruns are cheap and give the same files.")
    p.add_argument("--out", type=Path, default=DEFAULT_DATA, help=f"library folder (default: {DEFAULT_DATA})")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of each class held out as test queries, at least one (default: 0.1)")
    p.add_argument("--workers", type=int, default=None, help="conversion threads (default: CPU count)")
    p.add_argument("--gcompris-root", type=Path, default=GCOMPRIS_ROOT, help=argparse.SUPPRESS)
    p.add_argument("--tuxpaint-root", type=Path, default=TUXPAINT_ROOT, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    summary = build_sample_library(args.out, seed=args.seed, test_fraction=args.test_fraction,
                                   workers=args.workers, gcompris_root=args.gcompris_root,
                                   tuxpaint_root=args.tuxpaint_root)
    n_train = sum(c["train"] for c in summary["classes"].values())
    n_test = sum(c["test"] for c in summary["classes"].values())
    print(f"sample library: {summary['images']} images ({n_train} train, {n_test} test) in "
          f"{len(summary['classes'])} classes under {summary['out']} "
          f"[{summary['encoded']} written, {summary['reused'] + summary['moved']} reused, "
          f"{summary['removed']} removed, {summary['seconds']} s]")
    for cls, counts in summary["classes"].items():
        print(f"  {cls:<14} train {counts['train']:>3}  test {counts['test']:>2}")
    print(f"licences: {', '.join(f'{k} {v}' for k, v in summary['licences'].items())} "
          f"(see {summary['out']}/{ATTRIBUTION})")
    return 0
