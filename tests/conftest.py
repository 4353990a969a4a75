"""Shared fixtures. Tests never touch the network: the Hub is forced offline."""
from __future__ import annotations

import faulthandler
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The real offline sample library (Debian packages), built once per test session."""
    from collect.sample import build_sample_library

    out = tmp_path_factory.mktemp("sample") / "data"
    build_sample_library(out)
    return out


def _index_sample(sample_data: Path, tmp_path_factory, model: str) -> Path:
    from retrieval.indexing import build_index

    index = tmp_path_factory.mktemp(f"sample-{model}") / "index"
    build_index(sample_data, index, model=model)
    return index


@pytest.fixture(scope="session")
def sample_pixel_index(sample_data, tmp_path_factory) -> Path:
    """A pixel-only index of the sample library (no model), built once per session."""
    return _index_sample(sample_data, tmp_path_factory, "none")


def make_tiny_library(root: Path, classes: dict[str, tuple[int, int, int]] | None = None,
                      n_train: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    """A small synthetic library: per class a base colour with noise and a white disc."""
    rng = np.random.default_rng(seed)
    classes = classes or {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for split, n in (("train", n_train), ("test", n_test)):
        for name, rgb in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(60, 160, size=2))
                base = np.clip(np.array(rgb) + rng.integers(-40, 40, size=3), 0, 255)
                arr = np.clip(base + rng.integers(-25, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(arr)
                ImageDraw.Draw(im).ellipse((10, 10, 40, 40), fill=(255, 255, 255))
                im.save(folder / f"{split}_{i}.jpg", quality=92)
    return root


def tiny_effnet_index(root: Path) -> tuple[Path, Path]:
    """(library, index): a tiny library (4 train, 1 test image per class) indexed with the offline
    backbone (embeddings, Chroma, DBA), no evaluation; for module fixtures to share."""
    from retrieval.indexing import build_index

    data = make_tiny_library(root / "data", n_train=4, n_test=1)
    build_index(data, root / "index", model="effnet", evaluate=False)
    return data, root / "index"


@pytest.fixture
def tiny_library(tmp_path) -> Path:
    return make_tiny_library(tmp_path / "data")


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real Chroma server on 127.0.0.1 for the whole session, stopped at the end."""
    from chroma_support import start_server, stop_server

    proc, url = start_server(tmp_path_factory.mktemp("chroma-server"))
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory) -> Path:
    """A real ViT-B-32 state dict (random init: no weights can be fetched here), as users give one."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "vit-b-32.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def sample_effnet_index(sample_data, tmp_path_factory) -> Path:
    """The sample library indexed with the offline backbone (embeddings + Chroma + evaluation)."""
    return _index_sample(sample_data, tmp_path_factory, "effnet")


@pytest.fixture(scope="module")
def app(sample_effnet_index):
    """The app over the sample effnet index, served in-process on 127.0.0.1 (gradio_client tests);
    a module may override it with an app over its own index (test_bad_image_corpus does)."""
    from app_support import launch
    demo, served = launch(sample_effnet_index)
    yield served
    demo.close()


# -- the reliability tests (test_bad_image_corpus, test_indexing, test_storage_faults, ...) -------------

@pytest.fixture
def watchdog():
    """No test may hang: dump every thread and stop the run after WATCHDOG_S seconds (pytest-timeout
    is not a dependency). The reliability modules apply it to each test with pytestmark."""
    from reliability_support import WATCHDOG_S

    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> SimpleNamespace:
    """A tiny library with the whole bad-image corpus (tests/bad_images.py) in its train/awkward/ class,
    indexed with the offline backbone (pixels, embeddings, Chroma), and a flat copy of the corpus for
    queries and uploads. Built once per session: its users only read it."""
    import bad_images
    from retrieval.indexing import build_index

    root = tmp_path_factory.mktemp("corpus")
    data = make_tiny_library(root / "data", n_train=4, n_test=1)
    bad_images.write_corpus(data / "train" / "awkward")
    files = bad_images.write_corpus(root / "files")
    summary = build_index(data, root / "index", model="effnet")
    return SimpleNamespace(root=root, data=data, index=root / "index", files=files, summary=summary)


@pytest.fixture
def effnet_tiny(tmp_path) -> SimpleNamespace:
    """A fresh tiny library indexed with the offline backbone and evaluated, for a test to damage."""
    from retrieval.indexing import build_index

    data = make_tiny_library(tmp_path / "data", n_train=4, n_test=1)
    index = tmp_path / "index"
    build_index(data, index, model="effnet", evaluate=True)
    return SimpleNamespace(data=data, index=index, query=next((data / "test").rglob("*.jpg")))
