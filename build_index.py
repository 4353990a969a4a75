#!/usr/bin/env python3
"""Lookalike offline pipeline: crawl, download, clean, split, sample, fashion-mnist, push, pull, index, all.

A thin command line: each stage's flags and work live in the `collect` and `retrieval` packages.
Run `python build_index.py STAGE --help` for a stage's flags.
"""
from __future__ import annotations

import argparse
import logging
import sys

from collect import cli as collect_cli
from collect import fashion_mnist, sample
from retrieval import cli as retrieval_cli
from retrieval.runner import run


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build_index.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    collect_cli.register(sub)      # crawl, download, clean, split, push, pull, all
    sample.register(sub)           # sample
    fashion_mnist.register(sub)    # fashion-mnist
    retrieval_cli.register_index(sub)  # index
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(make_parser(), argv, quiet_level=logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
