"""Lookalike collection: sample library, crawl, download, clean, split, Hub dataset."""
