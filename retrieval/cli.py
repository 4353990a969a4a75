"""Command line: `python -m retrieval search|evaluate|methods` and `build_index.py index`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import LookalikeError
from .paths import DEFAULT_DATA, DEFAULT_INDEX
from .runner import run


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", type=Path, default=DEFAULT_INDEX, help=f"index folder (default: {DEFAULT_INDEX})")
    p.add_argument("--data", type=Path, default=None,
                   help="library root, if it moved since the index was built (default: as recorded)")
    p.add_argument("--pixel-size", type=int, default=None, help="refuse an index built at another size")
    p.add_argument("--model", default=None, help="refuse an index built with another model")
    p.add_argument("--chroma-url", default=None, help="Chroma server http://HOST:PORT (default: as recorded)")


def _open(args: argparse.Namespace):
    from .search import LookalikeIndex
    return LookalikeIndex.open(args.index, pixel_size=args.pixel_size, model=args.model,
                               data_dir=args.data, chroma_url=args.chroma_url)


def cmd_search(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.text is None):
        raise LookalikeError("give exactly one query: an IMAGE path or --text 'a prompt'")
    index = _open(args)
    method = args.method or ("pixel-l1" if args.text is None or not index.manifest.embedder
                             else f"{index.manifest.embedder['name']}-cosine")
    order = index.parse_method(method)
    # Loading the model (and Chroma) is reported apart from the query; a text query on an index
    # without a text tower is refused by search_text before anything loads.
    loaded, load_secs = index.prepare(method) if args.text is None or index.has_text else (set(), 0.0)
    if args.text is not None:
        hits, secs = index.search_text(args.text, method, args.k)
    else:
        hits, secs = index.search(args.image, method, args.k)
    if loaded:
        print(f"# loaded the {' and '.join(sorted(loaded))} in {load_secs:.2f} s")
    print(f"# {method} ({'higher' if order.higher_is_better else 'lower'} is more similar), "
          f"query {secs * 1000:.1f} ms")
    print("rank\tclass\tscore\tpath")
    for h in hits:
        print(f"{h.rank}\t{h.label}\t{h.score:.6g}\t{h.path}")
    if args.plot:
        if args.image is None:
            raise LookalikeError("--plot needs an image query")
        from .plot import plot_results
        print(f"saved {plot_results(args.image, hits, method, args.plot)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import atomic
    from .evaluate import evaluate_index, format_table
    index = _open(args)
    report = evaluate_index(index, methods=args.methods or None)
    if args.save:
        from .paths import EVALUATION
        atomic.write_json(index.index_dir / EVALUATION, report)
    print(json.dumps(report, indent=1) if args.json else format_table(report))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .metrics import METRICS
    index = _open(args)
    for name in index.methods:
        m = index.parse_method(name)
        print(f"{name}\t{METRICS[m.metric].order}\t{'HNSW (Chroma)' if m.hnsw else 'exact'}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """The `index` stage, for both `build_index.py index` and `build_index.py all`."""
    from .indexing import build_index
    summary = build_index(args.data, args.index, pixel_size=args.pixel_size, model=args.model,
                          chroma_url=args.chroma_url, evaluate=not args.no_eval, batch_size=args.batch_size)
    print(f"indexed {summary['images']} images at {summary['pixel_size']}px "
          f"({summary['embedded']} embedded, {len(summary['skipped'])} skipped) -> {args.index}")
    if "evaluation" in summary:
        from .evaluate import format_table
        print(format_table(summary["evaluation"]))
    return 0


def add_index_build_options(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    """The index stage's options (all but --data/--index), shared by `index` and `all`."""
    from .indexing import DEFAULT_PIXEL_SIZE
    p.add_argument("--pixel-size", type=int, default=DEFAULT_PIXEL_SIZE,
                   help=f"side of the resized pixel vectors (default: {DEFAULT_PIXEL_SIZE})")
    p.add_argument("--model", default="auto",
                   help="embedder: 'auto' (CLIP if its weights are available, else the offline "
                        "efficientnet-lite0 backbone), 'effnet', an open_clip spec such as "
                        "ViT-B-32:laion2b_s34b_b79k or ViT-B-32:/path/ckpt.pt, or 'none' (pixels only)")
    p.add_argument("--chroma-url", default=None, help="use a Chroma server http://HOST:PORT instead of the embedded store")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default: 32)")
    p.add_argument("--no-eval", action="store_true", help="skip writing evaluation.json")


def register_index(sub: "argparse._SubParsersAction") -> None:
    """The `index` stage of build_index.py."""
    p = sub.add_parser("index", help="build or update the search index for DATA/train",
                       description="Resize every library image once (pixel index), embed new or changed "
                                   "images (--model), sync the Chroma collections and write evaluation.json.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"library root with train/ and test/ (default: {DEFAULT_DATA})")
    p.add_argument("--index", type=Path, default=DEFAULT_INDEX, help=f"index folder (default: {DEFAULT_INDEX})")
    add_index_build_options(p)
    p.set_defaults(func=cmd_index)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval", description="Search and evaluate a Lookalike index.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="rank the library for an image (or --text) query")
    s.add_argument("image", nargs="?", type=Path, help="query image path")
    s.add_argument("--text", default=None, help="text query (CLIP indexes only)")
    s.add_argument("--method", default=None, help="e.g. pixel-l1, pixel-corr, effnet-cosine, clip-hnsw-cosine")
    s.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    s.add_argument("--plot", type=Path, default=None, help="save the query and results as a PNG")
    _index_args(s)
    s.set_defaults(func=cmd_search)
    e = sub.add_parser("evaluate", help="P@1/5/10 and mAP per method, test split as queries")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--methods", nargs="*", default=None, help="only these methods")
    e.add_argument("--save", action="store_true", help="also write INDEX/evaluation.json (read by the app)")
    _index_args(e)
    e.set_defaults(func=cmd_evaluate)
    m = sub.add_parser("methods", help="list the methods this index offers and their sort order")
    _index_args(m)
    m.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(make_parser(), argv)
