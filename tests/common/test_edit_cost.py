"""common/edit_cost.py: an edit's cost grows with its faces, strengths and mode, and the limits name themselves."""

from __future__ import annotations

import pytest

from common.edit_contract import EditSpec
from common.edit_cost import (
    DEADLINE_COST_FACTOR,
    CostLimits,
    StageSeconds,
    deadline_seconds,
    edit_cost,
    faces_counted,
    priced_inversion,
    too_costly,
)  # fmt: skip
from common.settings import Settings

STAGES = StageSeconds(per_edit=1.0, per_face=2.0, per_output=0.5, per_optimize_step=2.0)
CHANGE = [{"neutral": "a face", "target": "a smiling face", "weight": 1.0}]


def _spec(**fields) -> EditSpec:
    return EditSpec.model_validate({"changes": CHANGE, "alphas": [1.0], **fields})


def test_cost_is_faces_times_strengths_and_mode():
    assert edit_cost(_spec(alphas=[1.0, 2.0]), 1, STAGES) == 1 + (2 + 2 * 0.5)
    assert edit_cost(_spec(alphas=[1.0, 2.0]), 3, STAGES) == 1 + 3 * (2 + 2 * 0.5)
    assert edit_cost(_spec(mode="optimize"), 2, STAGES) == 1 + 2 * (2 + 100 * 2.0 + 0.5)  # the default steps
    assert edit_cost(_spec(mode="optimize", steps=10), 2, STAGES) == 1 + 2 * (2 + 10 * 2.0 + 0.5)


@pytest.mark.parametrize("faces,detected,counted", [
    ("largest", None, 1), ("largest", 5, 1), ([0, 3, 4], None, 3), ("all", 5, 5), ("all", 50, 8), ("all", None, 8),
])  # fmt: skip
def test_faces_counted(faces, detected, counted):
    assert faces_counted(_spec(faces=faces), detected, max_faces=8) == counted


def test_the_ceiling_names_its_limit_and_what_to_change():
    limits = CostLimits(per_edit=100, per_owner=1000)
    spec = _spec(mode="optimize", faces="all")
    assert too_costly(99.0, 1, None, spec, limits) is None
    message = too_costly(1543.0, 8, None, spec, limits)
    assert "MAX_EDIT_COST_SECONDS" in message and "1543 s" in message and "not detected yet" in message


def test_the_deadline_follows_the_cost():
    assert deadline_seconds(0, 1800) == 1800
    assert deadline_seconds(600, 1800) == 1800 + DEADLINE_COST_FACTOR * 600


def test_settings_keep_every_admitted_deadline_within_the_visibility_timeout():
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT_SECONDS"):
        Settings(job_deadline_seconds=1800, max_edit_cost_seconds=3000, max_queued_cost_seconds_per_owner=3000,
                 visibility_timeout_seconds=7200)
    with pytest.raises(ValueError, match="MAX_EDIT_COST_SECONDS"):
        Settings(max_edit_cost_seconds=900, max_queued_cost_seconds_per_owner=600)


def test_an_sfe_edit_is_priced_with_its_own_stage_times():
    stages = StageSeconds(per_edit=1.0, per_face=2.0, per_output=0.5, per_optimize_step=2.0, per_face_sfe=6.0,
                          per_output_sfe=1.5)
    spec = _spec(alphas=[1.0, 2.0], inversion="sfe")
    assert edit_cost(spec, 2, stages) == 1 + 2 * (6 + 2 * 1.5)
    assert edit_cost(_spec(alphas=[1.0, 2.0]), 2, stages, "sfe") == edit_cost(spec, 2, stages)
    assert edit_cost(_spec(alphas=[1.0, 2.0], inversion="e4e"), 2, stages) == 1 + 2 * (2 + 2 * 0.5)
    assert edit_cost(spec, 2, STAGES) == edit_cost(_spec(alphas=[1.0, 2.0]), 2, STAGES)  # unmeasured: as e4e


@pytest.mark.parametrize("inversion,default,offered,priced", [
    ("e4e", "auto", None, "e4e"), ("sfe", "e4e", ["e4e"], "sfe"),  # its own, whatever the fleet
    (None, "auto", None, "sfe"),  # the fleet unknown: the costliest `auto` may become
    (None, "auto", ["e4e"], "e4e"), (None, "auto", ["e4e", "sfe"], "sfe"), (None, "auto", [], "sfe"),
    (None, "e4e", ["e4e", "sfe"], "e4e"), (None, "sfe", ["e4e"], "sfe"),  # the deployment's own default
])  # fmt: skip
def test_an_edit_is_priced_at_the_inversion_it_will_run(inversion, default, offered, priced):
    assert priced_inversion(_spec(inversion=inversion), default, offered) == priced


def test_the_default_settings_price_sfe_above_e4e():
    stages = StageSeconds.from_settings(Settings())
    assert stages.of("sfe")[0] > stages.of("e4e")[0] and stages.of("sfe")[1] > stages.of("e4e")[1]
