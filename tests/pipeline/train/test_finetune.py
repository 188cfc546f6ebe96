"""Fine-tuning the dev bundle's encoder on faces its own generator drew: loss down, frozen bytes kept, official
checkpoints, exact resume after a SIGKILL. Tiny on purpose (64² bundle and loss resolution, batch 2, 3 steps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.e4e import load_encoder
from pipeline.train import runs
from pipeline.train.finetune import GROUPS, FinetuneConfig, apply_freeze, finetune, frozen_groups, group_of

ITERS = 3


def write_faces(bundle, directory: Path, n: int = 6, seed: int = 1) -> Path:
    """Faces from the bundle's own generator: aligned by construction (random weights: noise-like faces)."""
    from PIL import Image

    from pipeline.models.stylegan2 import load_generator

    g = load_generator(bundle.path("generator"))
    with torch.no_grad():
        images = g(g.mapping(torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed))))
    directory.mkdir(parents=True)
    for i, image in enumerate(((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(directory / f"{i}.png")
    return directory


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads measured 15x the CPU time per step
    (spinning while the other core is busy); the subprocess below gets OMP_NUM_THREADS=1 for the same reason."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    from pipeline.weights.dev_bundle import make_dev_bundle

    root = tmp_path_factory.mktemp("finetune")
    bundle = make_dev_bundle(root / "bundle", size=64)
    faces = write_faces(bundle, root / "faces")
    config = FinetuneConfig(data=str(faces), bundle=str(bundle.dir), out=str(root / "run"), iters=ITERS, batch=2,
                            size=64, lr=1e-3, val_split=0.34, val_every=ITERS, save_every=ITERS, align="no",
                            workers=0, progress=False, device="cpu")
    result = finetune(config)
    return root, bundle, config, result


def test_every_encoder_parameter_has_one_freeze_group(setup):
    _, bundle, _, _ = setup
    e4e = load_encoder(bundle.path("encoder"))
    assert {group_of(name) for name, _ in e4e.encoder.named_parameters()} == set(GROUPS)
    trainable = apply_freeze(e4e.encoder, frozen_groups("all-but-styles"))
    assert {id(p) for p in trainable} == {id(p) for p in e4e.encoder.styles.parameters()}
    with pytest.raises(Exception, match="freeze"):
        frozen_groups("body,nonsense")


def test_validation_loss_goes_down(setup):
    root, _, _, result = setup
    val = json.loads((root / "run" / runs.VAL).read_text())
    first, last = val["evaluations"][0], val["evaluations"][-1]
    assert (first["step"], last["step"]) == (0, ITERS)
    assert last["l2"] < first["l2"]
    assert result == {k: v for k, v in last.items() if k != "step"}
    rows = runs.read_metrics(root / "run")
    assert [r["step"] for r in rows] == list(range(1, ITERS + 1))
    assert all(r["loss"] > 0 and "delta" in r and "l2" in r for r in rows)
    assert (root / "run" / runs.CURVES).stat().st_size > 1000


def test_frozen_parameters_keep_their_bytes_and_the_checkpoint_loads(setup):
    root, bundle, _, _ = setup
    before = load_encoder(bundle.path("encoder")).encoder.state_dict()
    after_model = load_encoder(root / "run" / runs.CHECKPOINTS / f"step_{ITERS:06d}.pt")
    after = after_model.encoder.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if before[k].numpy().tobytes() != after[k].numpy().tobytes()}
    assert changed, "training changed nothing"
    assert all(k.startswith("styles.") for k in changed), sorted(changed)[:5]
    # every style head's weights moved, and the buffers (BatchNorm statistics) of frozen layers did not
    assert {k for k in changed if k.endswith("linear.weight")} == {k for k in before
                                                                   if k.startswith("styles.") and
                                                                   k.endswith("linear.weight")}
    latest = torch.load(root / "run" / runs.LATEST, weights_only=True)
    groups = latest["training"]["optimizer"]["param_groups"]
    n_styles = len(list(after_model.encoder.styles.parameters()))
    assert sum(len(g["params"]) for g in groups) == n_styles
    assert latest["training"]["step"] == ITERS


def test_the_pipeline_edits_with_the_finetuned_encoder(setup, tmp_path):
    """The fine-tuned checkpoint inverts a face and the Editor edits from those codes."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.edit.editor import Editor
    from pipeline.edit.inversion import Inversion

    root, bundle, config, _ = setup
    e4e = load_encoder(root / "run" / runs.LATEST)
    face = Image.open(next(Path(config.data).glob("*.png"))).convert("RGB")
    x = torch.from_numpy(np.asarray(face, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        codes = e4e(torch.nn.functional.interpolate(x, size=256, mode="bilinear"))[0].numpy()
    buf = io.BytesIO()
    face.save(buf, format="PNG")
    side = face.width - 1.0
    inv = Inversion(codes=codes, quad=[[0, 0], [0, side], [side, side], [side, 0]], qsize=side + 1, n_faces=1,
                    note="", photo=buf.getvalue(), photo_size=face.size)
    images = Editor(bundle).edit(inv, "a face", "a smiling face", alphas=[0, 2])
    assert [im.size for im in images] == [face.size, face.size]


def test_resume_after_sigkill_continues_exactly(setup, tmp_path):
    """Kill a run mid-way (SIGKILL), rerun it: it continues from latest.pt and ends where the uninterrupted
    run ended (same data order, same optimizer state), bit for bit up to float noise."""
    root, _, config, _ = setup
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "pipeline", "finetune", "--data", config.data, "--bundle", config.bundle,
            "--out", str(out), "--iters", str(ITERS), "--batch", "2", "--size", "64", "--lr", "1e-3",
            "--val-split", "0.34", "--val-every", str(ITERS), "--save-every", "1", "--align", "no",
            "--workers", "0", "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[3], env={**os.environ, "PYTHONPATH": ".", "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    try:
        while not (out / runs.LATEST).is_file():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    saved = torch.load(out / runs.LATEST, weights_only=True)["training"]["step"]
    assert 1 <= saved < ITERS
    finetune(replace(config, out=str(out), save_every=1))
    rows = runs.read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, ITERS + 1))
    config_record = json.loads((out / runs.CONFIG).read_text())
    assert config_record["resumes"][0]["step"] == saved
    resumed = load_encoder(out / runs.LATEST).encoder.state_dict()
    straight = load_encoder(root / "run" / runs.LATEST).encoder.state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
    with pytest.raises(PipelineError, match="different freeze"):  # another experiment: refused, nothing touched
        finetune(replace(config, out=str(out), freeze="none", iters=ITERS + 1))
