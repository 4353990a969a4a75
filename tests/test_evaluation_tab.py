"""The Evaluation and About tabs: the winner first, then the chart, then the tables with the best row
highlighted; every fallback (no report, a malformed one, an unlabelled library, k-fold only); About
starts with how to use the app and says why there is no Text tab.

Each test gets a fresh tiny pixel-only index (a fraction of a second); where only the report matters,
a hand-made evaluation.json is written into it with retrieval.evaluation_file's writer.
"""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import gradio as gr
import pytest

from retrieval.evaluation_file import write
from retrieval.indexing import build_index
from retrieval.paths import EVALUATION
from retrieval.records import EmbedderRecord
from retrieval.search import LookalikeIndex
from webui.evaluation import (BAR_INCHES, NO_FIGURES, evaluation_tab, lead_scores, map_figure, winner_sentence)
from webui.texts import BEST_MARK, about_markdown, evaluation_markdown, how_to_use, no_text_tab, scores_table

from conftest import make_tiny_library

COMMANDS = re.compile(r"python [a-z]|\s--[a-z]|build_index|/tmp/")   # nothing a visitor cannot use
CHANCE = {"p@1": 0.1, "p@5": 0.1, "p@10": 0.1, "map": 0.1}


def _scores(m: float) -> dict:
    return {"p@1": m, "p@5": m, "p@10": m, "map": m, "map_ci": [m - 0.05, m + 0.05],
            "ap_per_class": {"red": m, "green": m, "blue": m}}


def _kfold(maps: dict[str, float]) -> dict:
    return {"protocol": "kfold", "folds": 5, "seed": 0, "queries": 24, "library": 19, "classes": 3,
            "pixel_size": 32, "model": "effnet:efficientnet-lite0", "chance": CHANCE, "rerank": {},
            "methods": {n: _scores(m) for n, m in maps.items()}}


def _report(maps: dict[str, float], kfold: dict[str, float] | None = None) -> dict:
    report = {"queries": 6, "library": 18, "classes": 3, "pixel_size": 32, "model": "effnet:efficientnet-lite0",
              "chance": CHANCE, "methods": {n: _scores(m) for n, m in maps.items()}, "protocol": "test"}
    report["kfold"] = _kfold(kfold) if kfold else {"skipped": "not asked for"}
    return report


SPLIT = {"pixel-l1": 0.3, "effnet-cosine": 0.55, "effnet-corr": 0.7, "effnet-cosine+dba+qe": 0.65}
KFOLD = {"pixel-l1": 0.2, "pixel-cosine+dba+qe": 0.18, "effnet-cosine": 0.5, "effnet-hnsw-cosine": 0.5,
         "effnet-cosine+dba+qe": 0.6}


@pytest.fixture
def index_dir(tmp_path) -> Path:
    """A tiny labelled library (train and test) indexed on pixels, with its own evaluation.json."""
    data = make_tiny_library(tmp_path / "data", n_train=3, n_test=1)
    build_index(data, tmp_path / "index", model="none")
    return tmp_path / "index"


def _tab(index_dir: Path) -> list[tuple[str, str, object]]:
    """The Evaluation tab built inside a Tab of a small Blocks: (type, elem_id, value) in page order."""
    index = LookalikeIndex.open(index_dir)
    with gr.Blocks() as demo:
        with gr.Tab("Evaluation"):
            evaluation_tab(index)
    return [(c["type"], c["props"].get("elem_id"), c["props"].get("value")) for c in demo.config["components"]
            if c["type"] in ("markdown", "plot")]


# -- the winner sentence ------------------------------------------------------------------------------

def test_the_winner_sentence_leads_with_kfold_and_says_by_how_much():
    lead = lead_scores(_report(SPLIT, KFOLD))
    assert lead is not None and lead.what == "5-fold, 24 queries"
    assert winner_sentence(lead) == (
        "**effnet-cosine+dba+qe** finds the right class best here: mAP 0.60, 1.2× effnet-cosine without "
        "re-ranking and 3.0× the best pixel metric, pixel-l1 (5-fold, 24 queries).")


def test_without_kfold_the_winner_is_the_test_splits():
    lead = lead_scores(_report(SPLIT))
    assert lead is not None and lead.what == "test split, 6 queries"
    assert winner_sentence(lead) == ("**effnet-corr** finds the right class best here: mAP 0.70, "
                                     "2.3× the best pixel metric, pixel-l1 (test split, 6 queries).")


def test_a_kfold_only_report_leads_with_itself():
    lead = lead_scores(_kfold({"pixel-l1": 0.3, "pixel-l2": 0.2}) | {"queries": 1})
    assert lead is not None
    assert winner_sentence(lead) == ("**pixel-l1** finds the right class best here: mAP 0.30, 3.0× chance "
                                     "(5-fold, 1 query).")


