"""The edit contract: what one edit may ask for, every limit in one place, and the normalized edit.

An edit is `EditSpec`: its `changes` (neutral → target texts, each weighted), the faces, the strengths
(alphas), beta, mode, steps, the inverter and the output format. Everything else derives from it:

- the request body (`api.schemas.EditCreate` adds the one-change form `neutral`/`target` at the edge and
  normalizes it here), the OpenAPI text (these fields' descriptions), the edit resource's `input`;
- the settings' allowed ranges (`MAX_CHANGES_PER_EDIT` ≤ `MAX_CHANGES`, ...): a setting can never admit what
  the pipeline refuses, and `tests/common/test_edit_contract.py` pins these ceilings to `pipeline`'s;
- the stored row (`common.models.Edit`: the fields with a column of their own, the rest in `options`), the
  worker's call into the pipeline (`pipeline_args`: each field marked `RENDER` or `INVERT` is passed by name),
  and `/app-config.json`'s `limits`, from which the web app reads its limits.

So a new edit parameter is a field here (with its limit and its stage), the pipeline's argument of the same
name, and its line in the docs. Pydantic only, no FastAPI, SQLAlchemy or torch: the API, the worker and the
tests import it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.image_formats import OUTPUT_FORMATS

# --- ceilings: what the pipeline accepts (pinned to pipeline.edit.directions / optimize by a test) -------------
# A neutral or target text; below the pipeline's 300 characters because CLIP reads 77 tokens, 9 of them the longest
# prompt template's: 200 characters of English fit (a text that still does not fit fails `invalid_parameter`).
MAX_TEXT_CHARS = 200
MAX_CHANGES = 8  # changes combined in one edit
MAX_CHANGE_WEIGHT = 2.0  # |weight| of one change
MAX_ALPHAS = 16  # strengths (output images) of one edit
ALPHA_LIMIT = 10.0  # |alpha|
BETA_DEFAULT = 0.15  # StyleCLIP's disentanglement threshold; beta is in the open interval (0, 1)
MODES = ("global", "optimize")
INVERSIONS = ("e4e", "sfe")  # the inverters the pipeline offers, the most faithful last
INVERSION_ROLES = {"e4e": "encoder", "sfe": "sfe"}  # the bundle's model each inverter needs (besides e4e's)
AUTO = "auto"  # a deployment's default inversion: the most faithful one its bundle has
DEFAULT_INVERSIONS = (AUTO, *INVERSIONS)  # the values of the setting DEFAULT_INVERSION
# --- ceilings of the service (the pipeline has none of its own here) ---------------------------------------
MAX_FACES = 32  # faces one edit changes (each costs an alignment, an inversion and a paste per strength)
MAX_FACE_INDEX = 999
MAX_STEPS = 100  # optimize steps: the pipeline's default is the most a client may ask (fewer: faster, coarser)

# The pipeline stage a field is passed to, by its own name (`EditSpec.pipeline_args`); fields without one
# (faces, output_format) are the worker's business.
RENDER, INVERT = "render", "invert"

Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
Alpha = Annotated[float, Field(ge=-ALPHA_LIMIT, le=ALPHA_LIMIT, allow_inf_nan=False)]
FaceIndex = Annotated[int, Field(ge=0, le=MAX_FACE_INDEX)]
FaceChoice = Literal["largest", "all"] | Annotated[list[FaceIndex], Field(min_length=1, max_length=MAX_FACES)]
Mode = Literal[MODES]  # type: ignore[valid-type]
Inversion = Literal[INVERSIONS]  # type: ignore[valid-type]
OutputFormat = Literal[OUTPUT_FORMATS]  # type: ignore[valid-type]


def strip_text(value: str | None) -> str | None:
    """A text without its surrounding blanks; a blank one is refused (it names no change), and so is one with a
    control character other than a tab or line break (a NUL cannot be stored in PostgreSQL's text, and none of
    them is something a person typed)."""
    if value is None:
        return None
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in value):
        raise ValueError("must not contain control characters")
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


class Change(BaseModel):
    """One text change of an edit; the edit moves along the weighted sum of its changes' directions."""

    # strict: "0.1" or true for a number is a client bug to report, not to coerce silently.
    model_config = ConfigDict(extra="forbid", strict=True)

    neutral: Text = Field(description="text describing the photo as it is, e.g. `a face` "
                                      f"(at most {MAX_TEXT_CHARS} characters)")
    target: Text = Field(description="text describing the wanted change, e.g. `a smiling face` "
                                     f"(at most {MAX_TEXT_CHARS} characters)")
    weight: float = Field(1.0, ge=-MAX_CHANGE_WEIGHT, le=MAX_CHANGE_WEIGHT, allow_inf_nan=False,
                          description=f"in [-{MAX_CHANGE_WEIGHT:g}, {MAX_CHANGE_WEIGHT:g}], not 0")

    _texts = field_validator("neutral", "target")(strip_text)

    @field_validator("weight")
    @classmethod
    def _not_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("must not be 0 (leave the change out instead)")
        return value


