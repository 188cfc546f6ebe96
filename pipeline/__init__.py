"""Text-driven face editing: StyleCLIP global directions on StyleGAN2, with e4e inversion and CLIP.

The public surface (what the worker and the CLI use) is re-exported here lazily, so ``import pipeline`` does not
import torch::

    from pipeline import Bundle, Editor, Inversion, PipelineError, Canceled
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING

from pipeline.errors import Canceled, PipelineError

# OpenAI's CLIP imports pkg_resources, whose deprecation warning every worker and CLI run would print at start,
# telling operators about a package they do not use (requirements pin setuptools<81, where it still exists).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

if TYPE_CHECKING:
    from pipeline.edit.editor import Editor, Inversion
    from pipeline.edit.inversion import PendingInversion
    from pipeline.faces.detect import FaceBox
    from pipeline.weights.bundle import Bundle

__all__ = ["Bundle", "Editor", "FaceBox", "Inversion", "PendingInversion", "PipelineError", "Canceled"]

_LAZY = {"Bundle": "pipeline.weights.bundle", "Editor": "pipeline.edit.editor", "Inversion": "pipeline.edit.editor",
         "FaceBox": "pipeline.faces.detect", "PendingInversion": "pipeline.edit.inversion"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
