"""The library maps (retrieval.projection, retrieval.map_figure, the `map` command): stored at
build time, reused or refitted as the library changes, placed queries, the neighbour agreement
against a brute-force count, clear errors, clicks mapped back to rows."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_library, tiny_effnet_index
from retrieval import projection
from retrieval.cli_map import register
from retrieval.errors import IndexError_, LookalikeError, Remedy
from retrieval.indexing import build_index
from retrieval.map_figure import map_figure, point_at
from retrieval.projection import NEIGHBOURS, load_maps, locate
from retrieval.search import LookalikeIndex


@pytest.fixture(scope="module")
def effnet_index(tmp_path_factory):
    return tiny_effnet_index(tmp_path_factory.mktemp("map-effnet"))


def pixel_index(root, n_train=10):
    data = make_tiny_library(root / "data", n_train=n_train, n_test=2)
    build_index(data, root / "index", model="none", evaluate=False)
    return data, root / "index"


def brute_force_agreement(vectors: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """Each row's 5 nearest other rows by a plain double loop's distances, ties by row."""
    x = vectors.astype(np.float64)
    shares = []
    for i in range(len(x)):
        if metric == "l1":
            d = np.abs(x - x[i]).sum(axis=1)
        else:
            d = -(x @ x[i]) / (np.linalg.norm(x, axis=1) * np.linalg.norm(x[i]))
        order = [j for j in np.lexsort((np.arange(len(x)), d)) if j != i][:NEIGHBOURS]
        shares.append(np.mean(labels[order] == labels[i]))
    return float(np.mean(shares))


def test_maps_are_stored_at_build_time_with_the_agreement(effnet_index):
    _, index_dir = effnet_index
    index = LookalikeIndex.open(index_dir)
    maps = load_maps(index)
    assert [m.source for m in maps] == ["pixel", "effnet"]
    assert [m.title for m in maps] == ["Pixels (32x32)", "Deep features (effnet)"]
    for m in maps:
        assert m.xy.shape == (len(index.rels), 2) and m.xy.dtype == np.float32
        assert (index_dir / index.manifest.maps.sources[m.source].file).is_file()
        assert m.measured_on == len(index.rels)
    pixels = np.asarray(index.matrix("pixel").data)
    deep = np.asarray(index.matrix("effnet").data)
    assert maps[0].agreement == pytest.approx(brute_force_agreement(pixels, index.labels, "l1"))
    assert maps[1].agreement == pytest.approx(brute_force_agreement(deep, index.labels, "cosine"))


def test_a_rebuild_without_changes_reuses_the_maps(tmp_path, monkeypatch):
    _, index_dir = pixel_index(tmp_path)
    before = load_maps(LookalikeIndex.open(index_dir))[0].xy

    def refit(*args, **kwargs):
        raise AssertionError("the map was fitted again")
    monkeypatch.setattr(projection, "fit_map", refit)
    build_index(tmp_path / "data", index_dir, model="none", evaluate=False)
    after = LookalikeIndex.open(index_dir)
    np.testing.assert_array_equal(load_maps(after)[0].xy, before)
    assert len(list(index_dir.glob("map-pixel.*.npy"))) == 1   # the old file was removed


def test_a_changed_library_refits_its_map(tmp_path, monkeypatch):
    data, index_dir = pixel_index(tmp_path)
    fits = []
    real = projection.fit_map
    monkeypatch.setattr(projection, "fit_map", lambda *a, **kw: fits.append(1) or real(*a, **kw))
    Image.new("RGB", (80, 80), (250, 250, 0)).save(data / "train" / "red" / "new.png")
    build_index(data, index_dir, model="none", evaluate=False)
    index = LookalikeIndex.open(index_dir)
    assert fits == [1]
    assert load_maps(index)[0].xy.shape == (len(index.rels), 2) and "train/red/new.png" in index.rels


def test_a_library_image_is_placed_on_its_own_point_and_a_copy_near_it(tmp_path):
    data, index_dir = pixel_index(tmp_path)
    index = LookalikeIndex.open(index_dir)
    xy = load_maps(index)[0].xy
    rel = "train/green/train_3.jpg"
    row = index.rels.index(rel)
    own = locate(index, data / rel, k=3)[0]
    np.testing.assert_array_equal(own.xy, xy[row])
    assert row not in own.top_rows and len(own.top_rows) == 3   # the search's top k leaves the query out
    copy = tmp_path / "copy.png"
    Image.open(data / rel).save(copy)   # other bytes, nearly the same pixels: not a library image
    placed = locate(index, copy, k=5)[0]
    assert placed.top_rows[0] == row
    spread = np.median(np.linalg.norm(xy[:, None] - xy[None], axis=-1))
    assert np.linalg.norm(placed.xy - xy[row]) < spread / 2


def test_agreement_without_classes_is_none(tmp_path):
    data = make_tiny_library(tmp_path / "data", n_train=5, n_test=0)
    build_index(data, tmp_path / "index", model="none", evaluate=False, labels="none")
    maps = load_maps(LookalikeIndex.open(tmp_path / "index"))
    assert maps[0].agreement is None and maps[0].measured_on == 0


def test_an_index_without_maps_or_with_a_damaged_map_says_rebuild(tmp_path):
    _, index_dir = pixel_index(tmp_path)
    record = LookalikeIndex.open(index_dir).manifest.maps.sources["pixel"]
    path = index_dir / record.file
    np.save(path, np.load(path) + 1)   # same shape, other values
    with pytest.raises(IndexError_, match="checksum") as err:
        load_maps(LookalikeIndex.open(index_dir))
    assert err.value.remedy is Remedy.REBUILD_INDEX
    path.unlink()
    with pytest.raises(IndexError_, match=f"map file {record.file} is missing"):
        load_maps(LookalikeIndex.open(index_dir))
    manifest = json.loads((index_dir / "manifest.json").read_text())
    del manifest["maps"]   # an index built before maps: it still opens
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match="no map of the library") as err:
        load_maps(LookalikeIndex.open(index_dir))
    assert err.value.remedy is Remedy.REBUILD_INDEX


def test_a_library_too_small_for_a_map_says_so(tmp_path):
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=0)
    build_index(data, tmp_path / "index", model="none", evaluate=False)
    with pytest.raises(LookalikeError, match="has 6 images; a map needs at least 10"):
        load_maps(LookalikeIndex.open(tmp_path / "index"))


def test_a_click_on_a_point_gives_its_row(effnet_index):
    _, index_dir = effnet_index
    index = LookalikeIndex.open(index_dir)
    maps = load_maps(index)
    image, geometry = map_figure(maps, list(index.labels))
    assert image.size == geometry.size and len(geometry.panels) == 2
    for panel in geometry.panels:
        for row, (x, y) in enumerate(panel.points):
            others = np.delete(np.linalg.norm(panel.points - (x, y), axis=1), row)
            if others.min() > 1:   # not hidden under another point
                assert point_at(geometry, float(x), float(y)) == row
    assert point_at(geometry, 0, 0) is None   # outside the panels
    left, top, right, bottom = geometry.panels[0].box
    grid = [(x, y) for x in np.linspace(left + 1, right - 1, 40) for y in np.linspace(top + 1, bottom - 1, 40)]
    far = [p for p in grid if np.linalg.norm(geometry.panels[0].points - p, axis=1).min() > 2 * geometry.reach]
    assert far and all(point_at(geometry, *p) is None for p in far)


def test_the_map_command_writes_a_png_with_the_query(effnet_index, tmp_path, capsys):
    data, index_dir = effnet_index
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "maps" / "map.png"
    query = next((data / "test" / "blue").iterdir())
    args = parser.parse_args(["map", "--index", str(index_dir), "--out", str(out), "--query", str(query), "-k", "3"])
    assert args.func(args) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 500
    printed = capsys.readouterr().out
    assert "Pixels (32x32): 5-NN share the class:" in printed and "Deep features (effnet): 5-NN share" in printed
    assert printed.count("the query's top 3:") == 2
