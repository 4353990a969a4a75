"""Composed queries for embedding indexes: text and images together, weighted and negative terms.

The habit comes from rclip (`rclip cat --add photo.jpg --subtract night`): every term is a text
or an image path, `W:term` gives it a weight (`2:red car`, `0.5:photo.jpg`), and minus terms are
subtracted. The query vector is

    q = sum_i w_i * e_i / |e_i|  -  sum_j w_j * e_j / |e_j|,   then q / |q|

with e the CLIP embedding of each term (text and image share CLIP's space), so a term with twice
the weight pulls the ranking twice as hard, and a minus term pushes away what it describes.
Image-only composed queries also work on indexes without a text encoder (effnet).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import LookalikeError
from .images import ImageSource, is_image_name

MAX_TERMS = 16
MAX_WEIGHT = 100.0
_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*:(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One query term: a signed weight and either a text or an image (a path or upload bytes)."""

    weight: float
    text: str | None = None
    image: ImageSource | None = None
    name: str = ""           # how messages call an image term (its path or upload name)

    @property
    def is_text(self) -> bool:
        return self.text is not None


def split_weight(raw: str) -> tuple[float, str]:
    """'2:red car' -> (2.0, 'red car'); 'red car' -> (1.0, 'red car'). A path that merely holds a
    colon ('a:b.jpg' with a non-number before it) keeps weight 1."""
    m = _WEIGHT.match(raw)
    if not m:
        return 1.0, raw.strip()
    weight = float(m.group(1))
    if not 0 < weight <= MAX_WEIGHT:
        raise LookalikeError(f"the weight in {raw!r} must be over 0 and at most {MAX_WEIGHT:g} "
                             "(make it a minus term to push results away)")
    return weight, m.group(2).strip()


def parse_term(raw: str, *, negative: bool = False) -> Term:
    """A command-line term: an existing image file is an image, anything else is text; a name with an
    image extension that does not exist is an error, not a text query about a file name."""
    if not isinstance(raw, str) or not raw.strip():
        raise LookalikeError("an empty query term; give a text such as 'red car' or an image path")
    weight, body = split_weight(raw)
    if not body:
        raise LookalikeError(f"the query term {raw!r} has a weight but nothing to weigh")
    sign = -1.0 if negative else 1.0
    path = Path(body).expanduser()
    if path.is_file():
        return Term(sign * weight, image=str(path), name=body)
    if is_image_name(path.name) and ("/" in body or " " not in body):
        raise LookalikeError(f"{body}: no such image file (a term that is an existing image path is an "
                             "image; anything else is searched as text)")
    return Term(sign * weight, text=body)


def parse_terms(queries: Sequence[str], minus: Sequence[str] = ()) -> list[Term]:
    terms = [parse_term(q) for q in queries] + [parse_term(m, negative=True) for m in minus]
    check_terms(terms)
    return terms


def check_terms(terms: Sequence[Term]) -> None:
    if not terms:
        raise LookalikeError("a composed query needs at least one term: a text such as 'red car', or an image")
    if len(terms) > MAX_TERMS:
        raise LookalikeError(f"a composed query takes at most {MAX_TERMS} terms, got {len(terms)}")
    if not any(t.weight > 0 for t in terms):
        raise LookalikeError("a composed query needs at least one positive term; "
                             "minus terms only push results away from something")


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The unit query vector: the weighted sum of the unit term vectors (negative weights subtract)."""
    v = np.asarray(vectors, dtype=np.float32)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    q = (np.asarray(weights, dtype=np.float32)[:, None] * unit).sum(axis=0)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-6:
        raise LookalikeError("the query terms cancel each other out (their weighted sum is zero); "
                             "change a weight or drop a minus term")
    return (q / norm)[None, :]
