"""The one command-line runner shared by every front end (app.py, build_index.py, python -m retrieval).

It parses, configures logging (-v for debug) and runs `args.func`. A `LookalikeError` (bad input,
a missing index, a failing server) becomes one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .errors import LookalikeError

USER_ERROR = 2   # the exit code of a refused request


def run(parser: argparse.ArgumentParser, argv: list[str] | None, *, quiet_level: int = logging.WARNING) -> int:
    """Parse argv with `parser` and run the chosen command; returns the exit code."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else quiet_level,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LookalikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR
