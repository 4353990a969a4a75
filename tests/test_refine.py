"""Refining a search by feedback (retrieval.refine): the Rocchio update, the ranking it gives, what
is left out, every refusal, and the command line's --more-like / --less-like."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_effnet_index
from retrieval.cli import main as cli_main
from retrieval.errors import ImageError, LookalikeError
from retrieval.refine import MAX_MARKS, Weights, refine_search, rel_of, rocchio
from retrieval.runner import USER_ERROR
from retrieval.search import LookalikeIndex


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data, index = tiny_effnet_index(tmp_path_factory.mktemp("refine"))
    return data, index, LookalikeIndex.open(index)


def _rels(index: LookalikeIndex, label: str) -> list[str]:
    return [r for r, lab in zip(index.rels, index.labels) if lab == label]


def test_rocchio_is_the_affine_combination_and_keeps_pixels_in_range():
    q, right, wrong = np.array([10.0, 200.0]), np.array([[30.0, 100.0], [50.0, 100.0]]), np.array([[250.0, 0.0]])
    got = rocchio(q, right, wrong, True, Weights(1.0, 2.0, 0.5))
    # (1 q + 2 mean(right) - 0.5 wrong) / (1 + 2 - 0.5)
    assert got == pytest.approx(np.clip((q + 2 * np.array([40.0, 100.0]) - 0.5 * wrong[0]) / 2.5, 0, 255))
    assert rocchio(np.array([0.0, 0.0]), np.zeros((0, 2)), np.array([[255.0, 255.0]]), True,
                   Weights(1.0, 1.0, 0.9)).min() >= 0   # would go below 0 without the clip
    deep = rocchio(np.array([3.0, 0.0]), np.array([[0.0, 5.0]]), np.zeros((0, 2)), False, Weights(1.0, 1.0, 0.0))
    assert deep == pytest.approx([0.5, 0.5])   # embeddings at unit length before they are combined
    with pytest.raises(LookalikeError, match="gamma < alpha"):
        Weights(1.0, 1.0, 1.0)


@pytest.mark.parametrize("method", ["effnet-cosine", "effnet-cosine+dba+qe", "pixel-l1", "pixel-cosine+dba+qe"])
def test_marks_move_the_ranking_toward_the_class_marked_right(tiny, method):
    data, _, index = tiny
    query = data / "test" / "red" / "test_0.jpg"
    green = _rels(index, "green")
    marked, others = green[:2], green[2:]
    n = len(index.rels)
    plain = [h.rel for h in index.search(query, method, n)[0]]
    refined, _ = refine_search(index, query, marked, _rels(index, "red")[:1], method, n)
    got = [h.rel for h in refined]

    def first(ranking: list[str]) -> int:
        return min(ranking.index(r) for r in others)
    assert first(got) < first(plain)   # the green images nobody marked came up
    assert np.mean([got.index(r) for r in others]) < np.mean([plain.index(r) for r in others])


def test_wrong_marks_and_the_query_are_left_out_right_marks_stay(tiny):
    _, _, index = tiny
    red = _rels(index, "red")
    query = index.paths[index.rels.index(red[0])]   # a library image: it is not its own result
    right, wrong = red[1:3], _rels(index, "blue")[:2] + _rels(index, "green")[:1]
    hits, _ = refine_search(index, query, right, wrong, "effnet-cosine+dba+qe", len(index.rels))
    rels = [h.rel for h in hits]
    assert red[0] not in rels
    assert not set(wrong) & set(rels)
    assert set(right) <= set(rels)
    assert len(rels) == len(index.rels) - 1 - len(wrong)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_every_refusal_names_what_is_wrong(tiny):
    data, _, index = tiny
    query = data / "test" / "red" / "test_0.jpg"
    rel = index.rels[0]
    cases = [
        (([], []), "no results are marked"),
        (([f"x{i}.jpg" for i in range(MAX_MARKS + 1)], []), f"{MAX_MARKS + 1} images are marked; at most {MAX_MARKS}"),
        ((["train/red/nope.jpg"], []), "'train/red/nope.jpg' is not an image of this library"),
        (([rel], [rel]), f"{rel!r} is marked both right and wrong"),
        (("train/red/x.jpg", []), "a list of library images"),
        (([3], []), "not int"),
    ]
    for (more, less), message in cases:
        with pytest.raises(LookalikeError, match=message.replace("+", r"\+").replace(".", r"\.")) as exc:
            refine_search(index, query, more, less, "effnet-cosine")
        assert str(data) not in str(exc.value) and "--" not in str(exc.value)
    with pytest.raises(LookalikeError) as exc:
        refine_search(index, query, ["a" * 5000], [], "effnet-cosine")
    assert len(str(exc.value)) < 200   # a long mark is cut in the message
    with pytest.raises(ImageError):
        refine_search(index, b"this is not an image", [rel], [], "effnet-cosine", name="upload.jpg")
    with pytest.raises(LookalikeError, match="unknown method"):
        refine_search(index, query, [rel], [], "effnet-nope")


def test_rel_of_takes_a_library_path_or_a_rel(tiny):
    data, _, index = tiny
    rel = index.rels[3]
    assert rel_of(index, rel) == rel
    assert rel_of(index, data / rel) == rel
    assert rel_of(index, "elsewhere/x.jpg") == "elsewhere/x.jpg"


def test_cli_more_like_and_less_like(tiny, capsys):
    data, index_dir, index = tiny
    query = data / "test" / "red" / "test_0.jpg"
    green, red = _rels(index, "green"), _rels(index, "red")
    capsys.readouterr()
    code = cli_main(["search", str(query), "--index", str(index_dir), "--method", "effnet-cosine", "-k", "12",
                     "--more-like", str(data / green[0]), "--more-like", green[1], "--less-like", red[0]])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == "# refined with 2 images marked right and 1 image marked wrong"
    rows = [line.split("\t") for line in out if line[:1].isdigit()]
    assert len(rows) == 11 and not any(r[3].endswith(red[0]) for r in rows)
    for argv, message in ((["--more-like", "nowhere/x.jpg"], "'nowhere/x.jpg' is not an image of this library"),
                          (["--more-like", green[0], "--less-like", str(data / green[0])], "both right and wrong")):
        code = cli_main(["search", str(query), "--index", str(index_dir), "--method", "effnet-cosine", *argv])
        err = capsys.readouterr().err
        assert code == USER_ERROR and err.startswith("error: ") and message in err
    code = cli_main(["search", "--text", "red", "--index", str(index_dir), "--more-like", green[0]])
    assert code == USER_ERROR and "refine an IMAGE query" in capsys.readouterr().err
