"""`python -m retrieval explain QUERY RESULT --index DIR --method M --out FILE.png`: why a result
matched (retrieval.explain), printed as the score's formula and saved as a figure."""
from __future__ import annotations

import argparse
from typing import Any
from pathlib import Path

from .errors import LookalikeError


def result_rel(data_dir: Path, result: str, holds) -> str:
    """RESULT as a library rel: a rel the index holds as it is, else a file path inside the
    library folder made relative to it. Anything else is refused by explain (not in the library)."""
    if holds(result):
        return result
    path = Path(result).expanduser()
    if path.is_file():
        try:
            return path.resolve().relative_to(Path(data_dir).resolve()).as_posix()
        except ValueError:
            raise LookalikeError(f"{result} is not an image of this library (it is outside the library "
                                 "folder)") from None
    return result


def cmd_explain(args: argparse.Namespace) -> int:
    from .cli import open_index
    from .explain import explain, explanation_figure, library_image
    from .images import load_image
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise LookalikeError(f"the figure is saved as PNG: give an output file ending in .png, not {out.name!r}")
    index = open_index(args)
    method = args.method or str(index.default_method)
    rel = result_rel(index.data_dir, str(args.result), index.holds)
    expl = explain(index, args.query, rel, method, name=str(args.query))
    figure = explanation_figure(expl, load_image(args.query, name=str(args.query)), library_image(index, rel))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.save(out, format="PNG")
    except OSError as exc:
        raise LookalikeError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"# {expl.summary}")
    print(expl.formula)
    print(f"saved {out}")
    return 0


def register(sub: Any) -> None:
    """The `explain` subcommand (retrieval/cli.py's make_parser adds it)."""
    from .cli import index_args
    p = sub.add_parser("explain", help="why a result matched: maps over both images and the score's formula",
                       description="Explain one result of a search: for pixel methods, how much each spot of the "
                                   "two images adds to the score (the spots add up to it); for deep methods, which "
                                   "regions of each image look most like the other. Prints the score's formula "
                                   "with this pair's numbers and saves the figure as a PNG.")
    p.add_argument("query", type=Path, help="query image path")
    p.add_argument("result", help="the result: a library image's path, or its path inside the library "
                                  "(as in the app, e.g. train/bird/heron.jpg)")
    p.add_argument("--method", default=None, help="e.g. pixel-l1, effnet-cosine (default: the index's deep default)")
    p.add_argument("--out", type=Path, required=True, help="the figure to write (.png)")
    index_args(p)
    p.set_defaults(func=cmd_explain)
