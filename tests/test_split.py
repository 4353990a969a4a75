"""The splitter: clean/<class>/ copied into data/train and data/test, 19 + 1 by default, seeded and
deterministic, idempotent, warning about small classes; one split implementation (assign_splits)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from collect.split import assign_splits, list_classes, split_library


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix == ".jpg"}


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    root = tmp_path / "clean"
    for cls, n in (("Cat", 25), ("Dog", 20), ("Owl", 5)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{cls}{i:02d}.jpg").write_bytes(f"{cls} image {i}".encode())
    (root / ".clean_state.json").write_text("{}")
    return root


def test_split_copies_19_train_1_test_and_warns_about_small_classes(tmp_path: Path, clean: Path, caplog) -> None:
    before = _files(clean)
    data = tmp_path / "data"
    summary = split_library(clean, data)
    assert _files(clean) == before  # copies, not moves
    counts = {(s, c): len(n) for s in ("train", "test") for c, n in list_classes(data / s).items()}
    assert counts == {("train", "Cat"): 19, ("test", "Cat"): 1, ("train", "Dog"): 19, ("test", "Dog"): 1,
                      ("train", "Owl"): 4, ("test", "Owl"): 1}
    assert summary["classes"] == 3 and summary["train"] == 42 and summary["test"] == 3
    assert "'Owl' has 5 images" in caplog.text
    # Copies are byte-identical, train and test do not overlap.
    for rel, data_bytes in _files(data).items():
        split, cls, name = rel.split("/")
        assert (clean / cls / name).read_bytes() == data_bytes
    for cls in ("Cat", "Dog", "Owl"):
        assert not set(list_classes(data / "train")[cls]) & set(list_classes(data / "test")[cls])
    # The plan is the single implementation's, and it is recorded.
    record = json.loads((data / "split.json").read_text())
    plan = assign_splits(list_classes(clean), n_train=19, n_test=1, seed=0)
    assert record["classes"] == {c: {"train": tr, "test": te} for c, (tr, te) in plan.items()}


def test_split_is_deterministic_seeded_and_idempotent(tmp_path: Path, clean: Path, caplog) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    split_library(clean, a, seed=7)
    split_library(clean, b, seed=7)
    split_library(clean, c, seed=8)
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)
    again = split_library(clean, a, seed=7)
    assert again["copied"] == 0 and again["removed"] == 0

    # Another seed in the same folder: stale copies go, counts stay 19 + 1; foreign files stay.
    (a / "train" / "Cat" / "mine.jpg").write_bytes(b"added by hand")
    caplog.set_level(logging.WARNING)
    moved = split_library(clean, a, seed=8)
    assert moved["removed"] > 0
    assert {k: v for k, v in _files(a).items() if not k.endswith("mine.jpg")} == _files(c)
    assert (a / "train" / "Cat" / "mine.jpg").is_file()
    assert "did not come from" in caplog.text


def test_split_counts_are_configurable(tmp_path: Path, clean: Path) -> None:
    s = split_library(clean, tmp_path / "data", n_train=None, n_test=2, seed=0)
    assert s["test"] == 6 and s["train"] == (25 - 2) + (20 - 2) + (5 - 2)
