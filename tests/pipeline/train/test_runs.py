"""The run registry: listing runs with their metrics, and promoting a checkpoint into the bundle the workers load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.edit.editor import Editor
from pipeline.errors import PipelineError
from pipeline.models.e4e import load_encoder
from pipeline.train import runs
from pipeline.weights.bundle import Bundle, read_manifest


def fake_run(directory, bundle, steps=(2, 4), best=2):
    """A run directory as ``finetune`` writes it, with a style head nudged per step (no training needed)."""
    e4e = load_encoder(bundle.path("encoder"))
    (directory / runs.CHECKPOINTS).mkdir(parents=True)
    # step 0 is the starting encoder (no checkpoint): never "best", even when it scores lowest
    runs.record_validation(directory, 0, {"l2": 0.05}, primary="l2")
    runs.write_json(directory / runs.CONFIG, {"run_id": f"{directory.name}-abc123", "options": {
        "iters": max(steps), "freeze": "all-but-styles", "bundle": str(bundle.dir)}})
    for step in steps:
        with torch.no_grad():
            e4e.encoder.styles[0].linear.bias.add_(0.5)
        runs.save_checkpoint(runs.checkpoint_path(directory, step), e4e, {"step": step})
        runs.append_metrics(directory, {"step": step, "loss": 1.0 / step})
        runs.record_validation(directory, step, {"l2": 0.1 if step == best else 0.2}, primary="l2")
    return directory


@pytest.fixture
def bundle(dev_bundle, tmp_path):
    """A private copy of the session's dev bundle (promote rewrites the manifest)."""
    shutil.copytree(dev_bundle.dir, tmp_path / "bundle")
    return Bundle.load(tmp_path / "bundle")


def test_list_shows_runs_with_their_best_validation(bundle, tmp_path, capsys):
    from pipeline.cli import main

    fake_run(tmp_path / "runs" / "a", bundle, best=2)
    fake_run(tmp_path / "runs" / "b", bundle, steps=(3,), best=3)
    found = runs.find_runs(tmp_path / "runs")
    assert [(r.run_id, r.step, r.best_step) for r in found] == [("a-abc123", 4, 2), ("b-abc123", 3, 3)]
    assert main(["runs", "list", "--root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "a-abc123" in out and "l2 0.1000" in out
    assert main(["runs", "list", "--root", str(tmp_path / "runs"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)[0]
    assert (listed["best"], listed["baseline"]) == ({"step": 2, "l2": 0.1}, {"step": 0, "l2": 0.05})


def test_promote_changes_the_encoder_the_worker_loads(bundle, tmp_path):
    run = fake_run(tmp_path / "run", bundle, best=2)
    before = Editor(Bundle.load(bundle.dir))
    old_version, old_file = before.encoder_version, bundle.manifest.models["encoder"].file

    record = runs.promote(run, bundle.dir, "best")

    # what a worker does at start: Bundle.load + Editor; the encoder is the promoted checkpoint
    after = Editor(Bundle.load(bundle.dir, verify=True))
    assert after.encoder_version != old_version
    assert after.encoder_version == record["sha256"][:12]
    manifest = read_manifest(bundle.dir)
    assert manifest.extra["encoder_source"]["run"] == "run-abc123"
    assert manifest.extra["encoder_source"]["step"] == 2 and manifest.extra["encoder_source"]["val"]["l2"] == 0.1
    assert (bundle.dir / old_file).is_file(), "the previous encoder stays for rolling back"
    promoted = load_encoder(runs.checkpoint_path(run, 2)).encoder.state_dict()
    for key, value in after.models.encoder.encoder.state_dict().items():
        assert torch.equal(value, promoted[key]), key
    assert "training" not in torch.load(bundle.dir / record["file"], weights_only=True)

    runs.promote(run, bundle.dir, "latest")
    assert Editor(Bundle.load(bundle.dir)).encoder_version not in (old_version, after.encoder_version)


def test_promote_refuses_what_is_not_there(bundle, tmp_path):
    run = fake_run(tmp_path / "run", bundle)
    manifest_before = (bundle.dir / "manifest.json").read_text()
    with pytest.raises(PipelineError, match="no checkpoint for step 3"):
        runs.promote(run, bundle.dir, "3")
    with pytest.raises(PipelineError, match="best, latest or a step"):
        runs.promote(run, bundle.dir, "newest")
    with pytest.raises(PipelineError, match="not a fine-tuning run"):
        runs.promote(tmp_path, bundle.dir)
    assert (bundle.dir / "manifest.json").read_text() == manifest_before
