"""Shared pipeline fixtures: the development bundle (the session's one, loaded), an Editor on it, and the
golden checks, each family run once per session however many tests look at it."""

from __future__ import annotations

import pytest

from tests.pipeline.images import golden_dir


@pytest.fixture(scope="session")
def dev_bundle(dev_bundle):
    """The root conftest's development bundle directory (built once by the pipeline CLI), loaded."""
    from pipeline.weights.bundle import Bundle

    return Bundle.load(dev_bundle)


@pytest.fixture(scope="session")
def dev_editor(dev_bundle):
    from pipeline.edit.editor import Editor

    return Editor(dev_bundle)


@pytest.fixture(scope="session")
def face_bytes() -> bytes:
    """The golden fixtures' face photo, as an upload would carry it."""
    path = golden_dir() / "face_input.png"
    if not path.is_file():
        pytest.skip(f"golden fixtures not found in {golden_dir()} (set GOLDEN_DIR)")
    return path.read_bytes()


@pytest.fixture(scope="session")
def assert_golden():
    """``assert_golden(family, contains="")``: every golden check of that family on the shared fixtures (whose
    name contains ``contains``) is within tolerance, and there is at least one. Each family runs once per
    session: the full-size ones take minutes on a CPU, and several test modules look at the same results."""
    from pipeline.golden import run_checks

    directory = golden_dir()
    if not (directory / "meta.json").is_file():
        pytest.skip(f"golden fixtures not found in {directory} (set GOLDEN_DIR)")
    cache: dict[str, list] = {}

    def check(family: str, contains: str = "") -> None:
        if family not in cache:
            cache[family] = run_checks(directory, only=(family,), emit=lambda line: None)
        chosen = [c for c in cache[family] if contains in c.name]
        failed = [c.line() for c in chosen if not c.ok]
        assert chosen and not failed, "\n".join(failed)

    return check
