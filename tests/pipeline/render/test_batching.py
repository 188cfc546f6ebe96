"""Renders gathered across callers (``pipeline/render/batching.py``), on a fake clock: what one batch takes (the
bounded wait, the size cap, every active caller waiting), that each caller gets exactly its own result (bit for
bit the unbatched render on the CPU and reference paths), and that an error or a cancel stays with its caller."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future

import pytest
import torch

from pipeline.errors import Canceled
from pipeline.models.stylegan2 import Generator
from pipeline.render.batching import Batcher, RenderBatcher
from pipeline.render.renderer import Renderer

WAIT = 0.25  # a binary fraction: the fake clock's sums are exact
SETTLE_S = 5.0  # real seconds a test waits for the batcher's thread to answer (never reached when it works)


class FakeClock:
    """Time moves only when the test says so; ``advance`` wakes the batcher that waits on it."""

    def __init__(self) -> None:
        self.t = 64.0
        self._conditions: set[threading.Condition] = set()

    def now(self) -> float:
        return self.t

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        assert seconds > 0
        self._conditions.add(condition)
        condition.wait(0.5)  # woken by advance (or a submit); the batcher rereads the time either way

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for condition in list(self._conditions):
            with condition:
                condition.notify_all()


class Recorder:
    """A batch function that records each batch's payloads; payloads named ``bad`` make it raise."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list] = []
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, payloads: list) -> list:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(SETTLE_S)
        self.batches.append(list(payloads))
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [f"out:{p}" for p in payloads]


def make(max_rows: int = 8, wait: float = WAIT, run=None) -> tuple[Batcher, Recorder, FakeClock]:
    clock, recorder = FakeClock(), run or Recorder()
    return Batcher(recorder, max_rows=max_rows, wait_s=wait, clock=clock), recorder, clock


def result(future: Future):
    return future.result(timeout=SETTLE_S)


def test_requests_within_the_wait_share_one_batch_and_each_gets_its_own_result():
    batcher, recorder, clock = make()
    a = batcher.submit("a")
    clock.advance(WAIT / 2)  # not yet due: b still joins
    b = batcher.submit("b")
    assert not a.done() and not b.done()
    clock.advance(WAIT / 2)  # the first request's wait is over
    assert (result(a), result(b)) == ("out:a", "out:b")
    assert recorder.batches == [["a", "b"]]
    assert batcher.stats.batches == 1 and batcher.stats.rows == 2
    batcher.close()


def test_a_lone_request_waits_no_longer_than_the_wait():
    batcher, recorder, clock = make()
    a = batcher.submit("a")
    clock.advance(WAIT)
    assert result(a) == "out:a" and recorder.batches == [["a"]]
    later = batcher.submit("later")  # the next batch's wait starts with its own first request
    clock.advance(WAIT * 3 / 4)
    assert not later.done()
    clock.advance(WAIT / 4)
    assert result(later) == "out:later" and recorder.batches == [["a"], ["later"]]
    batcher.close()


def test_a_full_batch_goes_at_once_and_the_rest_waits_for_the_next():
    batcher, recorder, clock = make(max_rows=4)
    futures = [batcher.submit(f"p{i}", rows=2) for i in range(3)]
    # 4 rows are waiting: the first two requests go without the clock moving; the third starts a new batch
    assert [result(f) for f in futures[:2]] == ["out:p0", "out:p1"]
    assert not futures[2].done()
    clock.advance(WAIT)
    assert result(futures[2]) == "out:p2"
    assert recorder.batches == [["p0", "p1"], ["p2"]] and batcher.stats.largest == 4
    batcher.close()


def test_a_request_larger_than_the_cap_runs_alone():
    batcher, recorder, clock = make(max_rows=4)
    big = batcher.submit("big", rows=9)
    assert result(big) == "out:big" and recorder.batches == [["big"]]
    batcher.close()