class EditSpec(BaseModel):
    """One normalized edit: the parameters a job runs with, whichever form the request used."""

    model_config = ConfigDict(extra="forbid", strict=True)

    changes: Annotated[list[Change], RENDER] = Field(
        min_length=1, max_length=MAX_CHANGES,
        description="several changes combined, `[{\"neutral\", \"target\", \"weight\"}]`, 1..MAX_CHANGES_PER_EDIT "
        f"(a setting, at most {MAX_CHANGES}); texts 1..{MAX_TEXT_CHARS} characters, not blank; `weight` in "
        f"[-{MAX_CHANGE_WEIGHT:g}, {MAX_CHANGE_WEIGHT:g}], not 0, default 1; each (neutral, target) pair once. The "
        "edit moves along the weighted sum of their directions and `alphas` scale that sum; one change of weight 1 "
        "is exactly the `neutral`/`target` form. `optimize` mode takes one change")
    faces: FaceChoice = Field(
        "largest", description="which faces to change: `\"largest\"` (default), `\"all\"`, or a list of indices of "
        "the image's `faces` (unique, at most MAX_FACES_PER_EDIT, a setting, at most "
        f"{MAX_FACES}). An index the photo does not have is 422 `invalid_parameter` naming the valid range when "
        "the faces are known at submit time, else the edit fails with that code; `\"all\"` on more faces than the "
        "limit is `invalid_parameter` too (list the indices). A photo without a face fails `no_face`")
    alphas: Annotated[list[Alpha], RENDER] = Field(
        min_length=1, max_length=MAX_ALPHAS,
        description=f"strengths, 1..MAX_ALPHAS (a setting, at most {MAX_ALPHAS}) numbers in "
        f"[-{ALPHA_LIMIT:g}, {ALPHA_LIMIT:g}]; one output image per alpha")
    beta: Annotated[float, RENDER] = Field(
        BETA_DEFAULT, gt=0, lt=1, allow_inf_nan=False,
        description=f"disentanglement threshold in (0, 1), default {BETA_DEFAULT} (0.1–0.2 is typical; ignored "
        "by `optimize`)")
    mode: Annotated[Mode, RENDER] = Field(
        MODES[0], description="`global` (default: StyleCLIP global directions, seconds) or `optimize` (latent "
        "optimization towards the one change's target, minutes per face)")
    steps: Annotated[int | None, RENDER] = Field(
        None, ge=1, le=MAX_STEPS,
        description=f"`optimize` mode only: optimization steps, 1..{MAX_STEPS} (default {MAX_STEPS}; fewer is "
        "faster and coarser)")
    inversion: Annotated[Inversion | None, INVERT] = Field(
        None, description="the inverter that finds the photo's latent codes: `e4e` (fast; the face drifts a "
        "little from the person's) or `sfe` (StyleFeatureEditor: keeps the likeness, slower). Default: the "
        "deployment's DEFAULT_INVERSION (a setting; `auto`, the most faithful one the models have). The edit "
        "resource's `input.inversion` says which one made the edit once it ran. One that not every live edit "
        "worker offers (`/app-config.json`'s `worker_inversions`) is refused at submit, 422 "
        "`inversion_unavailable`; while no worker has said (starting), `sfe` on workers without its model fails "
        "`model_missing` before any inversion")
    output_format: OutputFormat = Field(
        "jpeg", description=f"{', '.join(f'`{name}`' for name in OUTPUT_FORMATS)} (default `jpeg`); outputs "
        "carry no metadata")

    @field_validator("faces")
    @classmethod
    def _unique_faces(cls, value: FaceChoice) -> FaceChoice:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("face indices must be unique")
        return value

    @field_validator("changes")
    @classmethod
    def _unique_changes(cls, value: list[Change] | None) -> list[Change] | None:
        if value is not None and len({(c.neutral, c.target) for c in value}) != len(value):
            raise ValueError("each (neutral, target) pair once: combine their weights instead")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EditSpec:
        self.check_consistent()
        return self

    def check_consistent(self) -> None:
        """The rules between fields (ValueError): optimize takes one change, steps are for optimize."""
        if self.mode == "optimize" and len(self.changes) > 1:
            raise ValueError("`optimize` mode takes one change (it optimizes towards one target text)")
        if self.steps is not None and self.mode != "optimize":
            raise ValueError("`steps` is for `optimize` mode only")

    def pipeline_args(self, stage: str) -> dict[str, Any]:
        """The fields passed to the pipeline's `stage` (`RENDER`: `Editor.render`, `INVERT`: `Editor.invert`),
        by name; `changes` as dicts (the worker makes the pipeline's `Change`s)."""
        names = {name for name, field in type(self).model_fields.items() if stage in field.metadata}
        return self.model_dump(include=names)

    def variant(self, stage: str) -> str:
        """The `stage` fields that differ from their defaults, as a short tag (`inversion=sfe`), empty for the
        defaults (e4e for the inversion, resolved before: `resolve_inversion`): a cached inversion made with
        other invert options is another object (`storage_layout`)."""
        defaults = {name: field.default for name, field in type(self).model_fields.items()}
        defaults["inversion"] = INVERSIONS[0]
        return ",".join(f"{name}={value}" for name, value in self.pipeline_args(stage).items()
                        if value != defaults[name])

    def inverter_version(self, versions: dict[str, str]) -> str:
        """The version (of `versions`, the bundle's) of the inverter's own model when it has one besides e4e's
        encoder, else "": part of the inversion cache key (`storage_layout.inversion_key`)."""
        role = INVERSION_ROLES[self.inversion or INVERSIONS[0]]
        return versions[role] if role != INVERSION_ROLES[INVERSIONS[0]] else ""

    @classmethod
    def stored(cls, values: dict[str, Any]) -> EditSpec:
        """An edit as stored (a row's values), without validating it again: a limit lowered since it was
        stored must not make it unreadable. A field it lacks (added since) takes its default."""
        changes = [Change.model_construct(**change) for change in values["changes"]]
        present = {name: value for name, value in values.items() if name in cls.model_fields and value is not None}
        return cls.model_construct(**{**present, "changes": changes})

    def one_change(self) -> Change | None:
        """The change of an edit that the one-change form says (one change of weight 1), else None."""
        if len(self.changes) == 1 and self.changes[0].weight == 1:
            return self.changes[0]
        return None


