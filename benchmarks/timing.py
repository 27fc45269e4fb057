"""Timing helper shared by the benchmark scripts."""
import statistics
import time


def run_seconds(fn, repeats: int) -> list[float]:
    """Wall times of `repeats` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of fn, after one warm-up call."""
    return statistics.median(run_seconds(fn, repeats))