def test_once_every_active_caller_waits_the_batch_goes_without_the_wait():
    batcher, recorder, clock = make()
    entered, release = threading.Barrier(3), threading.Event()
    answers: dict[str, str] = {}

    def job(name: str) -> None:
        with batcher.active():
            entered.wait(SETTLE_S)
            release.wait(SETTLE_S)
            answers[name] = batcher.call(name)

    threads = [threading.Thread(target=job, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    entered.wait(SETTLE_S)  # both are active before either submits
    release.set()
    for t in threads:
        t.join(SETTLE_S)
    assert answers == {"x": "out:x", "y": "out:y"}
    assert sorted(recorder.batches[0]) == ["x", "y"] and len(recorder.batches) == 1  # the clock never moved
    # a lone active caller is not delayed at all
    with batcher.active():
        assert batcher.call("solo") == "out:solo"
    batcher.close()


def test_a_failing_batch_is_retried_one_by_one_and_only_the_culprit_fails():
    batcher, recorder, clock = make()
    good, bad, other = batcher.submit("good"), batcher.submit("bad"), batcher.submit("other")
    clock.advance(WAIT)
    assert result(good) == "out:good" and result(other) == "out:other"
    with pytest.raises(ValueError, match="bad payload"):
        result(bad)
    assert recorder.batches == [["good", "bad", "other"], ["good"], ["bad"], ["other"]]
    assert batcher.stats.retried == 1
    # the batcher is still serving
    after = batcher.submit("after")
    clock.advance(WAIT)
    assert result(after) == "out:after"
    batcher.close()


def test_each_batch_is_reported_with_its_rows_and_whether_it_was_retried():
    seen: list[tuple[int, bool]] = []
    clock = FakeClock()
    batcher = Batcher(Recorder(), max_rows=8, wait_s=WAIT, clock=clock, on_batch=lambda *a: seen.append(a))
    ok = [batcher.submit("a", rows=2), batcher.submit("b")]
    clock.advance(WAIT)
    assert [result(f) for f in ok] == ["out:a", "out:b"]
    bad = [batcher.submit("c"), batcher.submit("bad")]
    clock.advance(WAIT)
    assert result(bad[0]) == "out:c"
    batcher.close()
    assert seen == [(3, False), (2, True)]


def test_a_lone_failing_request_fails_once_and_a_wrong_result_count_fails_its_batch_only():
    batcher, recorder, clock = make()
    bad = batcher.submit("bad")
    clock.advance(WAIT)
    with pytest.raises(ValueError):
        result(bad)
    assert recorder.batches == [["bad"]]
    batcher.close()

    short = Batcher(lambda payloads: payloads[:1], max_rows=8, wait_s=WAIT, clock=clock)
    a, b = short.submit("a"), short.submit("b")
    clock.advance(WAIT)
    assert result(a) == "a" and result(b) == "b"  # one at a time, each answer fits
    short.close()


def test_a_request_cancelled_before_its_batch_is_dropped_and_the_others_run():
    batcher, recorder, clock = make()
    kept, dropped = batcher.submit("kept"), batcher.submit("dropped")
    assert dropped.cancel()
    clock.advance(WAIT)
    assert result(kept) == "out:kept" and recorder.batches == [["kept"]]
    assert batcher.stats.dropped == 1
    with pytest.raises(CancelledError):
        dropped.result(timeout=0)
    batcher.close()


def test_a_cancel_while_waiting_raises_canceled_and_drops_the_request():
    batcher, recorder, clock = make()
    other = batcher.submit("other")
    with pytest.raises(Canceled):
        batcher.call("mine", should_cancel=lambda: True, poll_s=0.001)
    clock.advance(WAIT)
    assert result(other) == "out:other" and recorder.batches == [["other"]]
    batcher.close()


def test_a_cancel_after_the_batch_started_leaves_the_others_their_results():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher, recorder, clock = make(max_rows=2, run=recorder)
    first, second = batcher.submit("first"), batcher.submit("second")  # full: the batch starts at once
    assert recorder.started.wait(SETTLE_S)
    assert not second.cancel()  # running: too late to drop; its caller discards the result
    gate.set()
    assert result(first) == "out:first" and result(second) == "out:second"
    assert recorder.batches == [["first", "second"]] and batcher.stats.dropped == 0
    batcher.close()


def test_close_runs_what_waits_and_refuses_more():
    batcher, recorder, clock = make()
    waiting = batcher.submit("waiting")
    batcher.close()
    assert result(waiting) == "out:waiting"
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("late")


def test_an_idle_batcher_ends_its_thread_and_the_next_request_starts_another():
    """A batcher dropped with its Editor (a new bundle) must not keep a thread holding the old weights."""
    threads: list[threading.Thread] = []

    def run(payloads: list) -> list:
        threads.append(threading.current_thread())
        return [f"out:{p}" for p in payloads]

    batcher = Batcher(run, max_rows=1, wait_s=WAIT, clock=FakeClock(), idle_exit_s=0.01)
    assert result(batcher.submit("first")) == "out:first"  # a full batch: no clock needed
    threads[0].join(SETTLE_S)
    assert not threads[0].is_alive() and batcher._thread is None
    assert result(batcher.submit("again")) == "out:again"
    assert threads[1] is not threads[0]
    batcher.close()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        Batcher(Recorder(), max_rows=0, wait_s=WAIT)
    with pytest.raises(ValueError):
        Batcher(Recorder(), max_rows=2, wait_s=-1)
    batcher, _, _ = make()
    with pytest.raises(ValueError):
        batcher.submit("x", rows=0)
    batcher.close()


# --- renders ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small() -> Generator:
    torch.manual_seed(3)
    g = Generator(64, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 12, 32: 8, 64: 8}).eval()
    with torch.no_grad():
        for conv in [g.conv1, *g.convs]:
            conv.noise.weight.fill_(0.2)
    return g


def styles_of(g: Generator, batch: int, seed: int) -> list[torch.Tensor]:
    z = torch.randn(batch * g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g.styles(g.mapping(z).view(batch, g.n_latent, g.style_dim))


@pytest.mark.parametrize("impl", ["fast", "ref"])
def test_each_caller_gets_exactly_its_own_rows_of_one_render(small, impl):
    """Three callers (1, 2 and 1 faces) in one render: each gets exactly its rows of the render of all of them.
    On the CPU renderer (``fast``, one sample at a time) that is bit for bit what rendering it alone gives; the
    reference ops' grouped convolution sums in another order per batch size (float32 reassociation)."""
    import copy

    g = copy.deepcopy(small)
    g.impl = impl
    renderer = Renderer(g)
    requests = [styles_of(g, rows, seed) for rows, seed in ((1, 1), (2, 2), (1, 3))]
    with torch.no_grad():
        alone = [renderer.render(styles) for styles in requests]
        together = renderer.render([torch.cat(layer) for layer in zip(*requests, strict=True)]).split([1, 2, 1])
    clock = FakeClock()
    batcher = RenderBatcher(renderer, max_rows=4, wait_s=WAIT, clock=clock)
    answers: list = [None] * 3

    def caller(i: int) -> None:
        answers[i] = batcher.render(requests[i])

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SETTLE_S)  # 4 rows: a full batch, no clock needed
    assert batcher.stats.batches == 1 and batcher.stats.rows == 4
    for got, rows, single in zip(answers, together, alone, strict=True):
        assert got is not None and torch.equal(got, rows)
        if impl == "fast":
            assert torch.equal(got, single)
        else:
            assert float((got - single).abs().max() / single.abs().max()) < 1e-5
    assert len({a.untyped_storage().data_ptr() for a in answers}) == 3  # each its own tensor
    batcher.close()


def test_styles_that_do_not_fit_fail_on_the_callers_thread(small):
    batcher = RenderBatcher(Renderer(small), max_rows=4, wait_s=WAIT, clock=FakeClock())
    wrong = [s[:, :-1] for s in styles_of(small, 1, 4)]
    with pytest.raises(Exception):  # noqa: B017 - the generator's own check, whatever it raises
        batcher.render(wrong)
    assert batcher.stats.batches == 0
    batcher.close()
