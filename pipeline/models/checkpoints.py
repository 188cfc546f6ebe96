"""Reading checkpoints and loading them into modules, for every model of the pipeline: ``read_checkpoint``
(``torch.load`` that runs no pickle code) and ``load_state`` (an explicit key and shape check, never a silent
``strict=False``). Each model's loader maps its reference's key names and calls these."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import MODEL_INVALID, MODEL_MISSING, PipelineError


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` after an explicit key and shape check; a mismatch is ``model_invalid``
    naming ``source`` and the first offending keys (never a silent ``strict=False``)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
                 for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{what}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("wrong shapes", misshaped)) if keys]
    if problems:
        raise PipelineError(MODEL_INVALID, f"{source}: does not match the model: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


def read_checkpoint(path: str | Path, safe_globals: list | None = None) -> dict:
    """``torch.load`` with ``weights_only=True`` (no arbitrary code from a pickle); unreadable → ``model_invalid``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(MODEL_MISSING, f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(safe_globals or []):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        raise PipelineError(MODEL_INVALID, f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict):
        raise PipelineError(MODEL_INVALID, f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt
