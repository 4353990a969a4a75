"""Placeholder: the collection stages' argparse registration (crawl, download, clean, split, push, pull, all)."""
import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the collection subcommands to build_index.py."""
