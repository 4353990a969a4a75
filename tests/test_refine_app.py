"""Refine by feedback through the app's HTTP API (/refine, gradio_client), on the real sample library
with the offline backbone: the results marked wrong leave the list and the share of right results
does not fall; every malformed or out-of-bounds set of marks is refused with a short, clear message
that names no server path.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from retrieval.library import scan_split
from retrieval.refine import MAX_MARKS
from webui.handlers import MAX_MESSAGE_CHARS, NOT_AN_UPLOAD
from webui.refine_panel import Feedback, choices, merged
from webui.warmup import TabDefaults

from app_support import FILE_META, raw_call


@pytest.fixture(scope="module")
def deep(app) -> str:
    """The method the Deep tab starts on (the best measured one: re-ranked here)."""
    return str(TabDefaults.of(app.index).deep)


@pytest.fixture(scope="module")
def mixed(app, sample_data, deep):
    """A test image whose top 10 hold right and wrong results: (upload, rows)."""
    for item in scan_split(sample_data, "test"):
        query = handle_file(str(item.path(sample_data)))
        _, _, rows = app.client.predict(query, deep, 10, api_name="/search_deep")
        right = sum(r["correct"] for r in rows)
        if 3 <= right <= 8:
            return query, rows
    pytest.fail("no test image of the sample library has a mixed top 10")


def _p(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / len(rows)


def test_refine_drops_the_wrong_results_and_keeps_precision(app, deep, mixed):
    """The oracle marks the top 10 by class: refined, the wrong ones are gone, P@10 is not lower,
    and the right ones are still there; a second round with every mark so far runs too."""
    query, rows = mixed
    right = [r["file"] for r in rows if r["correct"]]
    wrong = [r["file"] for r in rows if not r["correct"]]
    gallery, status, refined = app.client.predict(query, deep, 10, right, wrong, api_name="/refine")
    files = [r["file"] for r in refined]
    assert len(refined) == len(gallery) == 10 and not set(files) & set(wrong)
    assert _p(refined) >= _p(rows) and set(right) <= set(files)
    assert f"refined by {len(right)} right, {len(wrong)} wrong" in status and "P@10" in status
    more = right + [r["file"] for r in refined if r["correct"] and r["file"] not in right]
    less = wrong + [r["file"] for r in refined if not r["correct"]]
    _, status2, again = app.client.predict(query, deep, 10, more, less, api_name="/refine")
    assert not {r["file"] for r in again} & set(less) and _p(again) >= _p(rows)
    assert f"refined by {len(more)} right, {len(less)} wrong" in status2


def _refused(app, deep, more, less, *, query=None, method=None, k=5) -> str:
    with pytest.raises(AppError) as err:
        app.client.predict(query or handle_file(str(app.index.paths[0])), method or deep, k, more, less,
                           api_name="/refine")
    text = str(err.value)
    assert len(text) <= MAX_MESSAGE_CHARS + 100
    for folder in (app.index.index_dir, app.index.data_dir):
        assert str(Path(folder).resolve()) not in text
    return text


def test_refine_refuses_marks_it_cannot_use(app, deep):
    rels = app.index.rels
    cases = {
        "no marks": ([], [], "no results are marked"),
        "unknown result": (["train/no-such-class/none.jpg"], [], "is not an image of this library"),
        "a path outside the library": (["/etc/hostname"], [], "is not an image of this library"),
        "a library file by its server path": ([str(app.index.paths[1])], [], "is not an image of this library"),
        "too many marks": (rels[1:MAX_MARKS + 1], rels[MAX_MARKS + 1:MAX_MARKS + 3], f"at most {MAX_MARKS} marks"),
        "too many in one list": (rels[1:MAX_MARKS + 5], [], f"at most {MAX_MARKS} marks"),
        "both right and wrong": ([rels[1], rels[2]], [rels[2]], "marked both right and wrong"),
        "not a list": (rels[1], [], "must be a list of library images, not text"),
        "not text": ([3], [], "(text), not a number"),
        "a list in a list": ([[rels[1]]], [], "(text), not a JSON list"),
        "a very long name": (["x" * 100_000], [], "is not an image of this library"),
        "an object": ({"path": rels[1]}, [], "must be a list of library images, not a JSON object"),
    }
    for what, (more, less, expected) in cases.items():
        text = _refused(app, deep, more, less)
        assert expected in text, (what, text)
    assert "x" * 200 not in _refused(app, deep, ["x" * 100_000], [])   # a user's value is echoed cut short


def test_refine_checks_the_query_method_and_k_as_a_search_does(app, deep):
    rel = app.index.rels[1]
    served = {"path": str(app.index.paths[2]), "meta": FILE_META}
    assert raw_call(app.url, "refine", [served, deep, 5, [rel], []]) == ("HTTP 422", NOT_AN_UPLOAD)
    assert "unknown deep method 'pixel-l1'" in _refused(app, deep, [rel], [], method="pixel-l1")
    assert "k must be a whole number" in _refused(app, deep, [rel], [], k=0)


def test_marks_accumulate_over_rounds_and_a_page_sets_its_own():
    """The page's checkboxes set the marks of the results on it (unchecking clears one); the marks
    of results no longer shown stay as they were."""
    rows = [{"rank": 1, "class": "bird", "file": "train/bird/a.png"},
            {"rank": 2, "class": "", "file": "train/x/b.png"}]
    assert choices(rows) == [("#1 bird", "train/bird/a.png"), ("#2 b.png", "train/x/b.png")]
    before = Feedback(("train/bird/a.png", "old/right.png"), ("old/wrong.png",), rounds=1)
    more, less = merged(before, rows, [], ["train/x/b.png"])
    assert more == ["old/right.png"] and less == ["old/wrong.png", "train/x/b.png"]
    assert Feedback(tuple(more), tuple(less), 2).line().startswith("Round 2 · 1 right, 2 wrong marked")
