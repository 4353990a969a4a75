"""The typed records inside a manifest: the embedder, the Chroma collections, the re-ranking.

Each is parsed from the manifest's JSON once, when the manifest is read (`from_json` raises
`Damaged` with what is wrong), and written back by `to_json` in the same layout, so indexes built
before these types existed open unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from .metrics import METRICS
from .rerank import Settings

JsonDict = dict[str, Any]


class Damaged(ValueError):
    """A record's JSON is not what the build writes; the message says which field (the manifest
    turns it into an IndexError_ with the manifest's path)."""


def _text(raw: Mapping[str, Any], key: str, what: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise Damaged(f"the {what} record lacks {key}")
    return value


def _optional_text(raw: Mapping[str, Any], key: str, what: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise Damaged(f"the {what} record's {key} is {type(value).__name__}, not text")
    return value


def _object(raw: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise Damaged(f"the {what} record is {type(raw).__name__}, not an object")
    return raw


def _without_none(record: JsonDict) -> JsonDict:
    return {k: v for k, v in record.items() if v is not None}


@dataclass(frozen=True)
class EmbedderRecord:
    """Which model made the embeddings, and where they are."""

    spec: str                     # the model's full spec, e.g. ViT-B-32:laion2b_s34b_b79k
    source: str                   # what the build was asked for (a spec, an alias or a checkpoint path)
    name: str                     # the methods' prefix: "clip" or "effnet"
    dim: int
    has_text: bool
    file: str                     # the embeddings array, in the index folder
    precision: str = "fp32"       # fp32, bf16 or fp16 (retrieval.embedders.precision)
    precision_choice: JsonDict | None = None   # why that precision
    precision_check: JsonDict | None = None    # bf16 only: the build's comparison with fp32

    @classmethod
    def from_json(cls, raw: Any) -> "EmbedderRecord":
        raw = _object(raw, "embedder")
        spec, name, file = (_text(raw, key, "embedder") for key in ("spec", "name", "file"))
        dim = raw.get("dim")
        if type(dim) is not int or dim < 1:
            raise Damaged(f"the embedder's dim is {dim!r}, not a whole number")
        precision = raw.get("precision", "fp32")
        if precision not in ("fp32", "bf16", "fp16"):
            raise Damaged(f"the embedder's precision is {precision!r}, not fp32, bf16 or fp16")
        extra = {k: raw.get(k) for k in ("precision_choice", "precision_check")}
        if any(v is not None and not isinstance(v, dict) for v in extra.values()):
            raise Damaged("the embedder's precision records are not objects")
        return cls(spec=spec, source=_optional_text(raw, "source", "embedder") or spec, name=name, dim=dim,
                   has_text=bool(raw.get("has_text")), file=file, precision=precision, **extra)

    def to_json(self) -> JsonDict:
        return _without_none({f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class ChromaRecord:
    """Where the index's Chroma collections live and how their HNSW graphs were built."""

    mode: Literal["embedded", "server"]
    prefix: str                   # collections <prefix>-l2 and <prefix>-cosine
    path: str | None = None       # embedded: the folder, inside the index folder
    url: str | None = None        # server: the address it was built against
    hnsw: dict[str, int] | None = None   # max_neighbors, ef_construction, ef_search
    syncing: bool = False         # a build is changing the collections (or stopped while it did)

    @classmethod
    def from_json(cls, raw: Any) -> "ChromaRecord":
        raw = _object(raw, "chroma")
        prefix = _text(raw, "prefix", "chroma")
        mode = raw.get("mode", "embedded")
        if mode not in ("embedded", "server"):
            raise Damaged(f"the chroma record's mode is {mode!r}, not embedded or server")
        path, url = _optional_text(raw, "path", "chroma"), _optional_text(raw, "url", "chroma")
        if mode == "embedded" and not path:
            raise Damaged("the chroma record is embedded but names no folder")
        hnsw = raw.get("hnsw")
        if hnsw is not None and not (isinstance(hnsw, dict) and all(type(v) is int for v in hnsw.values())):
            raise Damaged("the chroma record's hnsw settings are not whole numbers")
        return cls(mode=mode, prefix=prefix, path=path, url=url, hnsw=hnsw, syncing=raw.get("syncing") is True)

    @classmethod
    def at(cls, url: str | None, prefix: str) -> "ChromaRecord":
        """A new build's record: a server when given its address, else the embedded folder."""
        return cls("server", prefix, url=url) if url else cls("embedded", prefix, path="chroma")

    def same_place(self, other: "ChromaRecord") -> bool:
        """The same collections (mode, address or folder, prefix), whatever their settings or state."""
        return (self.mode, self.prefix, self.path, self.url) == (other.mode, other.prefix, other.path, other.url)

    def location(self, index_dir: Path, url: str | None = None) -> tuple[Path | None, str | None]:
        """(folder, address) to open: `url` (a server given at query time), else the recorded one,
        else the embedded folder inside `index_dir`."""
        url = url or self.url
        return (None if url else Path(index_dir) / (self.path or "chroma"), url)

    def marked_syncing(self) -> "ChromaRecord":
        return replace(self, syncing=True)

    def to_json(self) -> JsonDict:
        out = _without_none({f.name: getattr(self, f.name) for f in fields(self)})
        if not self.syncing:
            out.pop("syncing")
        return out


@dataclass(frozen=True)
class RerankSource:
    """One vector source's re-ranking: its settings, its DBA array file and, where the settings ask
    for them, the library-side transform's file and the k-reciprocal graph's two files."""

    settings: Settings
    dba_file: str
    space_file: str | None = None                  # retrieval.rerank.transform: mean and basis
    graph_files: tuple[str, str] | None = None     # retrieval.rerank.reciprocal: (int64, float32)

    @classmethod
    def from_json(cls, raw: Any) -> "RerankSource":
        raw = _object(raw, "re-ranking source")
        settings = Settings.from_json(raw)
        if not _usable(settings):
            raise Damaged(f"a re-ranking source's settings are unusable ({settings})")
        graph = raw.get("graph_files")
        if graph is not None and not (isinstance(graph, list) and len(graph) == 2
                                      and all(isinstance(g, str) and g for g in graph)):
            raise Damaged("a re-ranking source's graph_files are not two file names")
        return cls(settings, _text(raw, "dba_file", "re-ranking source"),
                   _optional_text(raw, "space_file", "re-ranking source"), tuple(graph) if graph else None)

    def files(self) -> list[str]:
        return [self.dba_file, *([self.space_file] if self.space_file else []), *(self.graph_files or ())]

    def to_json(self) -> JsonDict:
        return _without_none({**self.settings.to_json(), "dba_file": self.dba_file, "space_file": self.space_file,
                              "graph_files": list(self.graph_files) if self.graph_files else None})


def _usable(s: Settings) -> bool:
    """Settings of the types and ranges the build writes."""
    def whole(v: Any, low: int) -> bool:
        return type(v) is int and v >= low

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return (s.metric in METRICS and whole(s.k, 1) and number(s.alpha) and whole(s.pca, 0) and whole(s.k1, 0)
            and whole(s.k2, 1) and number(s.lam) and 0 <= s.lam <= 1
            and all(isinstance(x, bool) for x in (s.sqrt, s.flip, s.centre)))


@dataclass(frozen=True)
class RerankRecord:
    """Which sources are re-ranked (and how), which are not (and why), and the DBA collections."""

    sources: dict[str, RerankSource] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)     # source -> why it has no re-ranking
    mode: str = "auto"
    chosen_by: str = ""
    chroma_prefix: str | None = None                          # the DBA collections, when there are any

    @classmethod
    def from_json(cls, raw: Any) -> "RerankRecord":
        raw = _object(raw, "rerank")
        sources, skipped = raw.get("sources", {}), raw.get("skipped", {})
        sources, skipped = {} if sources is None else sources, {} if skipped is None else skipped
        if not isinstance(sources, dict) or not isinstance(skipped, dict):
            raise Damaged("the rerank record's sources or skipped are not objects")
        return cls(sources={str(k): RerankSource.from_json(v) for k, v in sources.items()},
                   skipped={str(k): str(v) for k, v in skipped.items()}, mode=str(raw.get("mode", "auto")),
                   chosen_by=str(raw.get("chosen_by", "")),
                   chroma_prefix=_optional_text(raw, "chroma_prefix", "rerank"))

    def files(self) -> list[str]:
        """Every index file this record names (so stale-file cleanup keeps them)."""
        return [f for src in self.sources.values() for f in src.files()]

    def reciprocal(self) -> frozenset[str]:
        """The sources with a k-reciprocal graph (their +dba+qe+kr methods)."""
        return frozenset(name for name, src in self.sources.items() if src.graph_files)

    def metrics(self) -> dict[str, str]:
        """Source -> the metric its re-ranked methods use."""
        return {name: src.settings.metric for name, src in self.sources.items()}

    def to_json(self) -> JsonDict:
        return _without_none({"sources": {k: v.to_json() for k, v in self.sources.items()},
                              "skipped": dict(self.skipped), "mode": self.mode, "chosen_by": self.chosen_by,
                              "chroma_prefix": self.chroma_prefix})


@dataclass(frozen=True)
class MapSource:
    """One vector source's 2-D map (retrieval.projection): its positions file, what it was fitted on
    (a change in either refits it), and the neighbour-agreement numbers measured at build time."""

    file: str                        # (N, 2) float32 positions, in row order
    vectors: str                     # checksum of the vectors the map was fitted on
    settings: str                    # how it was fitted (projection.FIT_SETTINGS)
    labels: str = ""                 # checksum of the labels the agreement counted
    agreement: float | None = None   # share of the 5 nearest neighbours (full space) sharing the class
    map_agreement: float | None = None   # the same share among the 5 nearest on the map
    measured_on: int = 0             # images whose neighbours were counted (all, or a fixed sample)

    @classmethod
    def from_json(cls, raw: Any) -> "MapSource":
        raw = _object(raw, "map")
        shares = {k: raw.get(k) for k in ("agreement", "map_agreement")}
        if any(v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1) for v in shares.values()):
            raise Damaged("a map's agreement is not a share from 0 to 1")
        measured = raw.get("measured_on", 0)
        if type(measured) is not int or measured < 0:
            raise Damaged("a map's measured_on is not a whole number")
        return cls(_text(raw, "file", "map"), _text(raw, "vectors", "map"), _text(raw, "settings", "map"),
                   _optional_text(raw, "labels", "map") or "", **shares, measured_on=measured)

    def to_json(self) -> JsonDict:
        return _without_none({f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class MapsRecord:
    """The library maps of each source, and why a source has none (too few images)."""

    sources: dict[str, MapSource] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)     # source -> why it has no map

    @classmethod
    def from_json(cls, raw: Any) -> "MapsRecord":
        raw = _object(raw, "maps")
        sources, skipped = raw.get("sources") or {}, raw.get("skipped") or {}
        if not isinstance(sources, dict) or not isinstance(skipped, dict):
            raise Damaged("the maps record's sources or skipped are not objects")
        return cls({str(k): MapSource.from_json(v) for k, v in sources.items()},
                   {str(k): str(v) for k, v in skipped.items()})

    def files(self) -> list[str]:
        return [src.file for src in self.sources.values()]

    def to_json(self) -> JsonDict:
        return {"sources": {k: v.to_json() for k, v in self.sources.items()}, "skipped": dict(self.skipped)}
