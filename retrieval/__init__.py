"""Lookalike retrieval: library scan, pixel and deep-feature indexes, search and evaluation."""
