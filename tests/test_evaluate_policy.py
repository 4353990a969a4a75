"""One evaluation policy (retrieval.evaluate.run) for the build and the command line: which protocol
scores an index, what is skipped and why, in words without command-line flags."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import make_tiny_library
from retrieval import evaluate
from retrieval.cli import main as cli_main
from retrieval.errors import LookalikeError
from retrieval.evaluate import run
from retrieval.evaluation_file import read
from retrieval.indexing import build_index
from retrieval.kfold import TOO_FEW_CLASSES
from retrieval.library import UNLABELLED
from retrieval.search import LookalikeIndex

CLI_WORDS = re.compile(r"(?<![\w-])--[a-z]|python -m|build_index\.py")


def _index(root: Path, shape: str) -> LookalikeIndex:
    """A pixel-only index of a tiny library: "split" (train/ + test/), "no test", "empty test" or
    "unlabelled" (the same images, loose in one folder)."""
    data = make_tiny_library(root / "data", n_train=4, n_test=2)
    if shape in ("no test", "empty test"):
        shutil.rmtree(data / "test")
    if shape == "empty test":
        (data / "test" / "red").mkdir(parents=True)
    if shape == "unlabelled":
        flat = root / "flat"
        flat.mkdir()
        for i, f in enumerate(sorted(data.rglob("*.jpg"))):
            f.rename(flat / f"{i}.jpg")
        data = flat
    build_index(data, root / "index", model="none", evaluate=False)
    return LookalikeIndex.open(root / "index")


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, LookalikeIndex]:
    return {shape: _index(tmp_path_factory.mktemp(shape.replace(" ", "-")), shape)
            for shape in ("split", "no test", "unlabelled")}


def _words(result: evaluate.Evaluation) -> list[str]:
    kfold = result.report.get("kfold", {}) if result.report else {}
    return [w for w in (result.note, result.skipped, kfold.get("skipped")) if w]


def test_with_a_test_split_each_protocol_gives_its_report(indexes):
    index = indexes["split"]
    auto = run(index)
    assert auto.protocol == "test" and auto.note is None and auto.skipped is None
    assert auto.report["queries"] == 6 and auto.report["kfold"]["queries"] == 18   # 12 train + 6 test pooled
    assert set(auto.report["methods"]) == set(index.methods)
    assert "kfold" not in run(index, "test").report
    assert run(index, "both").report["kfold"]["methods"].keys() == auto.report["kfold"]["methods"].keys()
    alone = run(index, "kfold")
    assert alone.protocol == "kfold" and alone.note is None and alone.tuning == []
    assert alone.report["methods"]["pixel-l1"] == auto.report["kfold"]["methods"]["pixel-l1"] | {
        "seconds": alone.report["methods"]["pixel-l1"]["seconds"]}      # the same scores, timings aside
    with pytest.raises(LookalikeError, match="evaluation protocol must be one of auto, test, kfold, both"):
        run(index, "every")


def test_above_the_kfold_limit_only_the_build_skips_kfold_and_says_why_in_plain_words(indexes, monkeypatch):
    monkeypatch.setattr(evaluate, "KFOLD_MAX_IMAGES", 5)
    split = run(indexes["split"])
    assert split.report["kfold"] == {"skipped": "library over 5 images; run the k-fold evaluation on its own "
                                                "to score it"}
    assert "methods" in run(indexes["split"], "both").report["kfold"]       # asked for, it still runs
    no_test = run(indexes["no test"])
    assert no_test.report is None and no_test.note is None
    assert "has no test split" in no_test.skipped and "k-fold is skipped above 5 images" in no_test.skipped
    assert run(indexes["no test"], "test").protocol == "kfold"
    assert not [w for r in (split, no_test) for w in _words(r) if CLI_WORDS.search(w)]


def test_without_a_test_split_kfold_instead_with_a_note(indexes):
    for protocol in ("auto", "test", "both"):
        result = run(indexes["no test"], protocol)
        assert result.protocol == "kfold" and result.report["queries"] == 12
        assert "has no test split" in result.note and "evaluated by k-fold" in result.note
    tuned = run(indexes["no test"], "test", tune=True)       # the tuning rides on a k-fold report alone
    assert [t["source"] for t in tuned.tuning] == ["pixel"]
    assert run(indexes["split"], "test", tune=True).tuning == []


def test_unlabelled_is_skipped_with_the_reason(indexes):
    for protocol in ("auto", "test", "both"):
        result = run(indexes["unlabelled"], protocol)
        assert result.report is None and result.skipped == UNLABELLED and result.note is None
    assert run(indexes["unlabelled"], "kfold").skipped == TOO_FEW_CLASSES
    assert not [w for p in evaluate.PROTOCOLS for w in _words(run(indexes["unlabelled"], p)) if CLI_WORDS.search(w)]


def test_an_empty_test_folder_no_longer_fails_the_build(tmp_path):
    """It used to raise a LibraryError from the evaluation after the index was written."""
    index = _index(tmp_path, "empty test")
    result = run(index)
    assert result.protocol == "kfold" and "holds no images" in result.note
    summary = build_index(index.data_dir, tmp_path / "again", model="none")
    assert "holds no images" in summary["evaluation_note"] and summary["evaluation"]["protocol"] == "kfold"
    assert read(tmp_path / "again") == json.loads(json.dumps(summary["evaluation"]))


def test_the_build_and_evaluate_save_write_the_same_file(indexes, tmp_path, capsys):
    built = tmp_path / "built"
    summary = build_index(indexes["split"].data_dir, built, model="none")
    assert set(summary) >= {"evaluation"} and not {"evaluation_note", "evaluation_skipped"} & set(summary)
    saved = tmp_path / "saved"
    shutil.copytree(built, saved)
    (saved / "evaluation.json").unlink()
    assert cli_main(["evaluate", "--index", str(saved), "--save"]) == 0
    out = capsys.readouterr().out
    assert "| pixel-l1 |" in out and "## k-fold" not in out      # it prints the protocol asked for

    def without_timings(report):
        for part in (report, report["kfold"]):
            for scores in part["methods"].values():
                scores.pop("ms_per_query", None)
                scores.pop("seconds", None)
        return report
    assert without_timings(read(saved)) == without_timings(read(built))


def test_cli_notes_go_to_stderr_with_json(indexes, capsys):
    assert cli_main(["evaluate", "--index", str(indexes["unlabelled"].index_dir), "--protocol", "kfold", "--json"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and TOO_FEW_CLASSES in err
    assert cli_main(["evaluate", "--index", str(indexes["no test"].index_dir), "--json", "--tune"]) == 0
    out, err = capsys.readouterr()
    assert "k-fold instead (--protocol kfold)" in err
    report = json.loads(out)
    assert report["protocol"] == "kfold" and [t["source"] for t in report["tune"]] == ["pixel"]
