"""The three images, checked without building them: sources exist, users, entrypoints, no torch in the API.

The strongest check rebuilds the API image's file layout (only what its COPY lines copy) in a
temporary folder and imports its entrypoints there with torch and the pipeline made unimportable.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.specs import (
    DOCKER_DIR,
    REPO,
    build_layout,
    copies,
    dockerfile_env,
    exec_form,
    module_file,
    parse_dockerfile,
    python_modules_run_by,
    workdir,
)

DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str) -> bool:
    for pattern in _dockerignore():
        pattern = pattern.rstrip("/").removeprefix("**/")
        parts = Path(relative).parts
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            return True
        if any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def test_expected_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"api.Dockerfile", "worker-cuda.Dockerfile", "worker-cpu.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_not_ignored(dockerfile: Path) -> None:
    for source, _ in copies(dockerfile):
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: no such file in the context"
        assert not _ignored(source.rstrip("/")), f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
        for sub in (REPO / source).rglob("*") if (REPO / source).is_dir() else []:
            assert not sub.name.endswith((".pt", ".pth", ".safetensors", ".npz")), f"weights baked in: {sub}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_with_an_existing_entrypoint(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    assert instructions[0].keyword == "FROM"
    users = [i.arguments for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name}: runs as root"
    last_user = max(n for n, i in enumerate(instructions) if i.keyword == "USER")
    assert all(i.keyword != "RUN" for i in instructions[last_user:]), "RUN after USER would need root"
    cmd = exec_form([i for i in instructions if i.keyword == "CMD"][-1].arguments)
    modules = python_modules_run_by(cmd)
    assert modules, f"{dockerfile.name}: CMD runs none of our modules: {cmd}"
    for module in modules:
        assert module_file(module), f"{dockerfile.name}: CMD module {module} does not exist"


def test_model_bundle_is_mounted_not_baked() -> None:
    assert _ignored("models") and _ignored("models/stylegan2.pt") and _ignored(".venv")
    for dockerfile in DOCKERFILES:
        assert not any(source.startswith("models") for source, _ in copies(dockerfile))
    for name in ("worker-cuda.Dockerfile", "worker-cpu.Dockerfile"):
        text = (DOCKER_DIR / name).read_text()
        assert "MODEL_DIR=/models" in text and 'VOLUME ["/models"]' in text


def test_api_image_has_no_torch() -> None:
    text = (DOCKER_DIR / "api.Dockerfile").read_text()
    assert "pipeline.txt" not in text and "torch" not in text.replace("No torch", "")
    assert "torch" not in (REPO / "requirements/service.txt").read_text()
    assert "torch" not in (REPO / "requirements/lock-service.txt").read_text()
    assert not any(source.startswith("pipeline") for source, _ in copies(DOCKER_DIR / "api.Dockerfile"))


def test_api_image_layout_imports_without_torch(tmp_path: Path) -> None:
    """Copy exactly what api.Dockerfile copies; its entrypoints (API, io worker, beat, flower) import."""
    build_layout(DOCKER_DIR / "api.Dockerfile", tmp_path)
    probe = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'pipeline', 'mediapipe', 'cv2'):\n"
        "    sys.modules[name] = None  # absent from the image: importing it raises\n"
        "import api.main, worker.app, worker.tasks, worker.liveness, common.metrics, common.logging\n"
        "app = worker.app.app\n"
        "app.loader.import_default_modules()\n"
        "assert 'worker.tasks.process_edit' in app.tasks, sorted(app.tasks)\n"
        "print('imported from', api.main.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(tmp_path) in result.stdout, "imported the repository's copy, not the image layout"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_code_is_importable_from_every_process(dockerfile: Path) -> None:
    """The project is not pip-installed: its folder must be on the path of every process, not only of those
    that start in it (`celery` adds the working folder only while it loads the app; test_commands_run)."""
    assert dockerfile_env(dockerfile).get("PYTHONPATH") == workdir(dockerfile)
