"""evaluation.json through its one module (retrieval.evaluation_file): written atomically in the layout
the build has always written, read back or refused with the reason, and the best measured method."""
from __future__ import annotations

import json

import pytest

from retrieval import evaluation_file
from retrieval.evaluation_file import best_method, load, problem, read, write
from retrieval.methods import Method
from retrieval.paths import EVALUATION


def _scores(map_: float) -> dict:
    return {"p@1": map_, "p@5": map_, "p@10": map_, "map": map_, "map_ci": [map_ - 0.1, map_ + 0.1],
            "ap_per_class": {"a": map_}}


def _report() -> dict:
    kfold = {"protocol": "kfold", "folds": 5, "seed": 0, "queries": 40, "library": 32, "classes": 2,
             "pixel_size": 32, "model": None, "chance": {"p@1": 0.5, "p@5": 0.5, "p@10": 0.5, "map": 0.5},
             "rerank": {}, "methods": {"pixel-l1": _scores(0.6), "pixel-cosine": _scores(0.8)}}
    return {"queries": 8, "library": 32, "classes": 2, "pixel_size": 32, "model": None,
            "chance": {"p@1": 0.5, "p@5": 0.5, "p@10": 0.5, "map": 0.5},
            "methods": {"pixel-l1": _scores(0.7), "pixel-l2": _scores(0.9)}, "protocol": "test", "kfold": kfold}


def test_written_as_plain_json_and_read_back(tmp_path):
    report = _report()
    write(tmp_path, report)
    assert json.loads((tmp_path / EVALUATION).read_text("utf-8")) == report      # the layout on disk
    assert list(json.loads((tmp_path / EVALUATION).read_text("utf-8"))) == list(report)   # key order too
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVALUATION]             # no temporary file left
    assert read(tmp_path) == report and load(tmp_path).problem is None
    evaluation_file.remove(tmp_path)
    assert read(tmp_path) is None and load(tmp_path) == evaluation_file.Loaded(None, None)


@pytest.mark.parametrize("content, why", [
    ("[1, 2, 3]", "it holds a JSON list, not an object"),
    ("{oops", "not readable JSON: JSONDecodeError"),
    (json.dumps({"methods": {}}), "it has no numeric chance.map"),
    (json.dumps({"chance": {"map": 0.3}, "methods": ["pixel-l1"]}), "methods is a JSON list, not an object"),
    (json.dumps({"chance": {"map": 0.3}, "methods": {"pixel-l1": {"map": "high"}}}),
     "method 'pixel-l1' lacks numeric map and p@5 scores"),
    (json.dumps({"chance": {"map": 0.3}, "methods": {}, "kfold": [1]}), "kfold is not an object"),
    (json.dumps({"chance": {"map": 0.3}, "methods": {}, "kfold": {"methods": {"pixel-l1": {"p@5": 1}}}}),
     "kfold.method 'pixel-l1' lacks numeric map and p@5 scores"),
])
def test_an_unusable_file_is_read_as_none_with_the_reason(tmp_path, content, why):
    (tmp_path / EVALUATION).write_text(content, "utf-8")
    loaded = load(tmp_path)
    assert loaded.json is None and loaded.report is None and loaded.problem == why
    assert read(tmp_path) is None


def test_a_skipped_kfold_part_is_usable():
    report = _report()
    report["kfold"] = {"skipped": "library over 5000 images"}
    assert problem(report) is None


def test_the_web_tab_reads_through_the_same_module(tmp_path):
    from webui.texts import evaluation_problem, read_evaluation
    assert read_evaluation(tmp_path) is None
    write(tmp_path, _report())
    assert read_evaluation(tmp_path) == _report()
    (tmp_path / EVALUATION).write_text("[]", "utf-8")
    assert read_evaluation(tmp_path) is None
    assert evaluation_problem([]) == problem([]) == "it holds a JSON list, not an object"


def test_best_method_is_the_offered_one_with_the_highest_map(tmp_path):
    offered = [Method.parse(n) for n in ("pixel-l1", "pixel-l2", "pixel-cosine")]
    report = _report()
    assert best_method(report, offered) == Method.parse("pixel-l2")            # the test protocol first
    assert best_method(report, offered[:1]) == Method.parse("pixel-l1")        # only among those offered
    assert best_method(report, offered[2:]) == Method.parse("pixel-cosine")    # else measured under k-fold
    assert best_method(report, [Method.parse("clip-cosine")]) is None          # none of them measured
    assert best_method(report["kfold"], offered) == Method.parse("pixel-cosine")   # a k-fold report alone
    assert best_method(tmp_path, offered) is None and best_method(None, offered) is None
    write(tmp_path, report)
    assert best_method(tmp_path, offered) == Method.parse("pixel-l2")           # read from the index folder
    report["kfold"] = {"skipped": "why"}
    assert best_method(report, offered[2:]) is None
