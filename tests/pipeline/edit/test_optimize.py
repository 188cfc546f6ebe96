"""StyleCLIP latent optimization on the development bundle: the loss goes down, cancel stops it, alpha."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import Canceled, PipelineError
from pipeline.edit.optimize import OptimizeConfig, learning_rate, optimize_latent
from pipeline.errors import INVALID_PARAMETER
from tests.pipeline.images import golden_dir


@pytest.fixture(scope="module")
def models(dev_editor):
    return dev_editor.models


@pytest.fixture(scope="module")
def start(models):
    g = models.generator
    return g.latent_avg.reshape(1, -1).repeat(g.n_latent, 1)


def test_optimization_lowers_the_clip_loss(models, start):
    seen = []
    result = optimize_latent(models.generator, models.clip, start, "a smiling face", OptimizeConfig(steps=12),
                             progress=lambda s, f: seen.append((s, f)))
    assert len(result.clip_losses) == 12 and all(math.isfinite(x) for x in result.losses)
    # step 0 runs at learning rate 0 (StyleCLIP's ramp-up), so compare with the starting loss
    assert min(result.clip_losses[-3:]) < result.clip_losses[0] - 0.05
    assert not np.allclose(result.optimized.numpy(), start.numpy())
    assert seen[-1] == ("optimize", 1.0) and all(s == "optimize" for s, _ in seen)
    # the generator is untouched
    assert all(not p.requires_grad for p in models.generator.parameters())


def test_identity_loss_holds_the_face_when_the_bundle_has_an_identity_model(models, start):
    assert models.identity is not None  # the dev bundle ships a tiny ArcFace
    result = optimize_latent(models.generator, models.clip, start, "a smiling face", OptimizeConfig(steps=4),
                             identity=models.identity)
    assert len(result.id_losses) == 4
    assert result.id_losses[0] == pytest.approx(0.0, abs=1e-5)  # step 0 renders the starting face itself
    assert max(result.id_losses) > 0


def test_cancel_stops_the_optimization(models, start):
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    steps = []
    with pytest.raises(Canceled):
        optimize_latent(models.generator, models.clip, start, "a bald face", OptimizeConfig(steps=50),
                        progress=lambda s, f: steps.append(f), should_cancel=should_cancel)
    assert len(steps) == 3


def test_alpha_interpolates_from_the_start_to_the_optimized_latent(models, start):
    result = optimize_latent(models.generator, models.clip, start, "a face with glasses", OptimizeConfig(steps=3))
    w = result.interpolate([0.0, 1.0, 0.5])
    assert np.array_equal(w[0].numpy(), start.numpy())
    assert np.allclose(w[1].numpy(), result.optimized.numpy(), atol=1e-6)
    assert np.allclose(w[2].numpy(), ((start + result.optimized) / 2).numpy(), atol=1e-6)


def test_learning_rate_schedule_ramps_up_and_down():
    assert learning_rate(0.0, 0.1, 0.05, 0.25) == 0.0
    assert learning_rate(0.5, 0.1, 0.05, 0.25) == pytest.approx(0.1)
    assert learning_rate(0.9, 0.1, 0.05, 0.25) < learning_rate(0.8, 0.1, 0.05, 0.25) < 0.1
    assert learning_rate(0.999, 0.1, 0.05, 0.25) < 1e-3


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"steps": 5000}, {"steps": 2.5}, {"lr": 0.0},
                                    {"lr": float("nan")}, {"l2_lambda": -1.0}, {"id_lambda": 100.0}])
def test_bad_settings_are_invalid_parameters(kwargs):
    with pytest.raises(PipelineError) as err:
        OptimizeConfig(**kwargs)
    assert err.value.code == INVALID_PARAMETER


def test_editor_optimize_mode(dev_editor):
    path = golden_dir() / "face_input.png"
    if not path.is_file():
        pytest.skip(f"golden fixtures not found in {golden_dir()}")
    inv = dev_editor.invert(path)
    metrics: dict[str, float] = {}
    reconstruction, edited = dev_editor.edit(inv, "a face", "a smiling face", [0.0, 1.0], mode="optimize",
                                             steps=4, metrics=metrics)
    (global_zero,) = dev_editor.edit(inv, "a face", "a smiling face", [0.0])
    # alpha 0 is the unedited inversion in both modes
    assert np.abs(np.asarray(reconstruction).astype(int) - np.asarray(global_zero)).max() <= 1
    assert edited.size == reconstruction.size == inv.photo_size
    assert not np.array_equal(np.asarray(edited), np.asarray(reconstruction))
    assert "optimize_seconds" in metrics
    with pytest.raises(PipelineError) as err:
        dev_editor.edit(inv, "a face", "a smiling face", [1.0], mode="optimize", steps=0)
    assert err.value.code == INVALID_PARAMETER
