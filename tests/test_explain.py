"""Why this result (retrieval.explain): the formulas give the search's own scores, the maps add up
to them, deep maps come from the embedder's network, bad input is refused, and the figure and the
`explain` command work."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_library, tiny_effnet_index
from retrieval.errors import ImageError, LookalikeError
from retrieval.explain import explain, explanation_figure, formula_score, library_image, numbers, score_terms
from retrieval.search import LookalikeIndex

PIXEL_METHODS = ("pixel-l1", "pixel-l2", "pixel-cosine", "pixel-corr")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data, index = tiny_effnet_index(tmp_path_factory.mktemp("explain"))
    return data, LookalikeIndex.open(index), next((data / "test").rglob("*.jpg"))


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_pixel_formula_and_cells_give_the_searchs_score(tiny, method):
    _, index, query = tiny
    hits, _ = index.search(query, method, 3)
    size = index.manifest.pixel_size
    for hit in hits:
        e = explain(index, query, hit.rel, method)
        assert e.score == pytest.approx(hit.score, rel=1e-12, abs=1e-12)
        assert e.query_map.shape == e.result_map.shape == (size, size)
        assert e.query_map.dtype == np.float32
        assert float(e.result_map.astype(np.float64).sum()) == pytest.approx(hit.score, rel=1e-5, abs=1e-6)
        assert e.signed == (method in ("pixel-cosine", "pixel-corr"))
        assert str(e.shown) == method and e.formula.startswith(method)


def test_formula_numbers_reproduce_each_metric(tiny):
    _, index, query = tiny
    q = index.query_vectors([Image.open(query).convert("RGB")], "pixel")[0]
    row = 0
    r = np.asarray(index.pixels.data[row])
    for metric in ("l1", "l2", "cosine", "corr"):
        expected = float(index.matrix("pixel").scores(q, metric)[row])
        assert formula_score(numbers(q, r, metric), metric) == pytest.approx(expected, rel=1e-9)
        assert float(score_terms(q, r, metric).sum()) == pytest.approx(expected, rel=1e-9)


def test_l1_formula_states_sum_count_and_mean_on_the_0_255_scale(tiny):
    _, index, query = tiny
    hit = index.search(query, "pixel-l1", 1)[0][0]
    e = explain(index, query, hit.rel, "pixel-l1")
    values = index.manifest.pixel_size ** 2 * 3
    assert f"{hit.score:,.0f}" in e.formula and f"{values:,}" in e.formula
    assert f"{hit.score / values:.4g}" in e.formula and "/255" in e.formula


def test_effnet_maps_are_feature_grids_whose_cells_add_up_to_the_score(tiny):
    _, index, query = tiny
    hits, _ = index.search(query, "effnet-cosine", 2)
    for hit in hits:
        e = explain(index, query, hit.rel, "effnet-cosine")
        assert e.score == pytest.approx(hit.score, abs=1e-6)
        assert e.query_map.ndim == e.result_map.ndim == 2 and min(e.result_map.shape) >= 2
        assert float(e.query_map.sum()) == pytest.approx(hit.score, abs=1e-4)
        assert float(e.result_map.sum()) == pytest.approx(hit.score, abs=2e-3)   # result re-decoded for its map
        assert not e.signed and e.query_box == (0.0, 0.0, 1.0, 1.0)


def test_gem_region_map_is_an_exact_decomposition_of_the_cosine():
    from retrieval.embedders.backbone import EffnetEmbedder, gem
    import torch
    rng = np.random.default_rng(0)
    fmap = rng.random((5, 6, 16)).astype(np.float32) * (rng.random((5, 6, 1)) > 0.3)
    other = rng.standard_normal(16).astype(np.float32)
    pooled = gem(torch.from_numpy(fmap).permute(2, 0, 1)[None]).numpy()[0]
    cos = float(pooled @ other / (np.linalg.norm(pooled) * np.linalg.norm(other)))
    assert float(EffnetEmbedder.region_map(fmap, other).sum()) == pytest.approx(cos, abs=1e-5)


def test_reranked_methods_show_their_base_metric(tiny):
    _, index, query = tiny
    method = next(m for m in index.methods if m.startswith("effnet-cosine+"))
    hit = index.search(query, method, 1)[0][0]
    e = explain(index, query, hit.rel, method)
    plain = explain(index, query, hit.rel, "effnet-cosine")
    assert str(e.method) == method and str(e.shown) == "effnet-cosine"
    assert e.score == pytest.approx(plain.score) and "base metric, effnet-cosine" in e.summary


def test_clip_patch_maps_come_from_the_search_vector(tmp_path, clip_checkpoint):
    from retrieval.indexing import build_index
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    build_index(data, tmp_path / "index", model=f"ViT-B-32:{clip_checkpoint}", evaluate=False, rerank="off")
    index = LookalikeIndex.open(tmp_path / "index")
    query = next((data / "test").rglob("*.jpg"))
    image = Image.open(query).convert("RGB")
    vector, local = index.embedder.spatial_features(image)   # type: ignore[attr-defined]
    assert local.shape == (7, 7, 512)
    np.testing.assert_allclose(vector, index.embedder.encode_images([image])[0], atol=1e-5)
    hit = index.search(query, "clip-cosine", 1)[0][0]
    e = explain(index, query, hit.rel, "clip-cosine")
    assert e.score == pytest.approx(hit.score, abs=1e-6)
    assert e.query_map.shape == e.result_map.shape == (7, 7)
    assert np.all(np.abs(e.result_map) <= 1.0 + 1e-5)
    left, _, right, _ = e.query_box   # the centre square of a landscape or portrait image
    assert 0.0 <= left <= right <= 1.0


def test_refusals_are_clear(tiny, tmp_path):
    data, index, query = tiny
    with pytest.raises(LookalikeError, match="is not an image of this library"):
        explain(index, query, "train/red/missing.jpg", "pixel-l1")
    with pytest.raises(LookalikeError, match="unknown method"):
        explain(index, query, index.rels[0], "clip-cosine")
    with pytest.raises(ImageError, match="not an image") as info:
        explain(index, b"this is not an image", index.rels[0], "effnet-cosine", name="upload.jpg")
    assert str(tmp_path) not in str(info.value) and "upload.jpg" in str(info.value)


def test_a_pixel_only_index_refuses_deep_methods(tmp_path):
    from retrieval.indexing import build_index
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    build_index(data, tmp_path / "index", model="none", evaluate=False)
    index = LookalikeIndex.open(tmp_path / "index")
    query = next((data / "test").rglob("*.jpg"))
    with pytest.raises(LookalikeError, match="unknown method 'effnet-cosine'"):
        explain(index, query, index.rels[0], "effnet-cosine")
    assert explain(index, query, index.rels[0], "pixel-l2").score >= 0


def test_the_figure_is_a_readable_deterministic_rgb_image(tiny):
    _, index, query = tiny
    hit = index.search(query, "effnet-cosine", 1)[0][0]
    images = Image.open(query).convert("RGB"), library_image(index, hit.rel)
    for method in ("pixel-corr", "effnet-cosine"):
        e = explain(index, query, hit.rel, method)
        fig = explanation_figure(e, *images)
        again = explanation_figure(e, *images)
        assert fig.mode == "RGB" and fig.width == 1000 and 500 <= fig.height <= 1200
        assert np.array_equal(np.asarray(fig), np.asarray(again))
        assert len(np.unique(np.asarray(fig).reshape(-1, 3), axis=0)) > 1000   # images and maps, not a blank page


def _run_cli(argv: list[str]) -> int:
    from retrieval.cli import make_parser
    from retrieval.cli_explain import register
    from retrieval.runner import run
    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "explain" not in sub.choices:   # until retrieval/cli.py registers it itself
        register(sub)
    return run(parser, argv)


def test_the_cli_writes_a_png_and_prints_the_formula(tiny, tmp_path, capsys):
    data, index, query = tiny
    hit = index.search(query, "pixel-l1", 1)[0][0]
    out = tmp_path / "figs" / "why.png"
    rc = _run_cli(["explain", str(query), str(data / hit.rel), "--index", str(index.index_dir),
                   "--method", "pixel-l1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and f"saved {out}" in printed and f"{hit.score:,.0f}" in printed
    assert Image.open(io.BytesIO(out.read_bytes())).format == "PNG"
    rc = _run_cli(["explain", str(query), hit.rel, "--index", str(index.index_dir), "--out", str(out)])
    assert rc == 0 and "effnet-cosine" in capsys.readouterr().out   # a rel, and the deep default


@pytest.mark.parametrize("result, out, message", [
    ("train/red/nope.jpg", "x.png", "is not an image of this library"),
    ("OUTSIDE", "x.png", "outside the library folder"),
    ("REL", "x.jpg", "give an output file ending in .png"),
])
def test_the_cli_refuses_bad_input(tiny, tmp_path, capsys, result, out, message):
    data, index, query = tiny
    if result == "OUTSIDE":
        result = str(tmp_path / "elsewhere.jpg")
        Image.new("RGB", (20, 20)).save(result)
    elif result == "REL":
        result = index.rels[0]
    rc = _run_cli(["explain", str(query), result, "--index", str(index.index_dir), "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err
    assert not (tmp_path / out).exists()


def test_a_corrupt_query_is_refused_by_the_cli(tiny, tmp_path, capsys):
    _, index, _ = tiny
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rc = _run_cli(["explain", str(bad), index.rels[0], "--index", str(index.index_dir), "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "broken.jpg" in capsys.readouterr().err


def test_result_paths_resolve_to_library_rels(tiny):
    from retrieval.cli_explain import result_rel
    data, index, _ = tiny
    rel = index.rels[0]
    assert result_rel(data, rel, index.holds) == rel
    assert result_rel(data, str(Path(data) / rel), index.holds) == rel
