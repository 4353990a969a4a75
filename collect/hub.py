"""data/ <-> a Hugging Face dataset repo (`push` and `pull`).

One conversion in each direction, used by the Hub commands and by the offline tests alike:
- `data_to_datasetdict(data)`: data/<split>/<class>/<file> -> DatasetDict with columns `image`
  (datasets.Image, the original bytes, never re-encoded), `label` (ClassLabel over the sorted class
  names, the same for every split) and `file` (the original file name, so pull restores the
  same names and the index's content hashes stay valid).
- `write_hub_folder(dd, folder)`: the repo's files: data/<split>-NNNNN-of-NNNNN.parquet (the layout
  `push_to_hub` uses, so `load_dataset(repo_id)` works), README.md (the dataset card,
  collect.hub_card) and the attribution / split records from data/.
- `read_hub_folder(folder)` and `datasetdict_to_data(dd, data)` go back; every class and file
  name is checked so that nothing can be written outside data/.
`push` uploads the folder with HfApi (create_repo + upload_folder, repo_type="dataset"); `pull`
fetches it with snapshot_download. The token comes from HF_TOKEN or the `hf auth login` store
(huggingface_hub.get_token) and is handed to huggingface_hub only, never logged or printed.
"""
from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import HfApi, snapshot_download

from retrieval.atomic import write_bytes
from retrieval.attribution import read_attribution
from retrieval.errors import LibraryError, LookalikeError
from retrieval.paths import ATTRIBUTION, ATTRIBUTION_MD, HUB_INDEX

from .hub_card import PROVENANCE_COLUMNS, class_names, dataset_card, summarise_attribution
from .split import SPLITS, list_classes

log = logging.getLogger(__name__)

CARRIED_FILES = (ATTRIBUTION, ATTRIBUTION_MD, "split.json")  # copied data/ <-> repo root
SHARD_BYTES = 400 * 2 ** 20
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d{5}-of-\d{5}\.parquet$")
MAGIC_EXT = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


class HubError(LookalikeError):
    """No token, or the Hub refused the request; the message says what to do."""


def _features(classes: list[str]):
    import datasets
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes),
                              "file": datasets.Value("string"),
                              **{c: datasets.Value("string") for c in PROVENANCE_COLUMNS}})


def _provenance(data_dir: Path) -> dict[str, dict[str, str]]:
    """{library-relative file: {column: value}} from the library's attribution records."""
    out = {}
    for rec in read_attribution(Path(data_dir)).records:
        if "file" in rec:
            out[rec["file"]] = {col: str(rec.get(key, "")) for col, key in PROVENANCE_COLUMNS.items()}
    return out


def data_to_datasetdict(data_dir: Path):
    """data/<split>/<class>/* -> DatasetDict (image bytes embedded, label ClassLabel, file name)."""
    import datasets
    from datasets.table import embed_table_storage

    data_dir = Path(data_dir)
    listed = {s: list_classes(data_dir / s) for s in SPLITS if (data_dir / s).is_dir()}
    classes = sorted({c for by_class in listed.values() for c, files in by_class.items() if files})
    if not classes:
        raise LibraryError(f"no images under {data_dir}/{{train,test}}/<class>/: run the split stage "
                           "(python build_index.py split) or pull a dataset first")
    features = _features(classes)
    provenance = _provenance(data_dir)
    out = datasets.DatasetDict()
    for split, by_class in listed.items():
        rows = [(str(data_dir / split / c / f), classes.index(c), f)
                for c in sorted(by_class) for f in by_class[c]]
        if not rows:
            continue
        paths, labels, files = map(list, zip(*rows))
        prov = [provenance.get(f"{split}/{c}/{f}", {}) for c in sorted(by_class) for f in by_class[c]]
        columns = {col: [p.get(col, "") for p in prov] for col in PROVENANCE_COLUMNS}
        ds = datasets.Dataset.from_dict({"image": paths, "label": labels, "file": files, **columns},
                                        features=features)
        # Read the files into the table now, as push_to_hub does, so the dataset stands alone.
        out[split] = ds.with_format("arrow").map(embed_table_storage, batched=True,
                                                 desc=f"reading {split}").with_format(None)
    return out


MAX_NAME_BYTES = 255   # NAME_MAX of common file systems: a longer name fails at write time


