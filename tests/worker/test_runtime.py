"""The worker's Editor holder: an explicit MODEL_DIR without a bundle fails typed, and is retried per job; a
read-only bundle still serves new text pairs (caches go to CACHE_DIR); the Editor renders as the RENDER_*
settings say."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import get_args

import pytest

from common.settings import Settings
from pipeline import PipelineError
from pipeline.render.config import CUDA_PRECISIONS, NNPACK_MODES, RenderConfig
from worker.runtime import Runtime, render_config


def test_missing_bundle_fails_typed_then_loads_once_it_appears(dev_bundle, tmp_path):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    runtime = Runtime(Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", storage_dir=tmp_path / "store",
                               model_dir=model_dir))  # fmt: skip
    with pytest.raises(PipelineError) as error:
        runtime.editor()
    assert error.value.code == "model_missing"  # an explicit MODEL_DIR is never swapped for the dev bundle

    shutil.copytree(dev_bundle, model_dir, dirs_exist_ok=True)  # e.g. `make download-models` while running
    editor = runtime.editor()
    assert editor.bundle.dir == model_dir and editor.is_dev
    assert editor.render_config == RenderConfig()  # the settings' defaults are the render layer's
    assert runtime.editor() is editor  # unchanged manifest: the same Editor, models loaded once


def test_a_read_only_bundle_still_edits_new_text_pairs(dev_bundle, tmp_path, caplog):
    """Compose and k8s mount the bundle read-only: the worker caches text directions in CACHE_DIR instead, and
    a cache that cannot be written never fails an edit. Root writes anywhere, so the bundle's own cache folder
    is made impossible: a regular file stands where it would be created."""
    from common.db import upgrade
    from tests.conftest import face_jpeg
    from tests.services.rows import starting_edit, stored_image
    from worker.edit_job import run_edit

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for item in Path(dev_bundle).iterdir():
        if item.is_file():
            (bundle / item.name).symlink_to(item.resolve())
    (bundle / "cache").write_bytes(b"")  # nothing can be written inside the bundle
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(database)
    runtime = Runtime(Settings(database_url=database, storage_dir=tmp_path / "store", model_dir=bundle,
                               cache_dir=tmp_path / "cache", redis_url="redis://127.0.0.1:9/0"))  # fmt: skip
    image_id = stored_image(runtime.session_factory, runtime.storage, face_jpeg(), owner="a")
    edit_id = starting_edit(runtime.session_factory, image_id, owner="a", target="a face with a green scarf")

    assert run_edit(runtime, edit_id) == "succeeded", caplog.text[-3000:]
    assert len(list((tmp_path / "cache" / "directions").glob("*.npy"))) == 1  # cached where it can be
    assert (bundle / "cache").is_file()  # the bundle untouched


def test_the_render_settings_are_the_render_layers_choices(monkeypatch):
    """RENDER_NNPACK / RENDER_CUDA_PRECISION / RENDER_CUDA_GRAPHS reach the Editor's RenderConfig; the settings
    offer exactly the choices the render layer takes, with the same defaults."""
    fields = Settings.model_fields
    assert get_args(fields["render_nnpack"].annotation) == NNPACK_MODES
    assert get_args(fields["render_cuda_precision"].annotation) == CUDA_PRECISIONS
    defaults = RenderConfig()
    assert (fields["render_nnpack"].default, fields["render_cuda_precision"].default,
            fields["render_cuda_graphs"].default) == (defaults.nnpack, defaults.cuda_precision, defaults.cuda_graphs)
    monkeypatch.setenv("RENDER_NNPACK", "torch")
    monkeypatch.setenv("RENDER_CUDA_PRECISION", "tf32")
    monkeypatch.setenv("RENDER_CUDA_GRAPHS", "false")
    assert render_config(Settings()) == RenderConfig("torch", "tf32", False)
