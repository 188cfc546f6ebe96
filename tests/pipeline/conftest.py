"""Shared pipeline fixtures: the development bundle (built once per test session) and an Editor on it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dev_bundle(tmp_path_factory):
    """A fresh development bundle (random weights, official formats), ~10 CPU-seconds to build."""
    from pipeline.bundle import make_dev_bundle

    return make_dev_bundle(tmp_path_factory.mktemp("dev_bundle"))


@pytest.fixture(scope="session")
def dev_editor(dev_bundle):
    from pipeline.editor import Editor

    return Editor(dev_bundle)