def _safe_name(name: str, what: str) -> str:
    """A single path component that cannot climb out of, or hide in, its folder, carries no
    control characters (ESC, BEL, CR: they garble terminals and logs) and fits a file system."""
    if (not isinstance(name, str) or name in ("", ".", "..") or name.startswith(".")
            or any(c in name for c in "/\\\0") or name != name.strip()):
        raise LibraryError(f"refusing {what} {name!r}: it would write outside data/ or hide a file; "
                           "the dataset is not a Lookalike library")
    if any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in name):
        raise LibraryError(f"refusing {what} {name!r}: it holds control characters; rename it in the dataset")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise LibraryError(f"refusing {what} {name[:40]!r}...: it is {size} bytes long, over the "
                           f"{MAX_NAME_BYTES}-byte limit of file names; shorten it in the dataset")
    return name


def _check_columns(split: str, ds) -> None:
    """The columns a Lookalike library needs, with image bytes in every row."""
    missing = [c for c in ("image", "label") if c not in ds.column_names]
    if missing:
        raise LibraryError(f"the {split} split has no {' or '.join(repr(c) for c in missing)} column "
                           f"(it has {', '.join(map(repr, ds.column_names)) or 'none'}); a Lookalike dataset "
                           "has image, label and file columns (build_index.py push writes them)")
    column = ds.data.column("image")
    try:
        no_bytes = [i for i, v in enumerate(column.combine_chunks().field("bytes").is_null().to_pylist()) if v]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise LibraryError(f"the image column of the {split} split holds {column.type}, not image bytes; "
                           "push it again with `build_index.py push`") from None
    if no_bytes:
        raise LibraryError(f"row {no_bytes[0]} of {split} has no image bytes ({len(no_bytes)} rows in all); "
                           "push it again with `build_index.py push`")


def _row_class(label: Any, classes: list[str] | None, split: str, i: int) -> str:
    """The class of one row: a ClassLabel index inside the class list, or a label given as text."""
    if classes is None:   # labels stored as values, not a ClassLabel
        if label is None or isinstance(label, bool):
            raise LibraryError(f"row {i} of {split} has label {label!r}, not a class")
        return _safe_name(str(label), "class name")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(classes):
        raise LibraryError(f"row {i} of {split} has label {label!r}, outside the dataset's {len(classes)} "
                           f"classes (0 to {len(classes) - 1}); fix the label column (-1 means no label, "
                           "which a library cannot hold)")
    return _safe_name(classes[label], "class name")


def _plan_rows(dd, data_dir: Path) -> dict[str, list[tuple[Path, str | None]]]:
    """Where every row of every split goes, checked as a whole before anything is written:
    columns, labels, names, and no two rows writing one file."""
    root = data_dir.resolve()
    first = next(iter(dd.values()))
    label_feature = first.features.get("label")
    classes = list(label_feature.names) if hasattr(label_feature, "names") else None
    plans: dict[str, list[tuple[Path, str | None]]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for split, ds in dd.items():
        _safe_name(split, "split name")
        _check_columns(split, ds)
        files = ds["file"] if "file" in ds.column_names else [None] * len(ds)
        plan = []
        for i, (label, file) in enumerate(zip(ds["label"], files)):
            cls = _row_class(label, classes, split, i)
            name = _safe_name(file, "file name") if file is not None else None
            folder = data_dir / split / cls
            if not (folder / (name or "x")).resolve().is_relative_to(root):
                raise LibraryError(f"refusing {folder / (name or '')}: it resolves outside {data_dir}")
            if name is not None:
                key = (split, cls, name)
                if key in seen:
                    raise LibraryError(f"rows {seen[key]} and {i} of {split} both write {split}/{cls}/{name}: "
                                       "one image would silently replace the other; rename one in the dataset")
                seen[key] = i
            plan.append((folder, name))
        plans[split] = plan
    return plans


def datasetdict_to_data(dd, data_dir: Path) -> dict[str, Any]:
    """Write a DatasetDict back as data/<split>/<class>/<file>, atomically; refuse unsafe names.

    Every name is checked before anything is written. Identical files already there are kept.
    Rows without a `file` column (a dataset made by push_to_hub) are named <split>-NNNNN.<ext>.
    """
    import datasets

    data_dir = Path(data_dir)
    if not len(dd):
        raise LibraryError("the dataset has no splits; a Lookalike dataset has train (and test) splits")
    plans = _plan_rows(dd, data_dir)   # the whole dataset is checked before anything is written
    classes = class_names(dd)
    written = unchanged = 0
    for split, ds in dd.items():
        rows = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
        for i, ((folder, name), row) in enumerate(zip(plans[split], rows)):
            data = row["image"]["bytes"]
            if data is None:
                raise LibraryError(f"row {i} of {split} has no image bytes; push it again with `build_index.py push`")
            target = folder / (name or f"{split}-{i:05d}{_sniff_ext(data)}")
            if target.is_file() and target.read_bytes() == data:
                unchanged += 1
                continue
            write_bytes(target, data)
            written += 1
    return {"classes": len(classes), **{s: len(p) for s, p in plans.items()}, "written": written,
            "unchanged": unchanged}


def _sniff_ext(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in MAGIC_EXT if data.startswith(magic)), ".jpg")


