"""What an edit may ask for, checked before any model loads (the API and the CLI validate here before the costly
inversion; ``Editor`` checks again): texts, strengths, beta, mode and steps, the faces, the render order."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.edit.directions import Change
from pipeline.edit.inversion import INVERSIONS, Inversion, PendingInversion  # noqa: F401 (INVERSIONS: re-exported for editor)
from pipeline.errors import INVALID_PARAMETER, PipelineError

MODES = ("global", "optimize")


def validate_edit(neutral: str, target: str, alphas: Sequence[float] | float, beta: float = 0.15,
                  mode: str = "global", steps: int | None = None) -> list[float]:
    """Check an edit's parameters without touching a model (callers validate before the costly inversion);
    returns the alphas as floats. Raises ``PipelineError("invalid_parameter")`` naming the problem."""
    from pipeline.edit.directions import MAX_TEXT_CHARS, check_alphas, check_beta
    from pipeline.edit.optimize import OptimizeConfig

    if mode not in MODES:
        raise PipelineError(INVALID_PARAMETER, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name, text in (("neutral", neutral), ("target", target)):
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(INVALID_PARAMETER, f"{name} text must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise PipelineError(INVALID_PARAMETER, f"{name} text is longer than {MAX_TEXT_CHARS} characters")
    if isinstance(alphas, (int, float)):
        alphas = [alphas]
    if any(isinstance(a, bool) for a in alphas):
        raise PipelineError(INVALID_PARAMETER, f"alphas must be numbers, got {alphas!r}")
    try:
        values = [float(a) for a in alphas]
    except (TypeError, ValueError) as exc:
        raise PipelineError(INVALID_PARAMETER, f"alphas must be numbers, got {alphas!r}") from exc
    check_alphas(values)
    if mode == "global":
        check_beta(beta)
    elif steps is not None:
        OptimizeConfig(steps=steps)
    return values


def validate_render(changes: Sequence[Change], alphas: Sequence[float] | float, beta: float = 0.15,
                    mode: str = "global", steps: int | None = None) -> tuple[list[float], list[Change]]:
    """``validate_edit`` for several changes: the alphas as floats and the changes as a list. Optimize mode
    takes one change (it optimizes towards one target text)."""
    from pipeline.edit.directions import check_changes

    changes = check_changes(changes)
    if mode == "optimize" and len(changes) != 1:
        raise PipelineError(INVALID_PARAMETER, f"mode optimize takes one change, got {len(changes)}")
    alphas = validate_edit(changes[0].neutral, changes[0].target, alphas, beta, mode, steps)
    return alphas, changes


def check_inversions(inversions: Sequence[Inversion]) -> list[Inversion]:
    inversions = list(inversions)
    if not inversions:
        raise PipelineError(INVALID_PARAMETER, "at least one inversion (face) is needed")
    for inv in inversions:
        if not isinstance(inv, Inversion | PendingInversion):
            raise PipelineError(INVALID_PARAMETER, f"expected an Inversion, got {type(inv).__name__}")
    indices = [inv.face_index for inv in inversions]
    if len(set(indices)) != len(indices):
        raise PipelineError(INVALID_PARAMETER, f"each face may be edited once, got faces {indices}")
    return inversions


def check_order(order: Sequence[int], n: int) -> list[int]:
    order = list(order)
    if sorted(order) != list(range(n)) or any(isinstance(i, bool) for i in order):
        raise PipelineError(INVALID_PARAMETER, f"order must list each of the {n} alpha positions once, got {order}")
    return order
