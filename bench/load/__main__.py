"""`python -m bench.load ...`: the crowd load test (bench/load/crowd.py)."""
import sys

from ..common import cli
from .crowd import run, summary

sys.exit(cli(run, summary=summary))
