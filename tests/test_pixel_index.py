"""Library scan, pixel index build, search CLI, evaluation and their errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from build_index import main as build_main
from retrieval.cli import main as cli_main
from retrieval.errors import ImageError, IndexError_, LibraryError, LookalikeError
from retrieval.evaluate import average_precision, evaluate_index
from retrieval.images import load_image
from retrieval.indexing import build_index
from retrieval.library import scan_split
from retrieval.manifest import Manifest
from retrieval.search import LookalikeIndex


# -- library scan ------------------------------------------------------------------------------

def test_scan_formats_hidden_files_and_order(tmp_path):
    root = tmp_path / "data"
    cls = root / "train" / "cat"
    cls.mkdir(parents=True)
    img = Image.new("RGB", (64, 64), (10, 20, 30))
    for ext in ("jpg", "jpeg", "png", "webp", "bmp", "gif"):
        img.save(cls / f"a.{ext}")
    img.save(cls / ".hidden.jpg")
    (cls / "notes.txt").write_text("not an image")
    (root / "train" / ".cache").mkdir()
    img.save(root / "train" / ".cache" / "x.jpg")
    items = scan_split(root, "train")
    assert [it.rel for it in items] == [f"train/cat/a.{e}" for e in sorted(("jpg", "jpeg", "png", "webp", "bmp", "gif"))]
    assert {it.label for it in items} == {"cat"}


def test_empty_and_missing_library_are_clear_errors(tmp_path):
    with pytest.raises(LibraryError, match="no library at"):
        scan_split(tmp_path / "nowhere", "train")
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(LibraryError, match="is empty"):
        scan_split(tmp_path / "data", "train")


def test_exif_orientation_gif_first_frame_and_transparency(tmp_path):
    # EXIF orientation 6 (rotate 90 CW): a 40x20 stored image displays as 20x40.
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    r, g, b = load_image(tmp_path / "anim.gif").getpixel((5, 5))
    assert r > 200 and b < 50
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"hello, not an image", "not an image"),
                                            (None, "corrupt or truncated")])
def test_bad_files_raise_specific_errors(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is None:
        buf = tmp_path / "good.jpg"
        Image.new("RGB", (200, 200), (1, 2, 3)).save(buf)
        content = buf.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(path)


# -- index build and search --------------------------------------------------------------------

def test_index_build_persists_pixels_and_manifest(tiny_library, tmp_path):
    (tiny_library / "train" / "red" / "broken.jpg").write_text("<html>404</html>")
    index = tmp_path / "index"
    summary = build_index(tiny_library, index, pixel_size=16, model="none", evaluate=False)
    assert summary["images"] == 18 and len(summary["skipped"]) == 1
    assert "broken.jpg" in summary["skipped"][0]["path"]
    m = Manifest.read(index)
    assert m.pixel_size == 16 and len(m.items) == 18
    assert all(len(it["sha256"]) == 64 for it in m.items)
    arr = np.load(index / m.pixels_file)
    assert arr.dtype == np.uint8 and arr.shape == (18, 16 * 16 * 3)
    assert "numpy" in m.versions


def test_rebuild_reuses_unchanged_rows_and_drops_deleted(tiny_library, tmp_path):
    index = tmp_path / "index"
    build_index(tiny_library, index, pixel_size=16, model="none", evaluate=False)
    (tiny_library / "train" / "red" / "train_0.jpg").unlink()
    shutil.copy(tiny_library / "test" / "blue" / "test_0.jpg", tiny_library / "train" / "blue" / "new.jpg")
    s = build_index(tiny_library, index, pixel_size=16, model="none", evaluate=False)
    assert s["pixels_reused"] == 17 and s["pixels_decoded"] == 1
    assert len(list(index.glob("pixels-*.npy"))) == 1  # the old array file is gone (dba-*.npy: re-ranking)
    rels = LookalikeIndex.open(index).rels
    assert "train/red/train_0.jpg" not in rels and "train/blue/new.jpg" in rels


def test_search_ranks_same_class_first_and_excludes_the_query_itself(tiny_library, tmp_path):
    index_dir = tmp_path / "index"
    build_index(tiny_library, index_dir, pixel_size=16, model="none", evaluate=False)
    index = LookalikeIndex.open(index_dir)
    for method in ("pixel-l1", "pixel-l2", "pixel-cosine", "pixel-corr"):
        hits, _ = index.search(tiny_library / "test" / "green" / "test_0.jpg", method, k=3)
        assert [h.label for h in hits] == ["green"] * 3
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=index.parse_method(method).higher_is_better)
    member = tiny_library / "train" / "green" / "train_2.jpg"
    hits, _ = index.search(member, "pixel-l1", k=6)
    assert "train/green/train_2.jpg" not in [h.rel for h in hits]
    hits, _ = index.search(member, "pixel-l1", k=6, exclude_self=False)
    assert hits[0].rel == "train/green/train_2.jpg" and hits[0].score == 0


def test_mismatched_requests_and_bad_inputs(tiny_library, tmp_path):
    index_dir = tmp_path / "index"
    with pytest.raises(IndexError_, match="no index at"):
        LookalikeIndex.open(index_dir)
    build_index(tiny_library, index_dir, pixel_size=16, model="none", evaluate=False)
    with pytest.raises(IndexError_, match="built at 16x16 pixels, not 32x32"):
        LookalikeIndex.open(index_dir, pixel_size=32)
    index = LookalikeIndex.open(index_dir, pixel_size=16)
    with pytest.raises(IndexError_, match="no embeddings"):
        index.use_model("effnet")
    with pytest.raises(LookalikeError, match="unknown method"):
        index.search(tiny_library / "test" / "red" / "test_0.jpg", "pixel-l3")
    with pytest.raises(LookalikeError, match="k must be"):
        index.search(tiny_library / "test" / "red" / "test_0.jpg", "pixel-l1", k=0)
    text = tmp_path / "query.jpg"
    text.write_text("definitely not a jpeg")
    with pytest.raises(ImageError, match="not an image"):
        index.search(text, "pixel-l1")
    with pytest.raises(LookalikeError, match="pixel size"):
        build_index(tiny_library, index_dir, pixel_size=2, model="none")


def test_killed_build_leaves_previous_index_readable(tiny_library, tmp_path, monkeypatch):
    index_dir = tmp_path / "index"
    build_index(tiny_library, index_dir, pixel_size=16, model="none", evaluate=False)
    before = Manifest.read(index_dir).items
    (tiny_library / "train" / "red" / "train_1.jpg").unlink()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Manifest, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_library, index_dir, pixel_size=16, model="none", evaluate=False)
    monkeypatch.undo()
    index = LookalikeIndex.open(index_dir)  # the old manifest and its array are still consistent
    assert index.manifest.items == before and len(index.rels) == 18


def test_average_precision():
    assert average_precision(np.array([1, 0, 1, 0], bool), 2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0, 0, 0], bool), 0) == 0.0
    assert average_precision(np.array([0, 1], bool), 3) == pytest.approx(0.5 / 3)


# -- the command lines -------------------------------------------------------------------------

def test_cli_index_search_evaluate(tiny_library, tmp_path, capsys):
    index = str(tmp_path / "index")
    assert build_main(["index", "--data", str(tiny_library), "--index", index,
                       "--pixel-size", "16", "--model", "none"]) == 0
    capsys.readouterr()
    query = str(tiny_library / "test" / "blue" / "test_1.jpg")
    plot = tmp_path / "plot.png"
    assert cli_main(["search", query, "--index", index, "--method", "pixel-corr", "-k", "4",
                     "--plot", str(plot)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# pixel-corr (higher is more similar)")
    rows = [line.split("\t") for line in out[2:6]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and all(r[1] == "blue" for r in rows)
    assert plot.stat().st_size > 1000 and Image.open(plot).size[0] > Image.open(plot).size[1]
    assert cli_main(["evaluate", "--index", index, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"] == 6 and {m for m in report["methods"] if "+" not in m} == {"pixel-l1", "pixel-l2", "pixel-cosine", "pixel-corr"}
    assert report["methods"]["pixel-l1"]["p@1"] > report["chance"]["p@1"]


def test_cli_errors_are_messages_not_tracebacks(tiny_library, tmp_path, capsys):
    assert cli_main(["search", str(tiny_library / "test" / "red" / "test_0.jpg"),
                     "--index", str(tmp_path / "missing")]) == 2
    assert "no index at" in capsys.readouterr().err
    assert build_main(["index", "--data", str(tmp_path / "empty"), "--index", str(tmp_path / "i"),
                       "--model", "none"]) == 2
    assert "no library at" in capsys.readouterr().err


def test_evaluation_on_the_sample_library_beats_chance(sample_pixel_index):
    report = evaluate_index(LookalikeIndex.open(sample_pixel_index))
    assert report["library"] >= 350 and report["classes"] >= 12
    best = max(r["p@5"] for r in report["methods"].values())
    assert best > 2 * report["chance"]["p@5"]


def test_the_command_line_speaks_plainly_on_a_pixel_only_index(tiny_library, tmp_path, capsys):
    """A text query gets "no text encoder" whatever --method names (not "unknown method"); the build
    says "evaluation skipped" once; counts agree with their nouns."""
    flat = tmp_path / "flat"                               # unlabelled: nothing to evaluate
    shutil.copytree(tiny_library / "train" / "red", flat)
    assert build_main(["index", "--data", str(flat), "--index", str(tmp_path / "i"), "--model", "none"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("evaluation skipped") == 1
    assert cli_main(["search", "--index", str(tmp_path / "i"), "--text", "a red apple",
                     "--method", "clip-cosine"]) == 2
    err = capsys.readouterr().err
    assert "no text encoder" in err and "unknown method" not in err and "--model ViT-B-32" in err
    shutil.copy(flat / "train_0.jpg", flat / "copy.jpg")    # one exact copy: one group
    assert build_main(["index", "--data", str(flat), "--index", str(tmp_path / "i"), "--model", "none",
                       "--no-eval"]) == 0
    capsys.readouterr()
    assert cli_main(["duplicates", "--index", str(tmp_path / "i")]) == 0
    assert capsys.readouterr().out.startswith("# 1 group of near-duplicates")
