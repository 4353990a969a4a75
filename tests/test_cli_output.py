"""The command line's text output: `compare` fits 100 columns, every column of numbers keeps one
format (same decimals, right-aligned in the plain-text tables), and counts take the right number."""
from __future__ import annotations

import builtins
import os
import re

import pytest
from PIL import Image

import build_index
from conftest import make_tiny_library
from retrieval.cli import main as cli_main, plural, report_skips
from retrieval.evaluate import format_table
from retrieval.runner import DONE_WITH_SKIPS

LONG = "a_class_whose_folder_name_is_far_longer_than_any_column"
CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), LONG: (30, 40, 220)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A three-class tiny library (one class with a long name) indexed with the offline backbone:
    pixel, deep exact, HNSW and re-ranked methods."""
    root = tmp_path_factory.mktemp("cli-output")
    data = make_tiny_library(root / "data", CLASSES, n_train=6, n_test=2)
    index = root / "index"
    assert build_index.main(["index", "--data", str(data), "--index", str(index), "--model", "effnet",
                             "--rerank", "on", "--no-eval"]) == 0
    return data, index


def _run(capsys, *argv: str) -> list[str]:
    capsys.readouterr()
    assert cli_main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def _method_blocks(lines: list[str], methods: list[str]) -> dict[str, tuple[str, list[str]]]:
    """compare's output as method -> (its line, its hit lines)."""
    blocks: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in lines[1:]:
        name = line.split(" ", 1)[0]
        if name in methods:
            current = name
            blocks[name] = (line, [])
        elif current and line.startswith("    "):
            blocks[current][1].append(line)
        else:
            current = None
    return blocks


def _methods(capsys, index) -> list[str]:
    return [line.split("\t")[0] for line in _run(capsys, "methods", "--index", str(index))]


@pytest.mark.parametrize("k", [5, 12])
def test_compare_fits_100_columns_and_keeps_every_row(tiny, capsys, k):
    data, index = tiny
    query = next((data / "test" / LONG).glob("*.jpg"))
    lines = _run(capsys, "compare", str(query), "--index", str(index), "-k", str(k))
    methods = _methods(capsys, index)
    assert {"pixel-l1", "effnet-l2", "effnet-hnsw-l2", "effnet-cosine+dba+qe"} <= set(methods)
    too_wide = [line for line in lines if len(line) > 100]
    assert not too_wide, too_wide
    assert lines[0].startswith(f"# query class: {LONG[:20]}") and f"top {k} of each method" in lines[0]
    blocks = _method_blocks(lines, methods)
    assert set(blocks) == set(methods)
    for method, (row, hits) in blocks.items():
        cells = " | ".join(h.strip() for h in hits).split(" | ")
        assert len(cells) == k, (method, cells)
        assert all(c[0] in "+-" for c in cells), cells   # the query's class is known: every hit marked
        assert f"P@{k} " in row and "AP " in row
    assert any("…" in line for line in lines)   # the long class name is shortened, not the line widened
    assert lines[-1].startswith("  ") and any(line.startswith("+ right class, - wrong class") for line in lines)


def test_compare_columns_keep_one_number_format(tiny, capsys):
    data, index = tiny
    query = next((data / "test" / "red").glob("*.jpg"))
    lines = _run(capsys, "compare", str(query), "--index", str(index), "-k", "6")
    methods = _methods(capsys, index)
    blocks = _method_blocks(lines, methods)
    rows = [row for row, _ in blocks.values()]
    # P@k with two decimals, AP with three, milliseconds with one, each right-aligned in its column.
    stats = [re.search(r"P@6 (\d\.\d+)  AP (\d\.\d+) +(\d+\.\d+) ms$", row) for row in rows]
    assert all(stats), rows
    assert {(len(s[1].split(".")[1]), len(s[2].split(".")[1]), len(s[3].split(".")[1])) for s in stats} == {(2, 3, 1)}
    assert len({row.index("P@6") for row in rows}) == 1 and len({len(row) for row in rows}) == 1
    for method, (_, hits) in blocks.items():
        scores = [cell.split(" ")[1] for cell in " | ".join(h.strip() for h in hits).split(" | ")]
        decimals = {len(s.split(".")[1]) if "." in s else 0 for s in scores}
        assert len(decimals) == 1, (method, scores)   # e.g. 17.00 beside 17.55, never 17
        if method in ("pixel-l1", "pixel-l2"):   # raw sums: whole numbers, thousands separated
            assert decimals == {0} and all(re.fullmatch(r"\d{1,3}(,\d{3})*", s) for s in scores), scores
        if method.endswith(("cosine", "corr", "+qe", "+dba")):
            assert all(re.fullmatch(r"[+-]\d\.\d{3}", s) for s in scores), scores


