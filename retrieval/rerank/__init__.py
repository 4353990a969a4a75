"""Re-ranking beyond nearest neighbours: alpha-query expansion (alpha-QE) and database-side augmentation (DBA).

Both are standard tools of image retrieval on top of a fixed set of vectors (Radenovic et al., "Fine-tuning
CNN image retrieval with no human annotation", 2018), and both work on any vector source: the resized
pixels or the embeddings.

* Every vector first goes into the *re-ranking space* of its source: float32, optionally flip-averaged
  (pixels: the thumbnail averaged with its mirror image, library and query alike), optionally
  square-rooted (power normalisation, signed so that CLIP's negative components keep their sign),
  centred for the correlation metric, and scaled to unit length, so a dot product is the cosine.
* DBA (index time): each library vector is replaced by the weighted sum of itself and its top-k
  neighbours in the library, weights sim^alpha, then re-normalised. It depends on the whole library, so it
  is recomputed from the current library at every build.
* alpha-QE (query time): the query plus its top-k neighbours, weighted by sim^alpha, searched again.
* The library-side transform (centring, PCA; `transform`), fitted like DBA at every build, and
  k-reciprocal re-ranking after DBA + QE (`reciprocal`), whose library side is also built then.

Modules, each depending only on those before it:
  transform, reciprocal  the library-side transform and the k-reciprocal graph, on plain arrays
  maths  the space, DBA, QE and scores on plain arrays (the k-fold evaluation uses it directly)
  build  index time: which sources are re-ranked, their DBA files and Chroma DBA collections
  query  query time: `Reranker`, the re-ranked methods' ranker
Which refinements a source gets, and k / alpha, come from the measured k-fold table
(docs/evaluation.md); SETTINGS holds the choice, the manifest records it.
"""
from __future__ import annotations

from .maths import (ALPHAS, CHUNK_ROWS, KS, SETTINGS, LibrarySide, Settings, describe, dba, expand,
                    library_side, mirror_pixels, rerank_scores, settings_for, space_rows, to_space)
from .build import (DBA_AUTO_MAX_BYTES, DBA_PREFIX_SUFFIX, MODES, build_library_side, dba_plan, drop_dba_chroma,
                    rerank_bytes, sync_dba_chroma)
from .query import Reranker

__all__ = ["ALPHAS", "CHUNK_ROWS", "DBA_AUTO_MAX_BYTES", "DBA_PREFIX_SUFFIX", "KS", "MODES", "SETTINGS",
           "LibrarySide", "Reranker", "Settings", "build_library_side", "dba", "dba_plan", "describe",
           "drop_dba_chroma", "expand", "library_side", "mirror_pixels", "rerank_bytes", "rerank_scores", "settings_for",
           "space_rows", "sync_dba_chroma", "to_space"]
