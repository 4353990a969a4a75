"""The one command-line runner shared by every front end (app.py, build_index.py, python -m retrieval).

It parses, configures logging (-v for debug) and runs `args.func`. A `LookalikeError` (bad input,
a missing index, a failing server) becomes one line on stderr and exit code 2, never a traceback.
Exit codes: 0 done; 2 refused (USER_ERROR); 3 index built, with files it could not read (DONE_WITH_SKIPS);
130 interrupted (Ctrl-C or SIGTERM turned into KeyboardInterrupt): long jobs save their progress first.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .errors import LookalikeError

USER_ERROR = 2   # the exit code of a refused request
# `build_index.py index`: the index was written and is usable, but part of the library could not be
# read (files that disappeared or changed while the build read them, permission denied, folders
# that cannot be listed; retrieval.library.UNREAD_KINDS). A rerun, or fixing access, indexes them.
DONE_WITH_SKIPS = 3
INTERRUPTED = 130   # 128 + SIGINT, as shells report it


def run(parser: argparse.ArgumentParser, argv: list[str] | None, *, quiet_level: int = logging.WARNING) -> int:
    """Parse argv with `parser` and run the chosen command; returns the exit code."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else quiet_level,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LookalikeError as exc:
        from .cli import remedy_hint   # the remedy as this command line's flags
        hint = remedy_hint(exc, args)
        print(f"error: {exc}" + (f" (to fix: {hint})" if hint else ""), file=sys.stderr)   # one line
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED
