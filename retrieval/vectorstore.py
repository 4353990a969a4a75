"""ChromaDB wrapper: one HNSW collection per distance space, embedded or against a Chroma server.

Why a wrapper: every write must be chunked to the client's max batch size, the space of a
collection is fixed at creation (so each space gets its own collection), embeddings are always
passed in (embedding_function=None), and chromadb's own errors need turning into messages that say
what to do. Chroma distances: "cosine" is 1 - cos, "l2" is the *squared* Euclidean distance.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np

from .errors import IndexError_, Remedy

log = logging.getLogger(__name__)

SPACES = ("l2", "cosine")
# HNSW build/search parameters, and ef_search growing with the collection (a graph search must look
# wider to keep its recall as the graph grows). Why these values, with the measurements:
# docs/deep-search.md#chroma-hnsw-settings; tests/test_vectorstore.py holds recall@10 >= 0.99.
# ef_search can be raised later with collection.modify; the others are fixed when a collection is created.
HNSW = {"max_neighbors": 32, "ef_construction": 200, "ef_search": 200}
EF_SEARCH_MIN, EF_SEARCH_MAX, EF_SEARCH_AT_100K, EF_SEARCH_EXPONENT = 100, 1000, 200, 0.6


def ef_search_for(n: int) -> int:
    """ef_search for a collection of n vectors: EF_SEARCH_AT_100K at 100,000, growing as
    n**EF_SEARCH_EXPONENT, within [EF_SEARCH_MIN, EF_SEARCH_MAX], rounded to tens."""
    ef = EF_SEARCH_AT_100K * (max(int(n), 1) / 100_000) ** EF_SEARCH_EXPONENT
    return int(min(EF_SEARCH_MAX, max(EF_SEARCH_MIN, round(ef / 10) * 10)))


def row_digest(row: np.ndarray) -> str:
    """A digest of one vector's float32 bytes, kept in its row's metadata: a sync compares it to
    tell which rows' vectors changed, whatever changed them."""
    return hashlib.sha1(np.ascontiguousarray(row, dtype=np.float32).tobytes()).hexdigest()


REBUILD = "rerun the build to rebuild the index"
# Lines of Rust's own panic report, which chromadb's bindings can put into an error's text.
_RUST_NOISE = re.compile(r"panicked at|RUST_BACKTRACE|^\s*thread '|^\s*stack backtrace|^\s*\d+: ")
_DAMAGED = ("malformed", "not a database", "code: 26", "code: 11", "corrupt", "no such table")


class ChromaDamaged(IndexError_):
    """The embedded Chroma database cannot be read. It is derived data (the embeddings are in the
    index's own arrays), so the index build sets the folder aside and fills a new one."""


def _clean(exc: BaseException) -> str:
    """An error's text on one line, without Rust panic lines (what users see)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not _RUST_NOISE.search(ln)]
    return (" ".join(lines) or type(exc).__name__)[:300]


def _forget_client(path: Path) -> None:
    """chromadb caches a client's system per folder even when starting it failed, and every later
    client of that folder then gets the broken one ('no attribute bindings'): drop it, so a retry
    (or the build's repair) opens the folder afresh."""
    from chromadb.api.shared_system_client import SharedSystemClient
    for key in {str(path), str(Path(path).resolve())}:
        SharedSystemClient._identifier_to_system.pop(key, None)
        SharedSystemClient._identifier_to_refcount.pop(key, None)


def _collection_name(prefix: str, space: str) -> str:
    return f"{prefix}-{space}"


def _settings():
    from chromadb.config import Settings
    return Settings(anonymized_telemetry=False)   # no phone-home from an offline machine or a Space


@contextlib.contextmanager
def _translate(where: str) -> Iterator[None]:
    """chromadb / transport errors -> IndexError_ with a message that says what to do."""
    import chromadb.errors
    try:
        yield
    except IndexError_:
        raise
    except (chromadb.errors.ChromaError, OSError, ValueError) as exc:
        kind = ChromaDamaged if any(word in str(exc).lower() for word in _DAMAGED) else IndexError_
        raise kind(f"Chroma ({where}): {_clean(exc)}; {REBUILD}", remedy=Remedy.REPAIR_INDEX) from exc
    except Exception as exc:  # httpx transport errors when a server goes away mid-run
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise IndexError_(f"the Chroma server ({where}) stopped answering: {_clean(exc)}; is the Chroma "
                              "server still running?", remedy=Remedy.START_CHROMA) from exc
        raise
    except BaseException as exc:   # pyo3's PanicException (a Rust panic) derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise ChromaDamaged(f"Chroma ({where}) failed inside its Rust core ({_clean(exc)}); the collections "
                            f"may be damaged: {REBUILD}", remedy=Remedy.REPAIR_INDEX) from None


class VectorStore:
    """The index's vectors in Chroma: ids are library paths, one collection per space."""

    def __init__(self, client: Any, prefix: str, where: str) -> None:
        self.client, self.prefix, self.where = client, prefix, where
        with _translate(where):
            self.max_batch = int(client.get_max_batch_size())
            self.collections = {space: self._collection(space) for space in SPACES}

    @classmethod
    def open(cls, path: Path | None = None, url: str | None = None, prefix: str = "lookalike") -> "VectorStore":
        """PersistentClient at `path` by default; HttpClient for url="http://HOST:PORT"."""
        client, where = cls._connect(path, url)
        return cls(client, prefix, where)

    @classmethod
    def drop(cls, path: Path | None = None, url: str | None = None, prefix: str = "lookalike") -> None:
        """Delete this prefix's collections where they exist (creating nothing)."""
        client, where = cls._connect(path, url)
        with _translate(where):
            held = {getattr(c, "name", c) for c in client.list_collections()}
            for name in (_collection_name(prefix, space) for space in SPACES):
                if name in held:
                    client.delete_collection(name)

    @staticmethod
    def _connect(path: Path | None, url: str | None) -> tuple[Any, str]:
        """A Chroma client and the words that name it in errors."""
        import chromadb
        if url:
            parts = urlparse(url if "://" in url else f"http://{url}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise IndexError_(f"the Chroma address {url!r} is not http://HOST:PORT")
            port = parts.port or (443 if parts.scheme == "https" else 8000)
            try:
                client = chromadb.HttpClient(host=parts.hostname, port=port, ssl=parts.scheme == "https",
                                             settings=_settings())
            except Exception as exc:   # chromadb raises ValueError("Could not connect ...")
                raise IndexError_(f"no Chroma server answers at {url} ({exc}); start a Chroma server on "
                                  f"{parts.hostname} port {port}, or give no server address to use the "
                                  "embedded store", remedy=Remedy.START_CHROMA) from exc
            return client, url
        if path is None:
            raise IndexError_("VectorStore.open needs a path (embedded) or a url (server)")
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(path), settings=_settings())
        except BaseException as exc:   # pyo3's PanicException too
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            _forget_client(path)
            text = str(exc).lower()
            io = isinstance(exc, OSError) or "os error" in text
            if "disk is full" in text:
                hint = "the disk is full: free some space and try again"
            elif any(word in text for word in _DAMAGED):
                raise ChromaDamaged(f"cannot open a Chroma database at {path}: {_clean(exc)}; the Chroma database "
                                    f"is damaged: {REBUILD}, which sets the folder {path.name}/ aside and fills a "
                                    "new one from the stored embeddings (the exact methods do not need it)",
                                    remedy=Remedy.REPAIR_INDEX) from None
            elif "readonly" in text or "read-only" in text:
                hint = ("Chroma writes to its folder even to read it: make the index folder writable, "
                        "or copy the index to a writable disk")
            elif io:
                hint = "give a writable directory (not a file) for the index"
            else:
                hint = "close other Chroma clients on this path (one writer process per path)"
            raise IndexError_(f"cannot open a Chroma database at {path}: {_clean(exc)}; {hint}") from None
        return client, str(path)

    def _name(self, space: str) -> str:
        return _collection_name(self.prefix, space)

    def _collection(self, space: str) -> Any:
        col = self.client.get_or_create_collection(
            self._name(space), configuration={"hnsw": {"space": space, **HNSW}}, embedding_function=None)
        held = ((col.configuration or {}).get("hnsw") or {}).get("space", space)
        if held != space:
            raise IndexError_(f"Chroma collection {col.name} uses space {held!r}, not {space!r}; "
                              "rebuild the index (build_index.py index) to recreate it")
        return col

    def _chunks(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.max_batch):
            yield slice(start, min(start + self.max_batch, n))

    # -- writes ------------------------------------------------------------------------------
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadatas: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert or replace rows in every space, at most max_batch rows per call."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors) or (metadatas is not None and len(metadatas) != len(ids)):
            raise ValueError("upsert: ids, vectors and metadatas differ in length")
        with _translate(self.where):
            for col in self.collections.values():
                for s in self._chunks(len(ids)):
                    col.upsert(ids=list(ids[s]), embeddings=vectors[s],
                               metadatas=None if metadatas is None else [dict(m) for m in metadatas[s]])

    def delete(self, ids: Sequence[str]) -> None:
        """Remove rows from every space; unknown ids are ignored."""
        ids = list(ids)
        with _translate(self.where):
            for col in self.collections.values():
                for s in self._chunks(len(ids)):
                    col.delete(ids=ids[s])

    def reset(self) -> None:
        """Drop and recreate this prefix's collections (other prefixes are untouched)."""
        with _translate(self.where):
            for space in SPACES:
                with contextlib.suppress(Exception):
                    self.client.delete_collection(self._name(space))
            self.collections = {space: self._collection(space) for space in SPACES}

    def set_ef_search(self, ef: int) -> None:
        """Set ef_search in every space (stored with the collection; the build sets it from
        ef_search_for(count)). A client that already loaded the index keeps its old ef until reopened."""
        with _translate(self.where):
            for col in self.collections.values():
                col.modify(configuration={"hnsw": {"ef_search": int(ef)}})

    def hnsw_settings(self) -> dict[str, int]:
        """The HNSW build and query settings the collections hold (max_neighbors, ef_construction, ef_search)."""
        with _translate(self.where):
            col = next(iter(self.collections.values()))
            held = (col.configuration or {}).get("hnsw") or {}
        return {k: int(held.get(k, HNSW[k])) for k in HNSW}

    # -- reads -------------------------------------------------------------------------------
    def count(self) -> dict[str, int]:
        with _translate(self.where):
            return {space: col.count() for space, col in self.collections.items()}

    def _get_all(self, col: Any, include: list[str]) -> Iterator[tuple[str, Any]]:
        for offset in range(0, col.count(), self.max_batch):
            page = col.get(include=include, limit=self.max_batch, offset=offset)
            metas = page.get("metadatas") or [None] * len(page["ids"])
            yield from zip(page["ids"], metas)

    def ids(self) -> set[str]:
        """Every id held in any space."""
        with _translate(self.where):
            return {i for col in self.collections.values() for i, _ in self._get_all(col, [])}

    def metadatas(self) -> dict[str, dict[str, Any]]:
        """id -> metadata. An id missing from some space, or with differing metadata across spaces,
        maps to {} so that a sync against the manifest rewrites (or deletes) it."""
        with _translate(self.where):
            per_space = [dict(self._get_all(col, ["metadatas"])) for col in self.collections.values()]
        out: dict[str, dict[str, Any]] = {}
        for i in set().union(*per_space):
            metas = [held.get(i, "missing") for held in per_space]
            same = all(m == metas[0] for m in metas) and metas[0] != "missing"
            out[i] = dict(metas[0] or {}) if same else {}
        return out

    def query(self, vectors: np.ndarray, k: int, space: str) -> tuple[list[list[str]], np.ndarray]:
        """k nearest ids per query row by HNSW, and Chroma's distances (q, k) (cosine: 1 - cos;
        l2: squared). k is capped at the collection size; rows that come back short are padded
        with +inf distances (their id lists are shorter)."""
        if space not in self.collections:
            raise ValueError(f"space must be one of {SPACES}, not {space!r}")
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        col = self.collections[space]
        with _translate(self.where):
            k = min(int(k), col.count())
            if k <= 0 or len(queries) == 0:
                return [[] for _ in queries], np.zeros((len(queries), 0), np.float32)
            ids: list[list[str]] = []
            dists: list[list[float]] = []
            for s in self._chunks(len(queries)):
                res = col.query(query_embeddings=queries[s], n_results=k, include=["distances"])
                ids += res["ids"]
                dists += res["distances"]
        out = np.full((len(queries), k), np.inf, dtype=np.float32)
        for row, d in enumerate(dists):
            out[row, :len(d)] = d
        return ids, out
