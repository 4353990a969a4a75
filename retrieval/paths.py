"""One home for the default folders and the file names that several layers share.

Front ends (app.py, build_index.py, python -m retrieval), the pipeline and the tests all read these,
so a folder or file name is changed here and nowhere else.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATA = Path("data")          # the library, relative to the working directory
DEFAULT_INDEX = Path("index")        # the index folder, relative to the working directory
APP_INDEX = PROJECT_ROOT / "index"   # the index the app serves by default: beside app.py
APP_HUB = PROJECT_ROOT / "hub"       # where the app restores a library and index from the Hub
ARTIFACTS = Path("artifacts")        # working files of the pipeline, benchmarks and test screenshots

MANIFEST = "manifest.json"           # inside an index folder
EVALUATION = "evaluation.json"       # inside an index folder
ATTRIBUTION = "ATTRIBUTION.json"     # inside a library folder
ATTRIBUTION_MD = "ATTRIBUTION.md"    # inside a library folder, for people
HUB_INDEX = "index"                  # the index folder inside a Hub dataset repo, beside the library
