"""Stages of a pipeline call: timed into the caller's ``metrics``, reported to its ``progress`` callback, a
cancellation point at every boundary (the worker's cancel lands between stages and between strengths), and an
OpenTelemetry span each (no-op unless the worker turned tracing on: common/tracing.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry import trace

from pipeline.errors import Canceled

Progress = Callable[[str, float], None]
ShouldCancel = Callable[[], bool]


class Stages:
    """Times stages into ``metrics``, reports progress, and polls cancellation at every stage boundary."""

    def __init__(self, progress: Progress | None, should_cancel: ShouldCancel | None,
                 metrics: dict[str, float] | None):
        self.progress, self.should_cancel = progress, should_cancel
        self.metrics = metrics if metrics is not None else {}

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Canceled()

    def report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)

    @contextmanager
    def __call__(self, stage: str, report: bool = True) -> Iterator[None]:
        """Time ``stage`` (added to ``metrics``), reporting its start and end unless ``report`` is false (a
        stage repeated per strength reports its own fractions)."""
        self.check()
        if report:
            self.report(stage, 0.0)
        start = time.perf_counter()
        # A span per stage (per strength for the repeated ones): a no-op unless the process set up tracing.
        with trace.get_tracer("pipeline").start_as_current_span(stage):
            yield
        key = f"{stage}_seconds"
        self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - start
        if report:
            self.report(stage, 1.0)
