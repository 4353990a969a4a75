"""Finding the index the app serves: on local disk, else restored from a Hugging Face dataset repo.

A Space's disk does not persist, so on start-up the app fetches the library and the index from a
dataset repo (`LOOKALIKE_HUB_REPO` or `--hub-repo`) with `snapshot_download` into a folder inside
the app directory. With neither a local index nor a repo, the error names the exact build commands.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .errors import IndexError_
from .manifest import MANIFEST

log = logging.getLogger(__name__)

HUB_ENV = "LOOKALIKE_HUB_REPO"
HUB_INDEX = "index"     # the index folder inside the dataset repo, beside the library


def build_commands(index_dir: Path, data_dir: Path | None) -> str:
    data = data_dir or Path("data")
    return (f"python build_index.py sample --out {data} && "
            f"python build_index.py index --data {data} --index {index_dir}")


def hub_folder(hub_root: Path, repo_id: str) -> Path:
    return Path(hub_root) / re.sub(r"[^A-Za-z0-9._-]+", "--", repo_id)


def restore_from_hub(repo_id: str, local_dir: Path) -> tuple[Path, Path]:
    """Fetch INDEX (the repo's index/ folder) and restore the library beside it; (index_dir, data_dir).

    The library travels as Parquet (collect.hub's format), so `collect.hub.pull` writes it back as
    data/<split>/<class>/<file> with the original bytes: the manifest's content hashes still match.
    """
    from huggingface_hub import snapshot_download

    from collect.hub import pull, resolve_token

    local_dir = Path(local_dir)
    log.info("fetching the index and library of the Hub dataset %s into %s", repo_id, local_dir)
    try:
        snapshot_download(repo_id, repo_type="dataset", local_dir=str(local_dir), token=resolve_token(),
                          allow_patterns=[f"{HUB_INDEX}/*"])
    except Exception as exc:  # HfHubHTTPError, offline mode, network: say what to check
        raise IndexError_(f"downloading the index from the Hub dataset {repo_id} failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}. Check the repo id, the network "
                          "(and HF_HUB_OFFLINE), and HF_TOKEN for a private repo.") from None
    index_dir = local_dir / HUB_INDEX
    if not (index_dir / MANIFEST).is_file():
        raise IndexError_(f"the Hub dataset {repo_id} has no {HUB_INDEX}/{MANIFEST}: upload a built index "
                          f"folder there (beside data/), or build one locally with: {build_commands(Path('index'), None)}")
    data_dir = local_dir / "data"
    pull(repo_id, data_dir)
    return index_dir, data_dir


def locate_index(index_dir: Path, data_dir: Path | None, hub_repo: str | None,
                 hub_root: Path) -> tuple[Path, Path | None]:
    """(index_dir, data_dir) to open: the local index if built, else the Hub copy if configured."""
    if (Path(index_dir) / MANIFEST).is_file():
        return Path(index_dir), data_dir
    repo = hub_repo or os.environ.get(HUB_ENV, "").strip() or None
    if repo:
        return restore_from_hub(repo, hub_folder(hub_root, repo))
    raise IndexError_(f"no index at {index_dir} and no Hub dataset repo configured "
                      f"(set {HUB_ENV}=user/repo or pass --hub-repo). Build one with:\n"
                      f"  {build_commands(index_dir, data_dir)}")
