"""Renders from several callers gathered into one batch: a GPU worker running several jobs at once renders their
strengths together.

A GPU renders a batch of 16 faces in about the time of three single ones (docs/BENCHMARKS.md: 5.7 ms at batch 1,
~77 ms at 16 on an H200), so a worker that takes several jobs at once (one thread each) gains throughput when
their renders meet in one call. ``Batcher`` is the mechanism: callers ``submit`` from their threads; its own
thread gathers what arrives for at most ``wait_s`` after the first request of a batch, or until ``max_rows``
rows are waiting, runs ``run_batch`` once on all of them, and hands each caller exactly its own result.

* A lone caller is not held longer than ``wait_s``, and not at all when every caller that declared itself
  ``active`` is already waiting (a worker with one job in flight renders as if there were no batcher).
* A batch that raises is run again one request at a time, so one bad request fails alone and the others get
  their results (a render's error is a property of its inputs, or of the device, which a retry sees again).
* A request cancelled before its batch runs (``Future.cancel``, or ``should_cancel`` while waiting) is dropped
  from it; one cancelled after is computed with the others and its result discarded by its caller.
* The clock is injected (``Clock``), so the gathering is tested with a fake one.

``RenderBatcher`` applies it to a ``Renderer``: style vectors ``[B_i, C]`` per layer from each caller, one
render of their concatenation (the CUDA renderer replays one graph for it), each caller's rows back. The paste
stays with each caller (``paste_group`` on its own thread, where the faces are): pasting every job's faces on
the batcher's thread would put each photo's host work (crop, blend copy, the JPEG after it) in series with the
next render, where on the callers' threads it can overlap it (bench/cross_job.py measures the whole). On a CPU
the fast renderer renders one sample at a time, so a batch costs the sum of its parts there: a CPU worker runs
one job at a time and has no batcher (``EDIT_JOBS_PER_WORKER``, docs/SETTINGS.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import torch

from pipeline.errors import Canceled

if TYPE_CHECKING:
    from pipeline.render.renderer import Renderer

log = logging.getLogger(__name__)

Payload = TypeVar("Payload")
Result = TypeVar("Result")

CANCEL_POLL_S = 0.05  # how often a caller waiting for its batch polls its own cancel check
# The batcher's thread ends after this long without a request (the next submit starts another), so a batcher
# dropped with its Editor (a new model bundle) leaves no thread holding its renderer's weights.
IDLE_EXIT_S = 60.0


class Clock(Protocol):
    """Time as the batcher sees it: ``now()`` in seconds, and ``wait(condition, seconds)`` (called holding
    ``condition``) returning after at most ``seconds`` or when the condition is notified."""

    def now(self) -> float: ...

    def wait(self, condition: threading.Condition, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``Condition.wait`` with a timeout."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        condition.wait(seconds)


@dataclass
class _Request(Generic[Payload, Result]):
    payload: Payload
    rows: int
    arrived: float
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the batcher did, for metrics and tests: batches run, rows rendered, batches that fell back to one
    request at a time, requests dropped because their caller cancelled before the batch ran."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    retried: int = 0
    dropped: int = 0
    largest: int = 0


class Batcher(Generic[Payload, Result]):
    """Gathers ``submit``ted payloads from many threads into batches for ``run_batch(payloads) -> results`` (one
    result per payload, in order), run on the batcher's own thread.

    A batch starts with the oldest waiting request and closes ``wait_s`` after it arrived, or as soon as
    ``max_rows`` rows wait (a request's ``rows``: the images it renders; one larger than ``max_rows`` runs
    alone), or as soon as every ``active`` caller has a request waiting. Requests keep their order."""

    def __init__(self, run_batch: Callable[[list[Payload]], Sequence[Result]], max_rows: int, wait_s: float,
                 clock: Clock | None = None, name: str = "batcher", idle_exit_s: float = IDLE_EXIT_S,
                 on_batch: Callable[[int, bool], None] | None = None):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self.run_batch, self.max_rows, self.wait_s = run_batch, max_rows, wait_s
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.name, self.idle_exit_s = name, idle_exit_s
        self.on_batch = on_batch  # (rows, retried one by one) after each batch: the worker's metrics
        self.stats = BatchStats()
        self._pending: deque[_Request] = deque()
        self._condition = threading.Condition()
        self._active = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- callers ---------------------------------------------------------------------------------------------

    def submit(self, payload: Payload, rows: int = 1) -> Future:
        """Queue ``payload`` (``rows`` images) for the next batch; its ``Future`` gets its own result or error.
        ``Future.cancel()`` before the batch runs drops it."""
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        with self._condition:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            request = _Request(payload, rows, self.clock.now())
            self._pending.append(request)
            self._start()
            self._condition.notify_all()
        return request.future

    def call(self, payload: Payload, rows: int = 1, should_cancel: Callable[[], bool] | None = None,
             poll_s: float = CANCEL_POLL_S) -> Result:
        """``submit`` and wait for the result (raising the request's own error). ``should_cancel`` is polled
        every ``poll_s`` while waiting: when true the request is dropped if its batch has not started (else its
        result is discarded) and ``Canceled`` raised."""
        future = self.submit(payload, rows)
        if should_cancel is None:
            return future.result()
        while True:
            try:
                return future.result(timeout=poll_s)
            except TimeoutError:
                if should_cancel():
                    future.cancel()
                    raise Canceled() from None
            except CancelledError:
                raise Canceled() from None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Declare the calling thread a caller that will submit soon (a job rendering its strengths): once every
        active caller has a request waiting, the batch closes without waiting out ``wait_s``."""
        with self._condition:
            self._active += 1
        try:
            yield
        finally:
            with self._condition:
                self._active -= 1
                self._condition.notify_all()  # the others may now all be waiting

    def close(self) -> None:
        """Run what is waiting, then stop the thread; later submits raise."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # --- the batcher's thread --------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._condition:
                batch = self._gather()
            if batch is None:
                return
            self._run(batch)

    def _gather(self) -> list[_Request] | None:
        """Wait (holding the condition) until a batch is due and take it; None once closed and drained, or idle
        for ``idle_exit_s`` (the thread then ends, and the next submit starts another)."""
        while True:
            self._drop_cancelled()
            if not self._pending:
                if self._closed:
                    self._thread = None
                    return None
                woken = self._condition.wait(self.idle_exit_s)
                if not woken and not self._pending:
                    self._thread = None
                    return None
                continue
            now = self.clock.now()
            deadline = self._pending[0].arrived + self.wait_s
            if self._closed or now >= deadline or self._full() or self._everyone_waits():
                return self._take()
            self.clock.wait(self._condition, deadline - now)

    def _full(self) -> bool:
        return sum(r.rows for r in self._pending) >= self.max_rows

    def _everyone_waits(self) -> bool:
        return 0 < self._active <= len(self._pending)

    def _drop_cancelled(self) -> None:
        if any(r.future.cancelled() for r in self._pending):
            kept = [r for r in self._pending if not r.future.cancelled()]
            self.stats.dropped += len(self._pending) - len(kept)
            self._pending = deque(kept)

    def _take(self) -> list[_Request]:
        """The oldest requests that fit in ``max_rows`` (at least one), marked running (a cancel after this
        no longer drops them)."""
        batch, rows = [], 0
        while self._pending and (not batch or rows + self._pending[0].rows <= self.max_rows):
            request = self._pending.popleft()
            if request.future.set_running_or_notify_cancel():
                batch.append(request)
                rows += request.rows
            else:
                self.stats.dropped += 1
        return batch

    def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        stats = self.stats
        stats.batches, stats.requests = stats.batches + 1, stats.requests + len(batch)
        rows = sum(r.rows for r in batch)
        stats.rows, stats.largest = stats.rows + rows, max(stats.largest, rows)
        retries = stats.retried
        try:
            try:
                results = self._results([r.payload for r in batch])
            except Exception:
                if len(batch) == 1:
                    raise
                # one request may be the cause: each runs alone, so only the culprit fails
                log.warning("%s: a batch of %d requests failed; running them one at a time", self.name,
                            len(batch), exc_info=True)
                stats.retried += 1
                for request in batch:
                    try:
                        request.future.set_result(self._results([request.payload])[0])
                    except Exception as error:
                        request.future.set_exception(error)
                return
            for request, result in zip(batch, results, strict=True):
                request.future.set_result(result)
        except BaseException as error:  # noqa: BLE001 - every caller gets an answer, whatever happened
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        finally:
            if self.on_batch is not None:
                try:
                    self.on_batch(rows, stats.retried > retries)
                except Exception:  # noqa: BLE001 - a metric never fails a render
                    log.warning("%s: on_batch failed", self.name, exc_info=True)

    def _results(self, payloads: list[Any]) -> list:
        results = list(self.run_batch(payloads))
        if len(results) != len(payloads):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(payloads)} requests")
        return results


@dataclass(frozen=True)
class RenderRequest:
    """One caller's render: style vectors per layer ``[B, C_i]`` (``Generator.styles`` order)."""

    styles: list[torch.Tensor]

    @property
    def rows(self) -> int:
        return int(self.styles[0].shape[0])


class RenderBatcher:
    """A ``Renderer`` shared by several threads whose renders go out together: ``render(styles)`` returns the
    caller's own images ``[B, 3, size, size]``, computed in one render with whatever other callers submitted
    within ``wait_s`` (at most ``max_rows`` images a render). Renders run without autograd, on the batcher's
    thread (``Renderer.path`` then picks the CPU or CUDA renderer, as for an unbatched no-grad call)."""

    def __init__(self, renderer: Renderer, max_rows: int, wait_s: float, clock: Clock | None = None,
                 on_batch: Callable[[int, bool], None] | None = None):
        self.renderer = renderer
        self.batcher: Batcher[RenderRequest, torch.Tensor] = Batcher(self._render_batch, max_rows, wait_s, clock,
                                                                     name="render-batcher", on_batch=on_batch)

    @property
    def stats(self) -> BatchStats:
        return self.batcher.stats

    def render(self, styles: list[torch.Tensor], should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
        """``Renderer.render(styles)``, batched with other callers'. Styles that do not fit the generator fail
        here, on the caller's thread, before they could join a batch."""
        self.renderer.generator.check_styles(styles)
        request = RenderRequest([s.detach() for s in styles])
        return self.batcher.call(request, request.rows, should_cancel)

    def active(self):
        """``Batcher.active``: wrap a caller's run of renders (one job's strengths)."""
        return self.batcher.active()

    def close(self) -> None:
        self.batcher.close()

    def _render_batch(self, requests: list[RenderRequest]) -> list[torch.Tensor]:
        device = requests[0].styles[0].device
        # grad mode and the current CUDA device are per thread: this one renders by the no-grad paths, on the
        # styles' device (a worker on cuda:1 captures its graphs there)
        with torch.no_grad(), torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            if len(requests) == 1:
                return [self.renderer.render(requests[0].styles)]
            styles = [torch.cat(layer) for layer in zip(*(r.styles for r in requests), strict=True)]
            images = self.renderer.render(styles)
            # each caller its own tensor (not a view that keeps the whole batch alive)
            return [part.clone() for part in images.split([r.rows for r in requests])]