def test_a_pixel_winner_is_measured_against_its_plain_method_and_chance():
    lead = lead_scores(_report({"pixel-cosine": 0.2, "pixel-cosine+dba+qe": 0.25, "pixel-l1": 0.22}))
    assert lead is not None and winner_sentence(lead) == (
        "**pixel-cosine+dba+qe** finds the right class best here: mAP 0.25, 1.2× pixel-cosine without "
        "re-ranking and 2.5× chance (test split, 6 queries).")


def test_of_equal_scores_the_first_wins_and_a_reranked_pixel_method_is_named_a_method():
    lead = lead_scores(_report({"pixel-cosine+dba": 0.3, "pixel-l1": 0.2, "effnet-cosine": 0.6,
                                "effnet-hnsw-cosine": 0.6}))
    assert lead is not None and winner_sentence(lead).startswith("**effnet-cosine** finds")
    assert "2.0× the best pixel method, pixel-cosine+dba (" in winner_sentence(lead)


def test_no_scores_no_lead():
    assert lead_scores(None) is None
    assert lead_scores(_report({})) is None


# -- the tables -------------------------------------------------------------------------------------

def test_the_table_highlights_the_best_row_only_with_one_format_per_column():
    table = scores_table(_report(SPLIT))
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert rows[0] == (f"| **effnet-corr** {BEST_MARK} | **0.700** | **0.700** | **0.700** | **0.700** "
                       "| **0.650–0.750** |")
    assert table.count(BEST_MARK) == 1 and table.count("**") == 12
    assert [r.split(" | ")[0] for r in rows] == ["| **effnet-corr** ★ best", "| effnet-cosine+dba+qe",
                                                 "| effnet-cosine", "| pixel-l1", "| *chance*"]
    for row in rows:   # P@1, P@5, P@10, mAP: three decimals; the interval: two of them
        cells = [c.strip("* ") for c in row.strip("|").split("|")[1:]]
        assert all(re.fullmatch(r"\d\.\d{3}", c) for c in cells[:4]), row
        assert re.fullmatch(r"(\d\.\d{3}–\d\.\d{3})?", cells[4]), row
    assert table.endswith("6 queries against 18 library images in 3 classes.")


def test_a_name_outside_the_grammar_is_never_the_marked_best():
    table = scores_table(_report({"pixel-l1": 0.3, "my-own-method": 0.9}))
    assert f"**pixel-l1** {BEST_MARK}" in table and "| my-own-method | 0.900" in table


# -- the tab, in order --------------------------------------------------------------------------------

def test_the_tab_shows_the_winner_then_the_chart_then_the_tables(index_dir):
    write(index_dir, _report(SPLIT, KFOLD))
    shown = _tab(index_dir)
    assert [(t, e) for t, e, _ in shown] == [("markdown", "eval-winner"), ("plot", "eval-map"),
                                             ("markdown", "eval-tables"), ("plot", "eval-ap-class")]
    assert str(shown[0][2]).startswith("**effnet-cosine+dba+qe** finds the right class best here")
    tables = str(shown[2][2])
    assert tables.index("### 5-fold") < tables.index("### Test split") and tables.count(BEST_MARK) == 2
    assert tables.index("wins with mAP") < tables.index("| method |")   # why, then the numbers
    assert not COMMANDS.search(str(shown[0][2]) + tables)


def test_the_tab_over_a_real_evaluation(index_dir):
    """The build's own evaluation.json (pixels only): the winner is a pixel metric, against chance."""
    shown = _tab(index_dir)
    assert [e for _, e, _ in shown][:3] == ["eval-winner", "eval-map", "eval-tables"]
    assert re.fullmatch(r"\*\*pixel-[a-z0-9+]+\*\* finds the right class best here: mAP \d\.\d\d, .*chance "
                        r"\((5-fold, \d+ queries|test split, \d+ queries)\)\.", str(shown[0][2]))


def test_without_evaluation_json_the_tab_says_so_and_draws_nothing(index_dir):
    (index_dir / EVALUATION).unlink()
    shown = _tab(index_dir)
    assert [e for _, e, _ in shown] == ["eval-tables"]
    assert "No `evaluation.json`" in str(shown[0][2]) and not COMMANDS.search(str(shown[0][2]))


@pytest.mark.parametrize("text", ["{not json", "[]", '{"chance": {"map": 0.1}, "methods": {"x": 1}}'])
def test_a_malformed_evaluation_json_gives_the_note_only(index_dir, text):
    (index_dir / EVALUATION).write_text(text, "utf-8")
    shown = _tab(index_dir)
    assert [e for _, e, _ in shown] == ["eval-tables"]
    assert "is malformed" in str(shown[0][2]) and "Search works all the same" in str(shown[0][2])


def test_a_name_outside_the_grammar_gives_a_note_instead_of_figures(index_dir):
    write(index_dir, _report({"pixel-l1": 0.3, "my-own-method": 0.9}))
    shown = _tab(index_dir)
    assert shown[0][:2] == ("markdown", "eval-no-figures") and shown[0][2] == NO_FIGURES
    assert [e for _, e, _ in shown] == ["eval-no-figures", "eval-tables"]
    assert f"**pixel-l1** {BEST_MARK}" in str(shown[1][2])


