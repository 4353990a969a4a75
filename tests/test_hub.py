"""Hub dataset push/pull, offline: data/ round-trips through the same conversion code the Hub
commands use, push hands the right repo, type, token and files to HfApi, pull restores data/ and
refuses names that would escape it. The Hub itself is replaced at its boundary."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from collect import hub, hub_card
from retrieval.errors import LibraryError

TOKEN = "hf_test_token_never_to_be_printed"


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for split, n in (("train", 3), ("test", 1)):
        for k, cls in enumerate(("cat", "dog", "Owl")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (64, 48), (40 * i, 80 * k, 200))
                fmt, ext = ("PNG", ".png") if i == 1 else ("JPEG", ".jpg")
                (root / split / cls / f"{cls}-{split}-{i}{ext}").write_bytes(_encode(img, fmt))
    (root / "ATTRIBUTION.json").write_text(json.dumps(
        [{"file": "train/cat/x.jpg", "licence_id": "CC-BY-SA-4.0", "package": "gcompris-qt-data"},
         {"file": "train/dog/y.jpg", "licence_id": "CC0", "package": "gcompris-qt-data"},
         {"file": "train/Owl/z.jpg", "licence_id": "GPL-2", "package": "tuxpaint-stamps-default"}]))
    return root


def test_round_trip_through_save_to_disk(tmp_path: Path, data: Path) -> None:
    import datasets
    dd = hub.data_to_datasetdict(data)
    assert set(dd) == {"train", "test"} and len(dd["train"]) == 9 and len(dd["test"]) == 3
    label = dd["train"].features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names == ["Owl", "cat", "dog"]
    assert isinstance(dd["train"].features["image"], datasets.Image)
    row = dd["test"][0]
    assert label.int2str(row["label"]) == row["file"].split("-")[0]
    dd.save_to_disk(str(tmp_path / "saved"))
    shutil.rmtree(data / "train")  # the saved dataset must stand alone, not point at the files
    back = datasets.load_from_disk(str(tmp_path / "saved"))
    out = tmp_path / "restored"
    summary = hub.datasetdict_to_data(back, out)
    assert summary == {"classes": 3, "train": 9, "test": 3, "written": 12, "unchanged": 0}
    assert _tree(out / "test") == _tree(data / "test")
    assert len(_tree(out / "train")) == 9


def test_round_trip_through_the_hub_folder_and_card(tmp_path: Path, data: Path) -> None:
    dd = hub.data_to_datasetdict(data)
    folder = tmp_path / "repo"
    files = hub.write_hub_folder(dd, folder, repo_id="someone/lookalike-lib", data_dir=data)
    assert sorted(files) == ["ATTRIBUTION.json", "README.md", "data/test-00000-of-00001.parquet",
                             "data/train-00000-of-00001.parquet"]
    out = tmp_path / "restored"
    hub.datasetdict_to_data(hub.read_hub_folder(folder), out)
    expected = {k: v for k, v in _tree(data).items() if "/" in k}
    assert _tree(out) == expected  # same names, same bytes (no re-encoding)
    again = hub.datasetdict_to_data(hub.read_hub_folder(folder), out)
    assert again["written"] == 0 and again["unchanged"] == 12

    card = DatasetCard((folder / "README.md").read_text())
    meta = card.data.to_dict()
    assert meta["license"] == "other" and meta["license_name"] == "mixed"  # three licences
    assert meta["task_categories"] == ["image-classification"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"}, {"split": "test", "path": "data/test-*.parquet"}]}]
    assert "| cat | 3 | 1 |" in card.text and "| Owl | 3 | 1 |" in card.text
    assert "| CC-BY-SA-4.0 | 1 |" in card.text and "| tuxpaint-stamps-default | 1 |" in card.text
    assert 'load_dataset("someone/lookalike-lib")' in card.text


def test_card_licence_and_sources_without_attribution(tmp_path: Path, data: Path) -> None:
    dd = hub.data_to_datasetdict(data)
    card = DatasetCard(hub_card.dataset_card(dd, "a/b"))
    assert card.data.license == "other" and "owner's licence" in card.text
    assert hub_card.hub_license(["CC0", "cc0"]) == "cc0-1.0" and hub_card.hub_license(["GPL-2"]) == "gpl-2.0"
    assert hub_card.hub_license(["CC0", "GPL-2"]) == "other" and hub_card.hub_license(["Made-Up"]) == "other"


class FakeHfApi:
    """Records what crosses the Hub boundary; reads the staged files while they exist."""

    calls: list[tuple[str, tuple, dict]] = []
    staged: dict[str, bytes] = {}

    def __init__(self, token=None, **kw) -> None:
        FakeHfApi.calls.append(("init", (), {"token": token, **kw}))

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", (repo_id,), kw))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kw):
        FakeHfApi.calls.append(("upload_folder", (), kw))
        FakeHfApi.staged = _tree(Path(kw["folder_path"]))
        shutil.copytree(kw["folder_path"], FakeHfApi.copy_to)
        return None


def test_push_calls_the_hub_with_repo_type_and_files(tmp_path: Path, data: Path, monkeypatch, caplog, capsys) -> None:
    import build_index
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    FakeHfApi.calls, FakeHfApi.copy_to = [], tmp_path / "uploaded"
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    rc = build_index.main(["-v", "push", "--repo-id", "someone/lookalike-lib", "--data", str(data), "--private"])
    assert rc == 0
    (name0, _, init), (name1, args1, create), (name2, _, upload) = FakeHfApi.calls
    assert (name0, name1, name2) == ("init", "create_repo", "upload_folder")
    assert init["token"] == TOKEN
    assert args1 == ("someone/lookalike-lib",)
    assert create == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "someone/lookalike-lib" and upload["repo_type"] == "dataset"
    assert upload["delete_patterns"] == ["data/*.parquet"]
    assert sorted(FakeHfApi.staged) == ["ATTRIBUTION.json", "README.md", "data/test-00000-of-00001.parquet",
                                        "data/train-00000-of-00001.parquet"]
    # What was uploaded is the library: read it back with pull's own reader.
    restored = tmp_path / "from-upload"
    hub.datasetdict_to_data(hub.read_hub_folder(FakeHfApi.copy_to), restored)
    assert _tree(restored) == {k: v for k, v in _tree(data).items() if "/" in k}
    out = capsys.readouterr()
    assert "https://huggingface.co/datasets/someone/lookalike-lib" in out.out
    assert TOKEN not in caplog.text + out.out + out.err


def test_push_without_a_token_says_what_to_do(data: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub.huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(hub, "HfApi", lambda **kw: pytest.fail("no Hub call without a token"))
    with pytest.raises(hub.HubError, match="HF_TOKEN or run `hf auth login`"):
        hub.push(data, "someone/x")


def test_pull_restores_data_from_the_repo(tmp_path: Path, data: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    hub.write_hub_folder(hub.data_to_datasetdict(data), repo, repo_id="someone/lib", data_dir=data)
    seen: dict = {}

    def fake_snapshot_download(repo_id, **kw):
        seen.update(kw, repo_id=repo_id)
        shutil.copytree(repo, kw["local_dir"], dirs_exist_ok=True)
        return kw["local_dir"]

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    out = tmp_path / "pulled"
    summary = hub.pull("someone/lib", out, revision="v1")
    assert seen["repo_id"] == "someone/lib" and seen["repo_type"] == "dataset" and seen["revision"] == "v1"
    assert summary["train"] == 9 and summary["test"] == 3 and summary["classes"] == 3
    assert _tree(out) == _tree(data)  # images, and ATTRIBUTION.json


@pytest.mark.parametrize("cls, file", [("cat", "../../evil.jpg"), ("../../evil", "x.jpg"), ("cat", ".hidden.jpg"),
                                       ("cat", "a/b.jpg"), ("..", "x.jpg")])
def test_pull_refuses_names_that_escape_data(tmp_path: Path, cls: str, file: str) -> None:
    import datasets
    jpeg = _encode(Image.new("RGB", (60, 60), "red"), "JPEG")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[cls, "zz"]),
                                  "file": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": jpeg, "path": None}] * 2, "label": [1, 0],
                                     "file": ["fine.jpg", file]}, features=features)
    folder = tmp_path / "repo"
    hub.write_hub_folder(datasets.DatasetDict({"train": ds}), folder, repo_id="evil/repo")
    out = tmp_path / "box" / "data"
    with pytest.raises(LibraryError, match="refusing"):
        hub.datasetdict_to_data(hub.read_hub_folder(folder), out)
    assert not (tmp_path / "box").exists()  # checked before anything was written
    assert not [p for p in tmp_path.rglob("*evil*") if p.is_file() and p.suffix == ".jpg"]


def test_push_with_index_uploads_a_searchable_index(tmp_path: Path, data: Path, monkeypatch) -> None:
    """`push --push-index` stages the built index under index/; the copy opens and answers queries."""
    import build_index
    from retrieval.indexing import build_index as build
    from retrieval.search import LookalikeIndex

    index = tmp_path / "index"
    build(data, index, model="none", evaluate=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    FakeHfApi.calls, FakeHfApi.copy_to = [], tmp_path / "uploaded"
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    assert build_index.main(["push", "--repo-id", "someone/lib", "--data", str(data),
                             "--push-index", str(index)]) == 0
    upload = FakeHfApi.calls[-1][2]
    assert upload["delete_patterns"] == ["data/*.parquet", "index/*"]
    staged = sorted(k for k in FakeHfApi.staged if k.startswith("index/"))
    assert "index/manifest.json" in staged and "index/evaluation.json" in staged
    assert any(k.startswith("index/pixels-") and k.endswith(".npy") for k in staged)
    restored = tmp_path / "restored"
    hub.datasetdict_to_data(hub.read_hub_folder(FakeHfApi.copy_to), restored)
    copy = LookalikeIndex.open(FakeHfApi.copy_to / "index", data_dir=restored)
    query = next((restored / "test").rglob("*.*"))
    hits, _ = copy.search(query, "pixel-l1", k=3)
    assert len(hits) == 3 and all(h.path.is_file() for h in hits)
    assert any(k.startswith("index/dba-pixel.") for k in staged)   # the re-ranked methods travel too
    hits, _ = copy.search(query, "pixel-cosine+dba+qe", k=3)
    assert len(hits) == 3
