"""Lookalike benchmarks. `python -m bench` runs the suite (bench/run.py) and writes bench/RESULTS.md.

Each bench/<name>.py also runs on its own (`python bench/<name>.py --help`), where bench/ is the
first entry of sys.path and the modules import each other by bare name (`from common import ...`).
Importing the package puts bench/ (and the repository root) on sys.path so that the same modules
import the same way inside the suite and in tests.
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
