"""Deep similarity maps: which regions of each image make it resemble the other image as a whole.

A deep method compares two whole-image vectors, each pooled from a grid of local feature vectors
(efficientnet-lite0: the 1280-channel map before GeM pooling; CLIP ViT: the patch tokens through the
same final norm and projection as the pooled token). The map over the result compares its local
vectors with the query's whole-image vector, the very vector the search ranks with; the map over the
query compares its local vectors with the result's stored vector. What each cell holds is the
embedder's `region_map`:

* efficientnet-lite0 ("share"): the position's exact share of the cosine, through GeM pooling; the
  cells add up to the score, as the pixel maps do. Measured by bench.explain_mass, this map puts
  more of its mass on the object than the plain cosine of each position does.
* CLIP ViT ("cosine"): the cosine between each patch and the other vector (the class token attends to
  every patch, so no per-patch sum gives the score).

The maps come from one pass of the embedder's own network on each image, with its own preprocessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, cast

import numpy as np
from PIL import Image

from .errors import ModelError
from .explain import Box, Explanation, formula_lines, numbers
from .images import load_image
from .methods import Method
from .metrics import EPS, METRICS

if TYPE_CHECKING:
    from .search import LookalikeIndex

Spatial = Callable[[Image.Image], tuple[np.ndarray, np.ndarray]]
RegionMap = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Features:
    """One image through the network: its unit whole-image vector, its local vectors (h, w, dim),
    the part of the image the network saw (fractions), and the embedder's map of local vectors
    against another image's vector (`kind`: "share" or "cosine", see the module notes)."""

    vector: np.ndarray
    local: np.ndarray
    box: Box
    region_map: RegionMap
    kind: str

    def map_against(self, other: np.ndarray) -> np.ndarray:
        return np.asarray(self.region_map(self.local, np.asarray(other, np.float32)), np.float32)


def cosine_map(local: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """(h, w) float32 cosines between each local vector and `vector` (any embedder)."""
    v = np.asarray(vector, np.float64)
    norms = np.linalg.norm(local, axis=-1) * float(np.linalg.norm(v))
    return ((local @ v) / np.maximum(norms, EPS)).astype(np.float32)


def features(index: LookalikeIndex, image: Image.Image) -> Features:
    """The index's embedder's spatial features of one decoded image (ModelError for embedders
    that cannot give them)."""
    emb = index.embedder
    spatial = cast("Spatial | None", getattr(emb, "spatial_features", None))
    covered = cast("Callable[[tuple[int, int]], Box] | None", getattr(emb, "covered_box", None))
    region = cast("RegionMap | None", getattr(emb, "region_map", None))
    if spatial is None or covered is None or region is None:
        raise ModelError(f"this model ({emb.spec}) cannot show which regions match")
    vector, local = spatial(image)
    return Features(vector, local, covered(image.size), region, str(getattr(emb, "region_kind", "cosine")))


def decode_library_image(index: LookalikeIndex, row: int) -> Image.Image:
    """A library image decoded as the index build decoded it for the model (the JPEG draft
    size of the embedder's resize), named by its rel in errors."""
    split = index.embedder.split
    return load_image(index.paths[row], name=index.rels[row], draft=split.draft_size if split else None)


def explain_deep(index: LookalikeIndex, image: Image.Image, row: int, shown: Method) -> Explanation:
    """Deep methods: similarity maps over both images, the score from the search's own vectors."""
    source = shown.source
    query = features(index, image)
    result = features(index, decode_library_image(index, row))
    stored = np.asarray(index.matrix(source).data[row], np.float32)
    score = float(index.matrix(source).scores(query.vector, shown.metric)[row])
    query_map = query.map_against(stored)
    result_map = result.map_against(query.vector)
    n = numbers(query.vector, stored, shown.metric)
    lines = formula_lines(str(shown), n, shown.metric, pixels=False) + [
        f"({METRICS[shown.metric].order}; q and r are the two images' {source} vectors, {n.values:,} values each)",
        *map_lines(query.kind, result_map.shape, query_map.shape, query_map, result_map)]
    signed = bool(min(query_map.min(), result_map.min()) < 0)
    key = ("the region's share of the cosine\nhot = adds most" if query.kind == "share"
           else "cosine with the other image's vector\nhot = agrees most")
    return Explanation(shown, shown, score, query_map, result_map, signed, "\n".join(lines),
                       deep_summary(source, query.kind), query.box, result.box, key)


def map_lines(kind: str, rshape: tuple[int, ...], qshape: tuple[int, ...], query_map: np.ndarray,
              result_map: np.ndarray) -> list[str]:
    (rh, rw), (qh, qw) = rshape, qshape
    if kind == "share":
        return [f"map over the result ({rh}x{rw}): each position's share of cos(result, q); "
                f"the cells add up to {float(result_map.sum()):.6f}",
                f"map over the query ({qh}x{qw}): each position's share of cos(query, r); "
                f"the cells add up to {float(query_map.sum()):.6f}"]
    return [f"map over the result ({rh}x{rw}): cosine of the features at each position with q",
            f"map over the query ({qh}x{qw}): cosine of the features at each position with r"]


def deep_summary(source: str, kind: str) -> str:
    if kind == "share":
        return (f"Over the result, each cell is that region's share of the cosine between the result's {source} "
                "vector and the query's; over the query, the same the other way round. Hot regions add most: they "
                "look most like the other image as a whole, so they are where the match comes from. The cells add "
                "up to the score.")
    return (f"Over the result, each cell shows how much that region looks like the query as a whole (the "
            f"cosine between the {source} network's features there and the query's vector); over the query, "
            "how much each region looks like the result. Hot regions agree most: they are where the match "
            "comes from. The score itself compares the two whole-image vectors.")
