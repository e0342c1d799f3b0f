"""Wall-clock timing for the benchmarks: one definition of "time this call".

Times are seconds from ``time.perf_counter`` (monotonic, highest resolution available).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed_call(fn: Callable[[], T]) -> tuple[float, T]:
    """``(seconds, result)`` of one call."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def timed(fn: Callable[[], object], n: int = 1) -> list[float]:
    """The wall time of each of ``n`` calls, in seconds, in call order."""
    return [timed_call(fn)[0] for _ in range(n)]


def median_time(fn: Callable[[], object], n: int) -> float:
    """Median seconds over ``n`` calls (robust to a slow outlier on a shared machine)."""
    return statistics.median(timed(fn, n))


def best_time(fn: Callable[[], object], n: int = 3) -> float:
    """Fastest of ``n`` calls, in seconds (the least disturbed run)."""
    return min(timed(fn, n))


def kata_env(store: "Path") -> dict[str, str]:
    """The environment a benchmark runs ``python -m kata`` in: this checkout first on
    PYTHONPATH, ``KATA_STORE=store``, and bytecode cached beside the store (an installed
    kata has its .pyc files; a first run must not pay for compiling them each time)."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "KATA_STORE": str(store), "PYTHONPATH": str(root),
           "PYTHONPYCACHEPREFIX": str(Path(store).parent / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env
