"""Medians of repeated runs, with the first call excluded and a time budget per measurement.

A first call pays one-off costs (allocator growth, oneDNN/cuDNN kernel selection, lazy imports), so it is run
untimed. Slow measurements (a 16-image 1024² batch on two cores) would blow the suite's time limit at a
fixed repeat count, so the number of timed runs shrinks to what ``budget_s`` allows, never below one; the
report states how many runs every median came from.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed run; ``median`` is what the report shows."""

    runs: tuple[float, ...]
    warmup_s: float | None  # the untimed first call (None when it was skipped)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def n(self) -> int:
        return len(self.runs)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (``q`` in [0, 100]) of the runs."""
        ordered = sorted(self.runs)
        k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[k]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], repeats: int, budget_s: float, device: torch.device = torch.device("cpu"),
            warmup: bool = True) -> Timing:
    """Run ``fn`` once untimed (unless ``warmup`` is False), then up to ``repeats`` timed runs, stopping early
    once the timed runs have used ``budget_s`` (at least one timed run always happens)."""
    warm = None
    if warmup:
        warm = _timed(fn, device)
        if warm > 0:
            repeats = max(1, min(repeats, int(budget_s // warm)))
    runs: list[float] = []
    spent = 0.0
    while len(runs) < repeats and (not runs or spent + runs[-1] <= budget_s):
        runs.append(_timed(fn, device))
        spent += runs[-1]
    return Timing(tuple(runs), warm)


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int, budget_s: float,
                        device: torch.device = torch.device("cpu")) -> dict[str, Timing]:
    """``measure`` for several functions whose times are compared: one untimed call of each, then rounds that
    run each once in turn, so load that drifts during the measurement (other work on a shared machine) hits
    them alike. The rounds stop at ``repeats`` or once they have used ``budget_s``; at least one round runs."""
    warm = {name: _timed(fn, device) for name, fn in fns.items()}
    per_round = sum(warm.values())
    if per_round > 0:
        repeats = max(1, min(repeats, int(budget_s // per_round)))
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(_timed(fn, device))
    return {name: Timing(tuple(runs[name]), warm[name]) for name in fns}


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over rounds of ``a``'s time over ``b``'s in the same round (see ``measure_interleaved``)."""
    return statistics.median(x / y for x, y in zip(a.runs, b.runs, strict=True))


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start