def test_search_scores_share_one_format_and_parse(tiny, capsys):
    data, index = tiny
    query = next((data / "test" / "green").glob("*.jpg"))
    for method in ("pixel-l1", "pixel-l2", "effnet-l1", "effnet-l2", "effnet-cosine"):
        lines = _run(capsys, "search", str(query), "--index", str(index), "--method", method, "-k", "8")
        at = lines.index("rank\tclass\tscore\tpath")
        scores = [line.split("\t")[2] for line in lines[at + 1:]]
        assert len(scores) == 8 and [float(s) for s in scores]   # plain numbers: no thousands separators
        assert len({len(s.split(".")[1]) if "." in s else 0 for s in scores}) == 1, (method, scores)


def test_evaluate_table_keeps_three_decimals_and_counts_right(tiny, capsys):
    _, index = tiny
    lines = _run(capsys, "evaluate", "--index", str(index), "--methods", "pixel-l1", "effnet-l2")
    cells = [c.strip() for line in lines if line.startswith("| ") and "---" not in line
             for c in line.strip("|").split("|")[1:5]]
    numbers = [c for c in cells if re.fullmatch(r"[\d.]+", c)]
    assert len(numbers) == 12 and all(re.fullmatch(r"\d\.\d{3}", c) for c in numbers), cells
    assert lines[-1] == "6 queries against 18 library images in 3 classes."
    one = {"chance": {"p@1": 0.5, "map": 0.5}, "methods": {"pixel-l1": {"p@1": 1.0, "map": 1.0}},
           "queries": 1, "library": 1, "classes": 1}
    assert format_table(one).endswith("\n\n1 query against 1 library image in 1 class.")
    assert format_table({**one, "queries": 1_204, "library": 60_000}).endswith(
        "1,204 queries against 60,000 library images in 1 class.")


def test_one_image_library_counts_in_the_singular(tmp_path, capsys):
    """A folder with one image (and a query beside it): 'indexed 1 image', top 1, nothing marked."""
    lib = tmp_path / "one"
    lib.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(lib / "only.jpg")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "query.jpg")
    capsys.readouterr()
    assert build_index.main(["index", "--data", str(lib), "--index", str(tmp_path / "i"), "--model", "none",
                             "--no-eval"]) == 0
    built = capsys.readouterr().out
    assert "indexed 1 image at" in built and "1 images" not in built
    lines = _run(capsys, "compare", str(tmp_path / "query.jpg"), "--index", str(tmp_path / "i"), "-k", "1")
    assert lines[0].startswith("# query class: unknown (") and lines[0].endswith("); top 1 of each method")
    hits = [line for line in lines if line.startswith("    ")]
    assert hits and all(line.strip().startswith("only.jpg ") for line in hits)   # the file name: no class
    assert not any(line.startswith("+ right class") for line in lines) and max(map(len, lines)) <= 100
    dupes = _run(capsys, "duplicates", "--index", str(tmp_path / "i"))
    assert dupes[0].startswith("# 0 groups of near-duplicates among 1 image (")


def test_a_build_with_one_unreadable_file_says_it_in_the_singular(tmp_path, capsys, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name, rgb in (("a.jpg", (200, 10, 10)), ("b.jpg", (10, 200, 10)), ("noread.jpg", (10, 10, 200))):
        Image.new("RGB", (40, 30), rgb).save(lib / name)
    noread, real_open = str(lib / "noread.jpg"), builtins.open

    def opener(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == noread:
            raise PermissionError(13, "Permission denied", noread)
        return real_open(file, *a, **kw)

    capsys.readouterr()
    monkeypatch.setattr(builtins, "open", opener)
    rc = build_index.main(["index", "--data", str(lib), "--index", str(tmp_path / "i"), "--model", "none", "--no-eval"])
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert rc == DONE_WITH_SKIPS
    assert "indexed 2 images at" in out and "(0 embedded, 1 skipped)" in out
    assert "1 of the skipped files could not be read (it disappeared" in out and "to index it (exit code" in out


def test_counts_take_their_number(capsys):
    assert [plural(n, "image") for n in (0, 1, 2, 1_204)] == ["0 images", "1 image", "2 images", "1,204 images"]
    assert plural(1, "query", "queries") == "1 query" and plural(3, "query", "queries") == "3 queries"
    summary = {"skipped": [], "unread": 0, "changed_during_build": ["b.jpg"]}
    assert report_skips(summary, "idx") == 0
    assert "1 file changed while the build read it (e.g. b.jpg)" in capsys.readouterr().out
    report_skips({**summary, "changed_during_build": ["b.jpg", "c.jpg"]}, "idx")
    assert "2 files changed while the build read them (e.g. b.jpg, c.jpg)" in capsys.readouterr().out
