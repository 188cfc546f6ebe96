"""The worker's Editor holder: an explicit MODEL_DIR without a bundle fails typed, and is retried per job."""

from __future__ import annotations

import shutil

import pytest

from common.settings import Settings
from pipeline import PipelineError
from worker.runtime import Runtime


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
    assert runtime.editor() is editor  # unchanged manifest: the same Editor, models loaded once
