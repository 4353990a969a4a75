"""retrieval.methods: names parse to a Method and print back the same; malformed names are refused
with the reason; an index offers the methods its manifest records, in one canonical order."""
from __future__ import annotations

import pytest

from retrieval.errors import LookalikeError
from retrieval.methods import PIXEL_DEFAULT, Kind, Method, default_for, offered
from retrieval.metrics import METRICS

EVERY = offered("clip", hnsw=True, reranked={"pixel": "cosine", "clip": "cosine"}, hnsw_reranked=True)


def test_every_offered_name_round_trips():
    names = [str(m) for m in EVERY]
    assert len(set(names)) == len(names) == 17
    assert [Method.parse(n) for n in names] == EVERY
    assert Method.parse("clip-hnsw-cosine+dba+qe") == Method("clip", "cosine", hnsw=True, dba=True, qe=True)
    assert str(Method("effnet", "corr", qe=True)) == "effnet-corr+qe"


@pytest.mark.parametrize("bad", ["", "pixel", "pixel-", "pixel-l3", "pixel-hnsw-l2", "clip-hnsw-",
                                 "clip-cosine+qe+dba", "clip-cosine+dba+dba", "clip-cosine+foo", "-cosine"])
def test_malformed_names_are_refused_with_a_reason(bad):
    with pytest.raises(LookalikeError, match="method|re-ranking"):
        Method.parse(bad)


def test_a_non_text_name_is_refused():
    with pytest.raises(LookalikeError, match="text"):
        Method.parse(3)   # type: ignore[arg-type]


def test_kinds_defaults_and_relatives():
    assert Method.parse("pixel-l2").kind is Kind.PIXEL
    assert Method.parse("clip-l1").kind is Kind.EXACT
    assert Method.parse("clip-hnsw-l2").kind is Kind.HNSW
    assert Method.parse("pixel-cosine+qe").kind is Kind.RERANKED
    assert Method.parse("clip-hnsw-cosine+dba+qe").exact().plain() == Method("clip", "cosine")
    assert default_for("effnet") == Method("effnet", "cosine") and default_for(None) == PIXEL_DEFAULT
    assert Method.parse("pixel-l1").higher_is_better is False and Method.parse("pixel-corr").higher_is_better


def test_what_an_index_offers_follows_its_manifest():
    pixel_only = offered(None, hnsw=False, reranked={}, hnsw_reranked=False)
    assert [str(m) for m in pixel_only] == [f"pixel-{m}" for m in METRICS]
    no_chroma = offered("effnet", hnsw=False, reranked={"effnet": "cosine"}, hnsw_reranked=True)
    assert not any(m.hnsw for m in no_chroma)     # no Chroma collections: no HNSW, re-ranked or not
    corr = offered("effnet", hnsw=True, reranked={"effnet": "corr"}, hnsw_reranked=True)
    assert "effnet-corr+dba+qe" in map(str, corr) and not any(m.hnsw and m.reranked for m in corr)
    kinds = [m.kind for m in EVERY]
    assert kinds == sorted(kinds, key=list(Kind).index)   # pixels, exact, HNSW, re-ranked
