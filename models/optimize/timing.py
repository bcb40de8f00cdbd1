"""Timing a call in a loop: the benchmark's timed loop (warm-up, a time budget, an optional stop
once the median's CI is narrow enough) and the cheap CI of a median it checks while timing. Used by
the benchmark and by the runtime settings search (which passes a fake clock in its tests)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["median_ci_halfwidth", "time_calls"]


def median_ci_halfwidth(times: list[float] | np.ndarray) -> float:
    """Half-width of a distribution-free 95% CI of the median (order statistics), relative to the
    median: cheap enough to check while timing, and no narrower than the bootstrap reported later."""
    x = np.sort(np.asarray(times, dtype=float))
    n = len(x)
    if n < 5:
        return float("inf")
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half))
    med = float(np.median(x))
    return float((x[hi] - x[lo]) / 2 / med) if med > 0 else float("inf")


def time_calls(
    fn: Callable[[Any], Any],
    inputs: list[Any],
    warmup: int,
    iterations: int,
    budget_s: float | None,
    min_iterations: int,
    target_ci: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> np.ndarray:
    """Call ``fn`` on ``inputs`` (cycled): ``warmup`` untimed calls, then up to ``iterations`` timed
    ones; stop early after ``min_iterations`` when the time budget is spent or, with ``target_ci``,
    once the p50's 95% CI is within +-target_ci of it (checked every 10 calls). ``clock`` (seconds)
    times the calls and the budget; tests pass a fake one."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    start = clock()
    for i in range(iterations):
        t0 = clock()
        fn(inputs[i % len(inputs)])
        times.append(clock() - t0)
        if i + 1 < min_iterations:
            continue
        if budget_s is not None and clock() - start > budget_s:
            break
        if target_ci is not None and (i + 1) % 10 == 0 and median_ci_halfwidth(times) <= target_ci:
            break
    return np.asarray(times)