def test_a_kfold_only_report_in_the_tab(index_dir):
    write(index_dir, _kfold({"pixel-l1": 0.3, "pixel-l2": 0.2}))
    shown = _tab(index_dir)
    assert [e for _, e, _ in shown] == ["eval-winner", "eval-map", "eval-tables", "eval-ap-class"]
    assert "(5-fold, 24 queries)" in str(shown[0][2])
    assert "every image is a query" in str(shown[2][2]) and f"**pixel-l1** {BEST_MARK}" in str(shown[2][2])


def test_an_unlabelled_library_says_why_there_are_no_scores(tmp_path):
    flat = tmp_path / "photos"
    flat.mkdir()
    for i, path in enumerate(sorted((make_tiny_library(tmp_path / "data", n_train=2, n_test=0) / "train")
                                    .rglob("*.jpg"))):
        shutil.copy(path, flat / f"photo{i}.jpg")
    build_index(flat, tmp_path / "index", model="none")
    shown = _tab(tmp_path / "index")
    assert [e for _, e, _ in shown] == ["eval-tables"]
    assert "No evaluation for an unlabelled library" in str(shown[0][2])
    about = about_markdown(LookalikeIndex.open(tmp_path / "index"), Counter())
    assert "green frame" not in about and "Evaluation" not in about.split("### Library")[0]


def test_the_chart_grows_with_the_methods_and_stays_within_the_first_screen():
    """~17 methods (the sample library): at the figure's own resolution, as the page shows it, the
    chart stays under 600 px tall, so the tab's sentence and the chart's top fit a 1000 px window."""
    names = ["pixel-l1", "pixel-l2", "pixel-cosine", "pixel-corr", "effnet-l1", "effnet-l2", "effnet-cosine",
             "effnet-corr", "effnet-hnsw-l2", "effnet-hnsw-cosine", "pixel-cosine+qe", "pixel-cosine+dba",
             "pixel-cosine+dba+qe", "effnet-cosine+qe", "effnet-cosine+dba", "effnet-cosine+dba+qe",
             "effnet-hnsw-cosine+dba+qe"]
    big = map_figure(_report({n: 0.1 + i / 40 for i, n in enumerate(names)}), "t")
    small = map_figure(_report({n: 0.3 for n in names[:4]}), "t")
    height = big.get_size_inches()[1]
    assert height * big.dpi < 600 and height - small.get_size_inches()[1] == pytest.approx(13 * BAR_INCHES)
    bold = [t.get_text() for t in big.axes[0].get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["effnet-hnsw-cosine+dba+qe"]   # the winner's label


# -- About --------------------------------------------------------------------------------------------

def test_about_starts_with_how_to_use_in_four_lines(index_dir):
    index = LookalikeIndex.open(index_dir)
    text = about_markdown(index, Counter())
    lines = text.splitlines()
    assert lines[0] == "### How to use" and [line[:3] for line in lines[1:5]] == ["1. ", "2. ", "3. ", "4. "]
    assert "click one of the example images" in lines[1] and "press *Search*" in lines[2]
    assert "green frame" in lines[2] and "red frame" in lines[2]
    assert "**Compare** runs every method" in lines[3] and "**Evaluation** says which method wins" in lines[3]
    assert "*why* it matched" in lines[4] and "**Map**" in lines[4] and "Refine" not in lines[4]   # pixels only
    assert "(Pixel metrics)" in lines[2]   # the tabs this index has: no Deep features, no Text
    assert text.index(how_to_use(index)) == 0 and text.index("### Library") > text.index("There is no Text tab")
    assert "built with pixels only" in text and not COMMANDS.search(text)


def test_why_there_is_no_text_tab_in_one_sentence():
    def model(has_text: bool, spec: str) -> EmbedderRecord:
        return EmbedderRecord(spec=spec, source=spec, name="m", dim=8, has_text=has_text, file="e.npy")
    effnet = no_text_tab(model(False, "effnet:efficientnet-lite0"))
    assert effnet == ("There is no Text tab because text search needs a CLIP index: this one was built with "
                      "efficientnet-lite0, which has no text encoder, and whoever runs this app can rebuild it "
                      "with CLIP.")
    assert no_text_tab(None).count(".") == 1 and "built with pixels only" in no_text_tab(None)
    assert no_text_tab(model(True, "ViT-B-32:laion2b_s34b_b79k")) == ""   # CLIP: the Text tab is there


def test_evaluation_markdown_keeps_the_kfold_section_first(index_dir):
    write(index_dir, _report(SPLIT, KFOLD))
    text = evaluation_markdown(LookalikeIndex.open(index_dir))
    assert text.startswith("### 5-fold: every image a query")
    assert f"**effnet-cosine+dba+qe** {BEST_MARK}" in text and f"**effnet-corr** {BEST_MARK}" in text
