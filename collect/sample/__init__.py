"""Offline sample library: a real, class-labelled photo set built from two Debian packages.

Crawling needs the internet; this does not. GCompris (`gcompris-qt-data`) packs Wikimedia-style
photos, with per-folder README credits, into Qt resource bundles; Tux Paint
(`tuxpaint-stamps-default`) ships photo cut-outs as transparent PNGs. `collect/sample_classes.json`
says which pictures go to which class. The result has the same layout as the crawled library,
`OUT/{train,test}/<class>/*.jpg`, plus `OUT/ATTRIBUTION.json` (one record per image: origin, licence,
credit) and `OUT/ATTRIBUTION.md`. `OUT/sample.json` is written last, so its absence marks an
unfinished run; a rerun reuses the images already written and gives the same bytes.

One job per module: `credits` (README and debian/copyright credits), `sources` (discovery and
selection), `records` (attribution records and ATTRIBUTION.md), `build` (encoding, resume, the
build) and `cli` (the `sample` subcommand).
"""
from __future__ import annotations

from .build import MAX_SIDE, PARTIAL_NAME, build_sample_library
from .cli import register
from .credits import parse_credits
from .sources import GCOMPRIS_PACKAGE, GCOMPRIS_ROOT, INSTALL_HINT, TUXPAINT_PACKAGE, TUXPAINT_ROOT

__all__ = ["GCOMPRIS_PACKAGE", "GCOMPRIS_ROOT", "INSTALL_HINT", "MAX_SIDE", "PARTIAL_NAME", "TUXPAINT_PACKAGE",
           "TUXPAINT_ROOT", "build_sample_library", "parse_credits", "register"]
