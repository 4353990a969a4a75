"""Composed queries: weighted and negative terms move the ranking as they say (synthetic vectors),
the term syntax, clear refusals, and image + text end to end on the random-init CLIP checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrieval.cli import main as cli_main
from retrieval.compose import Term, combine, parse_term, parse_terms, split_weight
from retrieval.errors import IndexError_, LookalikeError, ModelError
from retrieval.indexing import build_index
from retrieval.metrics import PreparedMatrix, top_k
from retrieval.search import LookalikeIndex

from conftest import make_tiny_library

# Four orthogonal "concepts" and a library of mixtures of them.
A, B, C, D = np.eye(4, dtype=np.float32)
LIBRARY = {"a": A, "b": B, "mostly-a": 0.9 * A + 0.44 * B, "mostly-b": 0.44 * A + 0.9 * B,
           "a+c": (A + C) / np.sqrt(2), "a+d": (A + D) / np.sqrt(2), "c": C}
NAMES = list(LIBRARY)
MATRIX = PreparedMatrix(np.stack(list(LIBRARY.values())))


def ranking(vectors: np.ndarray, weights: list[float]) -> list[str]:
    scores = MATRIX.scores(combine(vectors, weights), "cosine").reshape(-1)
    return [NAMES[i] for i in top_k(scores, len(NAMES), True)]


def test_weights_move_the_ranking_toward_the_heavier_term() -> None:
    even = ranking(np.stack([A, B]), [1, 1])
    assert set(even[:2]) == {"mostly-a", "mostly-b"}            # both mixtures sit between a and b
    heavy_a = ranking(np.stack([A, B]), [3, 1])
    heavy_b = ranking(np.stack([A, B]), [1, 3])
    assert heavy_a.index("mostly-a") < heavy_a.index("mostly-b") and heavy_a.index("a") < heavy_a.index("b")
    assert heavy_b.index("mostly-b") < heavy_b.index("mostly-a") and heavy_b.index("b") < heavy_b.index("a")
    # the scale of an input vector does not matter, only its direction and weight
    assert ranking(np.stack([10 * A, 0.1 * B]), [3, 1]) == heavy_a


def test_a_minus_term_pushes_away_what_it_describes() -> None:
    plain = ranking(np.stack([A]), [1])
    assert plain.index("a+c") < plain.index("mostly-b") and {"a+c", "a+d"} <= set(plain[:4])
    minus_c = ranking(np.stack([A, C]), [1, -1])
    assert minus_c.index("a+d") < minus_c.index("a+c")          # a+c loses to a+d once c is subtracted
    assert minus_c[-1] == "c"                                    # the subtracted concept comes last
    with pytest.raises(LookalikeError, match="cancel"):
        combine(np.stack([A, A]), [1, -1])


def test_term_syntax(tmp_path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    assert split_weight("2:red car") == (2.0, "red car") and split_weight("red car") == (1.0, "red car")
    assert split_weight("0.5: night ") == (0.5, "night")
    assert parse_term("2:red car") == Term(2.0, text="red car")
    assert parse_term(str(photo)) == Term(1.0, image=str(photo), name=str(photo))
    assert parse_term(f"0.5:{photo}").weight == 0.5 and parse_term(f"0.5:{photo}").image == str(photo)
    assert parse_term("night", negative=True) == Term(-1.0, text="night")
    assert parse_term("a photo of a cat.jpg").text == "a photo of a cat.jpg"   # words, not a file
    with pytest.raises(LookalikeError, match="no such image file"):
        parse_term("missing.jpg")
    for bad, message in (("0:cat", "over 0"), ("   ", "empty"), ("2:", "nothing to weigh")):
        with pytest.raises(LookalikeError, match=message):
            parse_term(bad)
    with pytest.raises(LookalikeError, match="positive term"):
        parse_terms([], ["night"])


@pytest.fixture(scope="module")
def clip_index(tmp_path_factory, clip_checkpoint):
    root = tmp_path_factory.mktemp("composed")
    data = make_tiny_library(root / "data", n_train=3, n_test=1)
    build_index(data, root / "index", model=f"ViT-B-32:{clip_checkpoint}", evaluate=False)
    return data, root / "index"


def test_image_plus_text_end_to_end_on_the_test_checkpoint(clip_index, capsys) -> None:
    data, index_dir = clip_index
    index = LookalikeIndex.open(index_dir)
    query = data / "test" / "red" / "test_0.jpg"
    hits, _ = index.search_composed([Term(1.0, image=str(query)), Term(2.0, text="red car"),
                                     Term(-1.0, text="night")], k=5)
    assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    # the weights are applied: the composed scores are those of the hand-combined vector
    e = index.embedder
    vec = combine(np.concatenate([e.encode_text(["red car", "night"]), e.encode_images([Image.open(query).convert("RGB")])]),
                  [2.0, -1.0, 1.0])
    expect = index.rank(vec, index.parse_method("clip-cosine"), 5)[0]
    assert [h.rel for h in hits] == [index.rels[i] for i, _ in expect]
    assert np.allclose(scores, [s for _, s in expect], atol=1e-4)
    # an image alone at weight 1 ranks exactly like the plain image search
    alone, _ = index.search_composed([Term(1.0, image=str(query))], k=5)
    plain, _ = index.search(query, "clip-cosine", k=5)
    assert [h.rel for h in alone] == [h.rel for h in plain]

    assert cli_main(["search", "--index", str(index_dir), "--query", str(query), "--query", "2:red car",
                     "--minus", "night", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "composed query" in out and "+2*'red car'" in out and "-1*'night'" in out
    assert len([ln for ln in out.splitlines() if ln[:1].isdigit()]) == 3


def test_composed_endpoint_in_the_app(clip_index) -> None:
    from gradio_client import handle_file
    from app_support import launch

    data, index_dir = clip_index
    demo, app = launch(index_dir)
    try:
        gallery, status, rows = app.client.predict("2:red car\nsunny", handle_file(str(data / "test/red/test_0.jpg")),
                                                   1.0, "night", "clip-cosine", 4, api_name="/search_composed")
        assert len(rows) == 4 and "4 results" in status
        with pytest.raises(Exception, match="at least one positive term"):
            app.client.predict("", None, 1.0, "night", "clip-cosine", 4, api_name="/search_composed")
    finally:
        demo.close()


def test_text_terms_need_a_text_encoder(tmp_path, capsys) -> None:
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    build_index(data, tmp_path / "pix", model="none", evaluate=False)
    assert cli_main(["search", "--index", str(tmp_path / "pix"), "--query", "red car"]) == 2
    assert "pixels only" in capsys.readouterr().err
    with pytest.raises(IndexError_, match="pixels only"):
        LookalikeIndex.open(tmp_path / "pix").search_composed([Term(1.0, text="red car")])


def test_effnet_index_refuses_text_terms_but_takes_images(tmp_path) -> None:
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    build_index(data, tmp_path / "eff", model="effnet", evaluate=False)
    index = LookalikeIndex.open(tmp_path / "eff")
    with pytest.raises(ModelError, match="has no text encoder"):
        index.search_composed([Term(1.0, text="red car")])
    red, blue = data / "test/red/test_0.jpg", data / "test/blue/test_0.jpg"
    hits, _ = index.search_composed([Term(1.0, image=str(red)), Term(-1.0, image=str(blue))], k=6)
    assert hits[0].label == "red" and [h.label for h in hits][-2:] == ["blue", "blue"]