# ---- the repo's files ---------------------------------------------------------------------------

def _shards(ds, max_bytes: int) -> int:
    return max(1, math.ceil(ds.data.nbytes / max_bytes))


def write_hub_folder(dd, folder: Path, *, repo_id: str, data_dir: Path | None = None,
                     license: str | None = None, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Write the repo's files into `folder`; returns their paths relative to it."""
    folder = Path(folder)
    files: list[str] = []
    for split, ds in dd.items():
        n = _shards(ds, shard_bytes)
        for i in range(n):
            rel = f"data/{split}-{i:05d}-of-{n:05d}.parquet"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            ds.shard(n, i, contiguous=True).to_parquet(str(folder / rel))
            files.append(rel)
    attribution = summarise_attribution(data_dir) if data_dir is not None else None
    (folder / "README.md").write_text(dataset_card(dd, repo_id, attribution=attribution, license=license), "utf-8")
    files.append("README.md")
    for name in CARRIED_FILES:
        if data_dir is not None and (Path(data_dir) / name).is_file():
            (folder / name).write_bytes((Path(data_dir) / name).read_bytes())
            files.append(name)
    return files


def read_hub_folder(folder: Path):
    """The DatasetDict stored in a repo folder's data/<split>-*.parquet shards."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards: dict[str, list[Path]] = {}
    for path in sorted((Path(folder) / "data").glob("*.parquet")):
        m = SHARD_NAME.match(path.name)
        if m:
            shards.setdefault(m["split"], []).append(path)
    if not shards:
        raise LibraryError(f"{folder} has no data/<split>-NNNNN-of-NNNNN.parquet files: not a dataset pushed "
                           "by `build_index.py push` or `push_to_hub`")
    out = datasets.DatasetDict()
    for split in sorted(shards, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
        paths = shards[split]
        table = pa.concat_tables([pq.read_table(p) for p in paths])
        features = datasets.Features.from_arrow_schema(table.schema)
        out[split] = datasets.Dataset(table, info=datasets.DatasetInfo(features=features))
    return out


# ---- the Hub boundary ---------------------------------------------------------------------------

def resolve_token(token: str | None = None) -> str | None:
    """An explicit token, else HF_TOKEN, else the `hf auth login` store (huggingface_hub.get_token)."""
    return token or huggingface_hub.get_token()


def stage_index(index_dir: Path, folder: Path) -> list[str]:
    """Copy a built index into folder/index/ for upload: the manifest, the arrays it names (pixels,
    embeddings, the re-ranked methods' DBA rows), the evaluation and the embedded Chroma store.
    The app downloads this folder on a Space."""
    from retrieval.manifest import Manifest
    from retrieval.paths import EVALUATION, MANIFEST

    index_dir = Path(index_dir)
    manifest = Manifest.read(index_dir)  # a clear error when there is no built index
    names = [MANIFEST, EVALUATION, *manifest.files()]   # the arrays: pixels, embeddings, DBA rows
    files = []
    for name in names:
        if (index_dir / name).is_file():
            (folder / HUB_INDEX).mkdir(parents=True, exist_ok=True)
            shutil.copy2(index_dir / name, folder / HUB_INDEX / name)
            files.append(f"index/{name}")
    chroma = manifest.chroma.path if manifest.chroma else None
    if manifest.chroma and manifest.chroma.mode == "embedded" and chroma and (index_dir / chroma).is_dir():
        shutil.copytree(index_dir / chroma, folder / HUB_INDEX / chroma)
        files += [f"index/{p.relative_to(index_dir).as_posix()}" for p in sorted((index_dir / chroma).rglob("*"))
                  if p.is_file()]
    return files


def push(data_dir: Path, repo_id: str, *, private: bool = False, license: str | None = None,
         token: str | None = None, commit_message: str | None = None,
         index_dir: Path | None = None) -> dict[str, Any]:
    """Upload data/ as a dataset repo (parquet shards, card, attribution) and, with `index_dir`, the
    built index under index/ so a Space can start without rebuilding; returns a summary."""
    token = resolve_token(token)
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, "
                       "or skip this stage with --no-hub")
    dd = data_to_datasetdict(data_dir)
    counts = {s: len(ds) for s, ds in dd.items()}
    with tempfile.TemporaryDirectory(prefix="lookalike-hub-") as staging:
        files = write_hub_folder(dd, Path(staging), repo_id=repo_id, data_dir=data_dir, license=license)
        if index_dir is not None:
            files += stage_index(Path(index_dir), Path(staging))
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=staging,
                              commit_message=commit_message or f"Lookalike library: {counts}",
                              # drop shards of an older layout, and an older index's files
                              delete_patterns=["data/*.parquet"] + (["index/*"] if index_dir is not None else []))
        except Exception as exc:  # HfHubHTTPError, offline mode, network: say what to check
            raise HubError(f"pushing to the dataset repo {repo_id} failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}. Check the repo id, your "
                           "network and that the token may write to it.") from None
    summary = {"repo_id": repo_id, "url": f"https://huggingface.co/datasets/{repo_id}", "files": files,
               "classes": len(class_names(dd)), **counts}
    log.info("push: %s images in %d classes -> %s", counts, summary["classes"], summary["url"])
    return summary


def pull(repo_id: str, data_dir: Path, *, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Restore data/ (and its attribution files) from a dataset repo."""
    data_dir = Path(data_dir)
    with tempfile.TemporaryDirectory(prefix="lookalike-hub-") as tmp:
        try:
            snapshot_download(repo_id, repo_type="dataset", revision=revision, local_dir=tmp,
                              token=resolve_token(token), allow_patterns=["data/*.parquet", "README.md", *CARRIED_FILES])
        except Exception as exc:
            raise HubError(f"downloading the dataset repo {repo_id} failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}. Check the repo id and your "
                           "network (and HF_HUB_OFFLINE), and log in with `hf auth login` for a private repo.") from None
        summary = datasetdict_to_data(read_hub_folder(Path(tmp)), data_dir)
        for name in CARRIED_FILES:
            if (Path(tmp) / name).is_file():
                write_bytes(data_dir / name, (Path(tmp) / name).read_bytes())
    log.info("pull: %s -> %s (%d written, %d unchanged)", repo_id, data_dir, summary["written"], summary["unchanged"])
    return {"repo_id": repo_id, **summary}


def restore_from_hub(repo_id: str, local_dir: Path, *, build_hint: str = "") -> tuple[Path, Path]:
    """Fetch the repo's index/ folder and restore the library beside it; returns (index_dir, data_dir).

    The app calls this on a Space, whose disk does not persist. The library travels as Parquet,
    so `pull` writes it back as data/<split>/<class>/<file> with the original bytes: the manifest's
    content hashes still match.
    """
    from retrieval.errors import IndexError_
    from retrieval.paths import MANIFEST

    local_dir = Path(local_dir)
    log.info("fetching the index and library of the Hub dataset %s into %s", repo_id, local_dir)
    try:
        snapshot_download(repo_id, repo_type="dataset", local_dir=str(local_dir), token=resolve_token(),
                          allow_patterns=[f"{HUB_INDEX}/*"])
    except Exception as exc:  # HfHubHTTPError, offline mode, network: say what to check
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise IndexError_(f"downloading the index from the Hub dataset {repo_id} failed: {type(exc).__name__}: "
                          f"{first}. Check the repo id, the network (and HF_HUB_OFFLINE), and HF_TOKEN for a "
                          "private repo.") from None
    index_dir = local_dir / HUB_INDEX
    if not (index_dir / MANIFEST).is_file():
        raise IndexError_(f"the Hub dataset {repo_id} has no {HUB_INDEX}/{MANIFEST}: upload a built index "
                          "folder there (beside data/)" + (f", or build one locally with: {build_hint}" if build_hint else ""))
    data_dir = local_dir / "data"
    pull(repo_id, data_dir)
    return index_dir, data_dir
