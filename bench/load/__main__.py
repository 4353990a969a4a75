"""`python -m bench.load ...`: the crowd load test (bench/load/crowd.py)."""
import sys

from .crowd import main

sys.exit(main())
