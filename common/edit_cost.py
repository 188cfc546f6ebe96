"""What an edit costs: the edit worker's seconds it is expected to take, from the edit's own parameters and
the deployment's measured stage times. One number serves admission, the deadline and the client's estimate:

- at submit, an edit costing more than `CostLimits.per_edit` is refused (422 `edit_cost_too_high`), and one
  that would take its account's unfinished work past `CostLimits.per_owner` waits (429 `cost_budget_exceeded`
  with `Retry-After`): the caps on unfinished edits count edits, this counts work;
- the job's deadline is its submission + JOB_DEADLINE_SECONDS + `DEADLINE_COST_FACTOR` × its cost, so a
  large admitted edit is not cut by a deadline sized for a small one;
- a client sees its edit's cost and the cost of the queue ahead of it (`Estimate`), from the same rows that
  give its queue position.

    cost = per_edit + faces × (per_face + steps × per_optimize_step + strengths × per_output)

where `steps` is 0 in global mode, and `per_face` and `per_output` are the inverter's: StyleFeatureEditor
(`inversion` sfe) aligns at 1024², runs its own inverter beside e4e's and renders every strength through its
Feature Editor, so it has its own measured stage times (`StageSeconds.per_face_sfe`, `per_output_sfe`;
docs/BENCHMARKS.md). An edit naming no inversion is priced at the one it will run (`priced_inversion`).
Framework-free: the API, the queue caps and the tests import it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.edit_contract import INVERSIONS, MAX_STEPS, EditSpec, resolve_inversion

if TYPE_CHECKING:
    from common.settings import Settings

# An estimate may be off by this factor before the deadline cuts the job (a busy machine, a slower photo).
DEADLINE_COST_FACTOR = 2.0


@dataclass(frozen=True)
class StageSeconds:
    """Edit-worker seconds per unit of work, measured on the deployment's device (docs/BENCHMARKS.md; the
    defaults are a CPU's)."""

    per_edit: float  # fetching the photo, storing results, bookkeeping
    per_face: float  # aligning and inverting one face (e4e)
    per_output: float  # synthesizing and pasting one strength of one face (from e4e's codes)
    per_optimize_step: float  # one latent-optimization step of one face (optimize mode)
    per_face_sfe: float | None = None  # aligning and inverting one face with SFE (None: as e4e)
    per_output_sfe: float | None = None  # one strength of one face through SFE's Feature Editor (None: as e4e)

    @classmethod
    def from_settings(cls, settings: Settings) -> StageSeconds:
        return cls(per_edit=settings.edit_cost_seconds_per_edit, per_face=settings.edit_cost_seconds_per_face,
                   per_output=settings.edit_cost_seconds_per_output,
                   per_optimize_step=settings.edit_cost_seconds_per_optimize_step,
                   per_face_sfe=settings.edit_cost_seconds_per_face_sfe,
                   per_output_sfe=settings.edit_cost_seconds_per_output_sfe)

    def of(self, inversion: str) -> tuple[float, float]:
        """(per_face, per_output) of an edit inverted by `inversion`."""
        if inversion == "sfe":
            return (self.per_face if self.per_face_sfe is None else self.per_face_sfe,
                    self.per_output if self.per_output_sfe is None else self.per_output_sfe)
        return self.per_face, self.per_output


@dataclass(frozen=True)
class CostLimits:
    """The most one edit may cost, and the most an account's unfinished edits may cost together (seconds)."""

    per_edit: float
    per_owner: float

    @classmethod
    def from_settings(cls, settings: Settings) -> CostLimits:
        return cls(per_edit=settings.max_edit_cost_seconds, per_owner=settings.max_queued_cost_seconds_per_owner)


def faces_counted(spec: EditSpec, detected: int | None, max_faces: int) -> int:
    """How many faces the edit is charged for: the indices it names, 1 for `largest`, the photo's faces for
    `all` (`detected`), or `max_faces` while detection has not finished (the most `all` may change)."""
    if isinstance(spec.faces, list):
        return len(spec.faces)
    if spec.faces == "largest":
        return 1
    return min(detected, max_faces) if detected is not None else max_faces


def priced_inversion(spec: EditSpec, default: str, offered: Collection[str] | None) -> str:
    """The inversion an edit is priced at: its own; else the deployment's `default`, `auto` resolved on the
    inversions the live workers offer (`offered`, `common.worker_offers`); while they are unknown (None), the
    costliest one `auto` may become (never under-charge)."""
    return resolve_inversion(spec.inversion, default, offered or INVERSIONS)


def edit_cost(spec: EditSpec, faces: int, stages: StageSeconds, inversion: str | None = None) -> float:
    """Expected edit-worker seconds of `spec` changing `faces` faces, inverted by `inversion` (default: the
    spec's own, else e4e; `priced_inversion` says which one an edit naming none will run)."""
    steps = (spec.steps or MAX_STEPS) if spec.mode == "optimize" else 0
    face_seconds, output_seconds = stages.of(inversion or spec.inversion or INVERSIONS[0])
    per_face = face_seconds + steps * stages.per_optimize_step + len(spec.alphas) * output_seconds
    return round(stages.per_edit + faces * per_face, 3)


def deadline_seconds(cost: float, base_seconds: float) -> float:
    """Seconds from submission to the job's deadline: the base allowance (the queue, retries) plus room for
    the work itself."""
    return base_seconds + DEADLINE_COST_FACTOR * cost


def too_costly(cost: float, faces: int, detected: int | None, spec: EditSpec, limits: CostLimits) -> str | None:
    """Why an edit of `cost` may never run here (the per-edit ceiling), or None."""
    if cost <= limits.per_edit:
        return None
    counted = (" (the photo's faces are not detected yet, so `all` counts as the most an edit may change: "
               "wait for detection, `Prefer: wait` on the upload, or name the faces)"
               if spec.faces == "all" and detected is None else "")
    return (f"this edit would take about {math.ceil(cost)} s of edit-worker time ({faces} face(s) x "
            f"{len(spec.alphas)} strength(s), {spec.mode} mode){counted}; at most {limits.per_edit:g} s "
            "(MAX_EDIT_COST_SECONDS): ask for fewer faces, strengths or steps")


@dataclass(frozen=True)
class Estimate:
    """What a client sees of a queued edit: its own cost and the work queued ahead of it (seconds of one edit
    worker), beside its queue position, all read from the same rows."""

    position: int
    ahead_seconds: float
