"""Shared benchmark helpers: timing with medians, machine info, and locating the sample library."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeat` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def p95_ms(samples: list[float]) -> float:
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> str:
    import numpy
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}")


def sample_library(path: str | None = None) -> Path:
    """The sample library (built on first use) used by the benchmarks."""
    data = Path(path) if path else ROOT / "data"
    if not (data / "train").is_dir():
        from collect.sample import build_sample_library
        build_sample_library(data)
    return data
