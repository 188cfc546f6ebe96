"""An ``Editor`` shared by several threads (a GPU worker running several jobs) renders their strengths together
through its batcher (``RenderConfig.batch_max``): each call gets exactly the photos it gets alone, and a lone
call is not held back. On the development bundle (CPU renderer: one sample at a time, so bit for bit)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from pipeline import Editor, Inversion
from pipeline.edit.editor import Change
from pipeline.render.batching import RenderBatcher
from pipeline.render.config import RenderConfig
from tests.pipeline.render.test_batching import SETTLE_S, WAIT, FakeClock


@pytest.fixture(scope="module")
def inversion(dev_editor, face_bytes) -> Inversion:
    return dev_editor.invert(face_bytes)


def batching(dev_bundle, dev_editor, max_rows: int) -> tuple[Editor, RenderBatcher]:
    """An Editor on the same loaded models, whose renders go through a batcher on a fake clock (time never moves:
    a batch goes when it is full or every active caller waits)."""
    batcher = RenderBatcher(dev_editor.models.renderer, max_rows=max_rows, wait_s=WAIT, clock=FakeClock())
    editor = Editor(dev_bundle, render=RenderConfig(batch_max=max_rows))
    editor._models, editor._directions = dataclasses.replace(dev_editor.models, batcher=batcher), dev_editor._directions
    return editor, batcher


def pixels(outputs) -> list[np.ndarray]:
    return [np.asarray(o.image) for o in outputs]


def test_two_calls_at_once_render_together_and_each_gets_its_own_photos(dev_bundle, dev_editor, inversion,
                                                                         face_bytes):
    jobs = {"smile": ([Change("a face", "a smiling face")], [-2.0, 0.0, 2.0]),
            "hair": ([Change("a face", "a face with blue hair", 0.5)], [1.0, 3.0, -1.0])}
    alone = {name: pixels(dev_editor.render(face_bytes, [inversion], changes, alphas))
             for name, (changes, alphas) in jobs.items()}
    editor, batcher = batching(dev_bundle, dev_editor, max_rows=2)
    together: dict[str, list] = {}
    seen: dict[str, list[int]] = {name: [] for name in jobs}
    errors: list[BaseException] = []

    def job(name: str) -> None:
        changes, alphas = jobs[name]
        try:
            together[name] = pixels(editor.render(face_bytes, [inversion], changes, alphas,
                                                  on_output=lambda o: seen[name].append(o.index)))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    # the test is a caller that never submits: batches go only when full (one strength of each job)
    with batcher.active():
        threads = [threading.Thread(target=job, args=(name,)) for name in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SETTLE_S * 6)
    assert not errors and set(together) == set(jobs)
    assert batcher.stats.batches == 3 and batcher.stats.rows == 6 and batcher.stats.largest == 2
    for name in jobs:
        assert seen[name] == [1, 0, 2]  # each job's own progress, middle strength first
        assert all(np.array_equal(a, b) for a, b in zip(together[name], alone[name], strict=True)), name
    batcher.close()


def test_a_lone_call_is_not_held_back(dev_bundle, dev_editor, inversion, face_bytes):
    """The fake clock never moves: the call's renders can only go because it is the one active caller."""
    editor, batcher = batching(dev_bundle, dev_editor, max_rows=16)
    outputs = editor.render(face_bytes, [inversion], [Change("a face", "a smiling face")], [0.0, 2.0])
    assert batcher.stats.batches == 2 and batcher.stats.largest == 1
    expected = dev_editor.render(face_bytes, [inversion], [Change("a face", "a smiling face")], [0.0, 2.0])
    assert all(np.array_equal(a, b) for a, b in zip(pixels(outputs), pixels(expected), strict=True))
    batcher.close()


def test_batching_is_off_unless_configured(dev_editor):
    assert not RenderConfig().batching and dev_editor.models.batcher is None
    with pytest.raises(ValueError):
        RenderConfig(batch_max=0)
    with pytest.raises(ValueError):
        RenderConfig(batch_wait_ms=-1)
