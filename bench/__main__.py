"""`python -m bench [--quick] [--only NAME ...]`: run the benchmark suite (see bench/run.py)."""
import sys

from .run import main

sys.exit(main())
