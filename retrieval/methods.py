"""Method names as a type: parsed once, printed back the same, and listed per index.

The grammar (the names users type, see docs/usage.md):
  pixel-{l1,l2,cosine,corr}          exact, over the resized pixels
  <emb>-{l1,l2,cosine,corr}          exact, over the stored embeddings (<emb> is "clip" or "effnet")
  <emb>-hnsw-{l2,cosine}             approximate, through Chroma's HNSW index
  <src>-<metric>+{qe,dba,dba+qe}     re-ranked (retrieval.rerank): alpha-query expansion and/or
                                     database-side augmentation, exact
  <emb>-hnsw-cosine+dba+qe           re-ranked through Chroma
  <emb>-cosine+dba+qe+kr             then k-reciprocal re-ranking (retrieval.rerank.reciprocal), exact
No other module builds or splits a name with string operations: they hold a `Method`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from .errors import LookalikeError
from .metrics import METRICS

PIXEL = "pixel"
HNSW_SPACES = ("l2", "cosine")
RERANK_TAGS = ((False, True), (True, False), (True, True))   # (dba, qe): +qe, +dba, +dba+qe
HNSW_RERANK_TAGS = ((True, True),)                           # through Chroma: +dba+qe on cosine only
TAG_ORDER = ("dba", "qe", "kr")                              # how tags are written; kr only after dba+qe


class Kind(Enum):
    """What family a method belongs to, in the order the app and the tables show them."""

    PIXEL = "pixels"
    EXACT = "deep, exact"
    HNSW = "deep, Chroma HNSW"
    RERANKED = "re-ranked"


@dataclass(frozen=True, order=True)
class Method:
    """A parsed method: which vectors (`source`), which metric, exact or HNSW, re-ranked or not."""

    source: str              # "pixel" or the embedder's name
    metric: str              # a key of retrieval.metrics.METRICS
    hnsw: bool = False
    dba: bool = False        # re-ranked: library vectors with database-side augmentation
    qe: bool = False         # re-ranked: alpha-query expansion
    kr: bool = False         # re-ranked: k-reciprocal re-ranking after dba and qe

    @classmethod
    def parse(cls, name: str) -> "Method":
        """The method a name stands for; a name outside the grammar is refused with the reason.
        Whether an index offers it is the index's question (LookalikeIndex.parse_method)."""
        if not isinstance(name, str):
            raise LookalikeError(f"a method name is text, not {type(name).__name__}")
        base, plus, rest = name.partition("+")
        tags = rest.split("+") if plus else []
        if any(t not in TAG_ORDER for t in tags) or tags != sorted(set(tags), key=TAG_ORDER.index) \
                or ("kr" in tags and tags != list(TAG_ORDER)):
            raise LookalikeError(f"unknown re-ranking in the method {name!r}; use +qe, +dba, +dba+qe or +dba+qe+kr")
        source, dash, metric = base.partition("-")
        hnsw = metric.startswith("hnsw-")
        metric = metric[len("hnsw-"):] if hnsw else metric
        if not source or not dash or metric not in METRICS or (hnsw and source == PIXEL):
            raise LookalikeError(f"{name!r} is not a method name; names look like pixel-l1, clip-cosine, "
                                 "clip-hnsw-cosine or effnet-cosine+dba+qe")
        method = cls(source, metric, hnsw, "dba" in tags, "qe" in tags, "kr" in tags)
        assert str(method) == name, (method, name)   # printing gives the name back
        return method

    def __str__(self) -> str:
        tags = ("+dba" if self.dba else "") + ("+qe" if self.qe else "") + ("+kr" if self.kr else "")
        return f"{self.source}-{'hnsw-' if self.hnsw else ''}{self.metric}{tags}"

    @property
    def name(self) -> str:
        return str(self)

    @property
    def pixel(self) -> bool:
        return self.source == PIXEL

    @property
    def reranked(self) -> bool:
        return self.dba or self.qe or self.kr

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    @property
    def kind(self) -> Kind:
        if self.reranked:
            return Kind.RERANKED
        if self.pixel:
            return Kind.PIXEL
        return Kind.HNSW if self.hnsw else Kind.EXACT

    def exact(self) -> "Method":
        """The exact method an HNSW one approximates (itself when exact)."""
        return replace(self, hnsw=False)

    def plain(self) -> "Method":
        """The method without its re-ranking (itself when not re-ranked)."""
        return replace(self, dba=False, qe=False, kr=False)


PIXEL_DEFAULT = Method(PIXEL, "l1")   # the pixel tab's and the command line's image search default


def default_for(embedder: str | None) -> Method:
    """The method a deep query uses unless told otherwise: the embeddings' cosine (pixel L1 for a
    pixel-only index)."""
    return Method(embedder, "cosine") if embedder else PIXEL_DEFAULT


def offered(embedder: str | None, *, hnsw: bool, reranked: dict[str, str], hnsw_reranked: bool,
            reciprocal: frozenset[str] = frozenset()) -> list[Method]:
    """Every method an index offers, in the canonical order (pixels, exact deep, HNSW, re-ranked).
    `embedder`: the embeddings' name (None: pixel-only); `hnsw`: the index has Chroma collections;
    `reranked`: source -> the metric its re-ranked methods use; `hnsw_reranked`: DBA collections
    exist in Chroma for the embedder; `reciprocal`: the sources with a k-reciprocal graph."""
    sources = [PIXEL] + ([embedder] if embedder else [])
    out = [Method(src, metric) for src in sources for metric in METRICS]
    if embedder and hnsw:
        out += [Method(embedder, space, hnsw=True) for space in HNSW_SPACES]
    for src in sources:
        if src in reranked:
            out += [Method(src, reranked[src], dba=d, qe=q) for d, q in RERANK_TAGS]
            if src in reciprocal:
                out.append(Method(src, reranked[src], dba=True, qe=True, kr=True))
    if embedder and hnsw and hnsw_reranked and reranked.get(embedder) == "cosine":
        out += [Method(embedder, "cosine", hnsw=True, dba=d, qe=q) for d, q in HNSW_RERANK_TAGS]
    return out