def resolve_inversion(requested: str | None, default: str, available: Collection[str]) -> str:
    """The inverter an edit runs with: the one it asked for, else the deployment's `default` (`auto`: the most
    faithful of `available`, the inverters whose models the bundle has). Whether the bundle has the one chosen
    is the pipeline's check (`Editor.check_inversion`), which says how to add a missing model."""
    choice = requested or default
    if choice == AUTO:
        return max(available, key=INVERSIONS.index)
    return choice


@dataclass(frozen=True)
class EditLimits:
    """The limits a deployment applies (settings `MAX_ALPHAS`, `MAX_CHANGES_PER_EDIT`, `MAX_FACES_PER_EDIT`),
    each at most the contract's ceiling (the settings' own ranges say so), and its default inversion (setting
    `DEFAULT_INVERSION`: what an edit naming none runs, so the app can show the choice as it stands)."""

    max_alphas: int = MAX_ALPHAS
    max_changes: int = MAX_CHANGES
    max_faces: int = MAX_FACES
    default_inversion: str = AUTO

    def problem(self, spec: EditSpec) -> str | None:
        """What in `spec` exceeds these limits, or None."""
        if len(spec.alphas) > self.max_alphas:
            return f"at most {self.max_alphas} alphas per edit"
        if len(spec.changes) > self.max_changes:
            return f"at most {self.max_changes} changes per edit"
        if isinstance(spec.faces, list) and len(spec.faces) > self.max_faces:
            return f"at most {self.max_faces} faces per edit"
        return None

    def public(self) -> dict[str, Any]:
        """What a client needs to build a valid edit (`/app-config.json`'s `limits`)."""
        return {
            **asdict(self),
            "max_text_chars": MAX_TEXT_CHARS,
            "weight": [-MAX_CHANGE_WEIGHT, MAX_CHANGE_WEIGHT],
            "alpha": [-ALPHA_LIMIT, ALPHA_LIMIT],
            "beta_default": BETA_DEFAULT,
            "max_steps": MAX_STEPS,
            "modes": list(MODES),
            "inversions": list(INVERSIONS),
            "output_formats": list(OUTPUT_FORMATS),
        }
