"""`python -m retrieval map --index DIR --out FILE.png [--query IMG] [-k K]`: the library maps
(pixels | deep features, stored at index time) as a PNG, with the neighbour-agreement numbers
printed, and a query placed on them with its top k ringed. retrieval/cli.py adds it (`register`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any



def register(sub: Any) -> None:
    """Add the `map` command to `sub`, the subcommand set of argparse's add_subparsers (cli.make_parser's)."""
    p = sub.add_parser("map", help="draw the library's 2-D maps (pixels | deep) as a PNG",
                       description="Draw the maps of the library stored in the index: pixels and deep features "
                                   "side by side, coloured by class, with the share of each image's 5 nearest "
                                   "neighbours that share its class. With a query: the query as a star, its top k ringed.")
    from .cli import index_args
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--query", type=Path, default=None, help="an image to place on the maps")
    p.add_argument("-k", "--k", type=int, default=5, help="the query's top k to ring (default 5)")
    index_args(p)
    p.set_defaults(func=cmd_map)


def cmd_map(args: argparse.Namespace) -> int:
    from . import atomic
    from .map_figure import map_figure
    from .projection import describe, load_maps, locate
    from .cli import open_index
    from .errors import LookalikeError
    if args.out.suffix.lower() != ".png":
        raise LookalikeError(f"the map is saved as PNG: give an output file ending in .png, not {args.out.name!r}")
    index = open_index(args)
    maps = load_maps(index)
    placed = locate(index, args.query, args.k) if args.query is not None else []
    image, _ = map_figure(maps, list(index.labels), placed)
    for m in maps:
        print(f"{m.title}: {describe(m)}")
    for p in placed:
        title = next(m.title for m in maps if m.source == p.source)
        print(f"{title}: the query's top {len(p.top_rows)}: " + ", ".join(index.rels[r] for r in p.top_rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(args.out) as tmp:
        image.save(tmp, format="PNG")
    print(f"map saved to {args.out}")
    return 0
