"""Finding the index the app serves: on local disk, else restored from a Hugging Face dataset repo.

A Space's disk does not persist, so on start-up the app fetches the library and the index from a
dataset repo (`LOOKALIKE_HUB_REPO` or `--hub-repo`); the restore itself lives with the Hub code
(`collect.hub.restore_from_hub`). With neither a local index nor a repo, the error names the
exact build commands.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from retrieval.errors import IndexError_
from retrieval.paths import DEFAULT_DATA, DEFAULT_INDEX, MANIFEST

HUB_ENV = "LOOKALIKE_HUB_REPO"


def build_commands(index_dir: Path, data_dir: Path | None) -> str:
    data = data_dir or DEFAULT_DATA
    return (f"python build_index.py sample --out {data} && "
            f"python build_index.py index --data {data} --index {index_dir}")


def hub_folder(hub_root: Path, repo_id: str) -> Path:
    return Path(hub_root) / re.sub(r"[^A-Za-z0-9._-]+", "--", repo_id)


def locate_index(index_dir: Path, data_dir: Path | None, hub_repo: str | None,
                 hub_root: Path) -> tuple[Path, Path | None]:
    """(index_dir, data_dir) to open: the local index if built, else the Hub copy if configured."""
    if (Path(index_dir) / MANIFEST).is_file():
        return Path(index_dir), data_dir
    repo = hub_repo or os.environ.get(HUB_ENV, "").strip() or None
    if repo:
        from collect.hub import restore_from_hub
        return restore_from_hub(repo, hub_folder(hub_root, repo), build_hint=build_commands(DEFAULT_INDEX, None))
    raise IndexError_(f"no index at {index_dir} and no Hub dataset repo configured "
                      f"(set {HUB_ENV}=user/repo or pass --hub-repo). Build one with:\n"
                      f"  {build_commands(index_dir, data_dir)}")
