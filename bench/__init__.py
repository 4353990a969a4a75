"""Lookalike benchmarks. `python -m bench` runs the suite (bench/run.py) and writes bench/RESULTS.md.

Each module also runs on its own from the repository root, `python -m bench.<name> --help` (for
example `python -m bench.pixel_query`); the load tests against the real app are the `bench.load`
subpackage (`python -m bench.load.soak`). The modules import each other relatively (`from .common
import ...`) and the product as `retrieval`/`collect`, which the repository root on sys.path (the
current folder, under `python -m`) provides.
"""
