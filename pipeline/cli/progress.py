"""A ``progress(stage, fraction)`` callback drawn as one tqdm bar on stderr."""

from __future__ import annotations

import sys


class ProgressBar:
    """Context manager and callable: each stage restarts the bar at 0 with the stage as its label."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=100, file=sys.stderr, leave=False, bar_format="{desc:<11}{bar}| {percentage:3.0f}%")
        return self

    def __call__(self, stage: str, fraction: float) -> None:
        if self._bar is None:
            return
        if self._bar.desc != stage:
            self._bar.set_description_str(stage, refresh=False)
        self._bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        self._bar.refresh()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
