#!/usr/bin/env python3
"""Lookalike web app: a Gradio front end over a built index (locally or on Hugging Face Spaces).

    python app.py [--index index] [--data DIR] [--host 127.0.0.1] [--port 7860] [--share]
                  [--hub-repo user/dataset]

The index is opened once at start-up and never rebuilt per query. When it is missing and a Hub
dataset repo is configured (--hub-repo or LOOKALIKE_HUB_REPO), the library and index are
downloaded into hub/ beside this file first; with neither, the app exits with the build command.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from retrieval.paths import APP_HUB, APP_INDEX
from retrieval.runner import run
from webui.start import HUB_ENV, locate_index


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, default=APP_INDEX, help="index folder (default: index/ beside app.py)")
    p.add_argument("--data", type=Path, default=None, help="library root, if it moved since the index was built")
    p.add_argument("--host", default=None, help="address to listen on (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public *.gradio.live link")
    p.add_argument("--hub-repo", default=None,
                   help=f"Hub dataset repo to fetch the library and index from when --index is missing "
                        f"(default: ${HUB_ENV})")
    p.add_argument("--chroma-url", default=None, help="Chroma server http://HOST:PORT (default: as recorded in the index)")
    from retrieval.cli import add_precision_option
    add_precision_option(p, "the query model's precision")
    p.add_argument("--no-warm-up", action="store_true",
                   help="load the model on the first deep query instead of in the background at start-up")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=serve_app)
    return p


def serve_app(args: argparse.Namespace) -> int:
    index_dir, data_dir = locate_index(args.index, args.data, args.hub_repo, APP_HUB)
    from retrieval.search import LookalikeIndex
    index = LookalikeIndex.open(index_dir, data_dir=data_dir, chroma_url=args.chroma_url,
                                precision=args.precision)
    from webui.layout import build_demo, launch_options
    from webui.warmup import WarmUp, calibration_cache
    warm = WarmUp(index, calibration_cache=calibration_cache())
    if not args.no_warm_up:
        warm.start()   # model (and Chroma) load in the background; pixel search works meanwhile
    demo = build_demo(index, warm)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share or None,
                **launch_options(index))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python app.py` and the `lookalike-app` entry point (pyproject.toml)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported (serve_app)
    return run(make_parser(), argv, quiet_level=logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
