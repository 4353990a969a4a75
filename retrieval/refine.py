"""Refining a search by feedback: the user marks results right or wrong, the query moves (Rocchio).

    q' = (alpha q + beta mean(right) - gamma mean(wrong)) / (alpha + beta - gamma)

on the vectors the method compares: deep embeddings as unit rows (as they are stored and as cosine
sees them), pixels as their 0-255 values. Dividing by the sum of the weights used keeps q' an affine
combination, so it stays on the pixels' scale (L1, L2) and commutes with the centring of the
re-ranking space; for cosine the scale does not matter. The refined vector is then ranked through
`LookalikeIndex.rank` like any query, so a re-ranked method (+dba, +qe, +kr) keeps its query-side
re-ranking on top. The weights were chosen with simulated users on the k-fold protocol
(retrieval.refine_sim, `python -m bench.feedback`; docs/evaluation.md has the table).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import LookalikeError
from .images import QUERY_SIDE, ImageSource, load_image
from .methods import Method
from .rerank import Settings, space_rows
from .rerank.transform import Transform
from .search import Hit, LookalikeIndex, check_k

MAX_MARKS = 50
MAX_SHOWN_CHARS = 80   # how much of a refused mark an error message repeats


@dataclass(frozen=True)
class Weights:
    """Rocchio's weights: the query (alpha), the mean of the right marks (beta), the mean of the
    wrong ones (gamma). gamma < alpha, so the weights used always sum to more than zero."""

    alpha: float = 1.0
    beta: float = 0.5    # the plateau of the beta x gamma grid, effnet-cosine+dba+qe+kr on the sample
    gamma: float = 0.5   # library (k-fold, seed 0): +0.050 mAP on the residual after one round

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta >= 0 and 0 <= self.gamma < self.alpha):
            raise LookalikeError(f"Rocchio weights need alpha > 0, beta >= 0 and 0 <= gamma < alpha, got "
                                 f"{self.alpha:g}, {self.beta:g}, {self.gamma:g}")


DEFAULT_WEIGHTS = Weights()


def _shown(text: object) -> str:
    """A user's mark as an error message repeats it: quoted, and cut when long."""
    s = str(text)
    return repr(s if len(s) <= MAX_SHOWN_CHARS else s[:MAX_SHOWN_CHARS] + "...")


def check_marks(index: LookalikeIndex, more: Sequence[str], less: Sequence[str]) -> tuple[list[int], list[int]]:
    """The library rows marked right and wrong (each once, in the order given); refuses no marks,
    more than MAX_MARKS, a mark that is not a library image's rel, and an image marked both ways."""
    for what, marks in (("right", more), ("wrong", less)):
        if isinstance(marks, (str, bytes)) or not isinstance(marks, Sequence):
            raise LookalikeError(f"the images marked {what} are a list of library images, not {type(marks).__name__}")
    if len(more) + len(less) == 0:
        raise LookalikeError("no results are marked; mark at least one result as right or wrong, then refine")
    for rel in [*more, *less]:
        if not isinstance(rel, str):
            raise LookalikeError(f"a marked image is named by its path in the library, not {type(rel).__name__}")
    right, wrong = list(dict.fromkeys(more)), list(dict.fromkeys(less))
    if len(right) + len(wrong) > MAX_MARKS:
        raise LookalikeError(f"{len(right) + len(wrong)} images are marked; at most {MAX_MARKS} marks can "
                             "refine a search, so clear some marks")
    for rel in right + wrong:
        if not index.holds(rel):
            raise LookalikeError(f"the marked image {_shown(rel)} is not an image of this library")
    both = set(right) & set(wrong)
    if both:
        rel = next(r for r in right if r in both)
        raise LookalikeError(f"the image {_shown(rel)} is marked both right and wrong; mark it one way only")
    rows = [index.rels.index(r) for r in right], [index.rels.index(r) for r in wrong]
    return rows


def unit_rows(vectors: np.ndarray, pixel: bool) -> np.ndarray:
    """float64 rows as Rocchio combines them: pixel values as they are, embeddings at unit length."""
    x = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    return x if pixel else x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rocchio(query: np.ndarray, right: np.ndarray, wrong: np.ndarray, pixel: bool,
            weights: Weights = DEFAULT_WEIGHTS) -> np.ndarray:
    """The refined query vector (float32, shape (D,)) from a raw query vector and the raw library
    vectors marked right (R, D) and wrong (W, D); either may be empty. Pixels stay in 0..255."""
    q = unit_rows(np.asarray(query)[None], pixel)[0]
    total, weight = weights.alpha * q, weights.alpha
    if len(right):
        total, weight = total + weights.beta * unit_rows(right, pixel).mean(axis=0), weight + weights.beta
    if len(wrong):
        total, weight = total - weights.gamma * unit_rows(wrong, pixel).mean(axis=0), weight - weights.gamma
    out = total / weight
    return (np.clip(out, 0, 255) if pixel else out).astype(np.float32)


def from_space(z: np.ndarray, settings: Settings, transform: Transform | None) -> np.ndarray:
    """Raw vectors whose re-ranking-space rows point along the rows of `z`: the transform undone
    (x = mean + z basis, its rows orthonormal) and the square root undone when the space takes one."""
    x = np.asarray(z, dtype=np.float64)
    if transform is not None:
        x = (x if transform.basis is None else x @ transform.basis) + transform.mean
    return (np.sign(x) * x * x if settings.sqrt else x).astype(np.float32)


def refined_vector(query: np.ndarray, right: np.ndarray, wrong: np.ndarray, method: Method,
                   weights: Weights = DEFAULT_WEIGHTS, settings: Settings | None = None,
                   transform: Transform | None = None, pixel_size: int | None = None) -> np.ndarray:
    """The raw query vector to rank by `method` after feedback. A re-ranked method compares unit
    rows of its re-ranking space (`settings`, `transform`), so Rocchio runs there and the result is
    mapped back to a raw vector the ranker moves into the same point; others combine raw vectors."""
    if not method.reranked:
        return rocchio(query, right, wrong, method.pixel, weights)
    assert settings is not None, "a re-ranked method is refined in its re-ranking space"
    rows = space_rows(np.concatenate([np.asarray(query)[None], right, wrong]).astype(np.float32), settings,
                      pixel_size if method.pixel else None, transform)
    z = rocchio(rows[0], rows[1:1 + len(right)], rows[1 + len(right):], False, weights)
    return from_space(z[None], settings, transform)[0]


def rel_of(index: LookalikeIndex, path_or_rel: str | Path) -> str:
    """A library image named by its file path (absolute, or relative to the working folder) or by
    its rel: the rel when the file lies in the library folder, else the text as given."""
    text = str(path_or_rel)
    if index.holds(text):
        return text
    try:
        return Path(text).resolve().relative_to(index.data_dir.resolve()).as_posix()
    except (ValueError, OSError):
        return text


def refine_search(index: LookalikeIndex, query: ImageSource, more: Sequence[str], less: Sequence[str],
                  method: str | Method, k: int = 5, *, name: str | None = None) -> tuple[list[Hit], float]:
    """Rank the library for `query` moved toward the images marked right (`more`, library rels) and
    away from those marked wrong (`less`): all marks of every round so far. Returns (hits, seconds).
    The query itself and the images marked wrong are left out; those marked right stay in."""
    k = check_k(k)
    m = index.parse_method(method)
    right, wrong = check_marks(index, more, less)
    t0 = time.perf_counter()
    image = load_image(query, name=name, reduce_to=QUERY_SIDE)
    vec = index.query_vectors([image], m.source)[0]
    lib = index.matrix(m.source).data
    settings = transform = None
    if m.reranked:
        settings, transform = index.rerank_settings(m.source), index.reranker.side(m.source).transform
    refined = refined_vector(vec, lib[right], lib[wrong], m, DEFAULT_WEIGHTS, settings, transform,
                             index.manifest.pixel_size)
    skip = index.self_rows(query) | set(wrong)
    hits = index.hits(index.rank(refined[None], m, k, [skip])[0])
    return hits, time.perf_counter() - t0


def refine_cli(index: LookalikeIndex, image: Path | None, more: Sequence[str | Path], less: Sequence[str | Path],
               method: str | Method, k: int) -> tuple[list[Hit], float, tuple[int, int]]:
    """The command line's refined search: marks given as library file paths or rels; returns the
    hits, the seconds and how many distinct images were marked right and wrong."""
    if image is None:
        raise LookalikeError("refining a search needs an image query, not a text or composed one")
    right, wrong = [rel_of(index, x) for x in more], [rel_of(index, x) for x in less]
    hits, secs = refine_search(index, image, right, wrong, method, k, name=str(image))
    return hits, secs, (len(set(right)), len(set(wrong)))
