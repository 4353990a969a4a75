"""The `sample` subcommand of build_index.py: flags in, a short report out."""
from __future__ import annotations

import argparse
from pathlib import Path

from retrieval.paths import ATTRIBUTION, DEFAULT_DATA

from .build import build_sample_library
from .sources import GCOMPRIS_ROOT, INSTALL_HINT, TUXPAINT_ROOT


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `sample` subcommand to build_index.py."""
    p = sub.add_parser(
        "sample", help="build the offline sample library from Debian packages",
        description="Build a class-labelled photo library (OUT/{train,test}/<class>/*.jpg, with "
                    f"OUT/{ATTRIBUTION}) offline from the Debian packages gcompris-qt-data and "
                    f"tuxpaint-stamps-default ({INSTALL_HINT}). Reruns are cheap and give the same files.")
    p.add_argument("--out", type=Path, default=DEFAULT_DATA, help=f"library folder (default: {DEFAULT_DATA})")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of each class held out as test queries, at least one (default: 0.1)")
    p.add_argument("--workers", type=int, default=None, help="conversion threads (default: CPU count)")
    p.add_argument("--gcompris-root", type=Path, default=GCOMPRIS_ROOT, help=argparse.SUPPRESS)
    p.add_argument("--tuxpaint-root", type=Path, default=TUXPAINT_ROOT, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    summary = build_sample_library(args.out, seed=args.seed, test_fraction=args.test_fraction,
                                   workers=args.workers, gcompris_root=args.gcompris_root,
                                   tuxpaint_root=args.tuxpaint_root)
    n_train = sum(c["train"] for c in summary["classes"].values())
    n_test = sum(c["test"] for c in summary["classes"].values())
    print(f"sample library: {summary['images']} images ({n_train} train, {n_test} test) in "
          f"{len(summary['classes'])} classes under {summary['out']} "
          f"[{summary['encoded']} written, {summary['reused'] + summary['moved']} reused, "
          f"{summary['removed']} removed, {summary['seconds']} s]")
    for cls, counts in summary["classes"].items():
        print(f"  {cls:<14} train {counts['train']:>3}  test {counts['test']:>2}")
    print(f"licences: {', '.join(f'{k} {v}' for k, v in summary['licences'].items())} "
          f"(see {summary['out']}/{ATTRIBUTION})")
    return 0
