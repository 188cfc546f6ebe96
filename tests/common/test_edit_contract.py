"""The edit contract (#21): its ceilings are what the pipeline accepts, the settings cannot exceed them, and
every field it passes to a pipeline stage is an argument of that stage (so a new parameter is the contract,
the pipeline and the docs)."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from common import edit_contract as contract
from common.edit_contract import INVERT, RENDER, Change, EditLimits, EditSpec
from common.settings import Settings


def test_the_ceilings_are_the_pipelines():
    from pipeline.edit import directions, optimize
    from pipeline.edit import params as edit_params

    assert contract.MAX_CHANGES == directions.MAX_CHANGES  # MAX_CHANGES_PER_EDIT may reach it, never pass it
    assert contract.MAX_ALPHAS == directions.MAX_ALPHAS
    assert contract.ALPHA_LIMIT == directions.ALPHA_LIMIT
    assert contract.MAX_CHANGE_WEIGHT == directions.MAX_CHANGE_WEIGHT
    assert contract.MAX_TEXT_CHARS <= directions.MAX_TEXT_CHARS  # lower on purpose: CLIP's 77 tokens
    assert contract.MAX_STEPS <= optimize.MAX_STEPS and contract.MAX_STEPS == optimize.OptimizeConfig().steps
    assert contract.MODES == edit_params.MODES and contract.INVERSIONS == edit_params.INVERSIONS


def test_the_contracts_largest_edit_passes_the_pipelines_own_checks():
    from pipeline.edit.directions import Change as PipelineChange
    from pipeline.edit.params import validate_render

    text = "a" * contract.MAX_TEXT_CHARS
    changes = [PipelineChange(text, f"{i}{text[1:]}", contract.MAX_CHANGE_WEIGHT) for i in range(contract.MAX_CHANGES)]
    validate_render(changes, [contract.ALPHA_LIMIT] * contract.MAX_ALPHAS, 0.999)
    validate_render(changes[:1], [-contract.ALPHA_LIMIT], mode="optimize", steps=contract.MAX_STEPS)


def test_every_stage_field_is_an_argument_of_its_pipeline_stage():
    """The worker passes `pipeline_args(stage)` by name to the stage and, for rendering, to its check first: a
    field either does not take would fail every job. A new field passes once the pipeline takes it."""
    from pipeline import Editor
    from pipeline.edit.params import validate_render

    spec = EditSpec(changes=[Change(neutral="a face", target="a smile")], alphas=[1.0])
    for stage, takers in ((RENDER, (Editor.render, validate_render)), (INVERT, (Editor.invert,))):
        assert spec.pipeline_args(stage), stage
        for taker in takers:
            assert set(spec.pipeline_args(stage)) <= set(inspect.signature(taker).parameters), (stage, taker)
    assert {"faces", "output_format"}.isdisjoint({**spec.pipeline_args(RENDER), **spec.pipeline_args(INVERT)})


@pytest.mark.parametrize(("variable", "ceiling"), [("MAX_CHANGES_PER_EDIT", contract.MAX_CHANGES),
                                                   ("MAX_ALPHAS", contract.MAX_ALPHAS),
                                                   ("MAX_FACES_PER_EDIT", contract.MAX_FACES)])
def test_a_setting_above_the_contracts_ceiling_is_refused_at_startup(monkeypatch, variable, ceiling):
    """MAX_CHANGES_PER_EDIT=12 used to be admitted, queued, and failed in the worker (pipeline: at most 8)."""
    monkeypatch.setenv(variable, str(ceiling))
    assert getattr(Settings(), variable.lower()) == ceiling  # the ceiling itself is fine
    monkeypatch.setenv(variable, str(ceiling + 4))
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert variable.lower() in str(refused.value) and f"less than or equal to {ceiling}" in str(refused.value)


def test_settings_describe_their_ceiling():
    from common.settings_doc import render

    page = render()
    for variable, ceiling in (("MAX_CHANGES_PER_EDIT", contract.MAX_CHANGES), ("MAX_ALPHAS", contract.MAX_ALPHAS)):
        line = next(line for line in page.splitlines() if line.startswith(f"| `{variable}`"))
        assert f"at most {ceiling}" in line


def test_texts_stop_at_the_contracts_limit():
    ok = Change(neutral="a face", target="x" * contract.MAX_TEXT_CHARS)
    assert len(ok.target) == contract.MAX_TEXT_CHARS
    with pytest.raises(ValidationError, match=f"at most {contract.MAX_TEXT_CHARS} characters"):
        Change(neutral="a face", target="x" * (contract.MAX_TEXT_CHARS + 1))


@pytest.mark.parametrize("text", ["a face\u0000", "a\u0007 smile", "a face\u009b"])
def test_texts_with_control_characters_are_refused(text):
    """A NUL passed the contract and reached PostgreSQL's JSON as a 201 (the attack suite caught it)."""
    with pytest.raises(ValidationError, match="control characters"):
        Change(neutral="a face", target=text)
    assert Change(neutral="a face", target="a smiling\nface\t").target == "a smiling\nface"


def test_steps_only_for_optimize_and_one_change_for_optimize():
    change = Change(neutral="a face", target="a smile")
    assert EditSpec(changes=[change], alphas=[1.0], mode="optimize", steps=10).steps == 10
    with pytest.raises(ValidationError, match="optimize"):
        EditSpec(changes=[change], alphas=[1.0], steps=10)
    with pytest.raises(ValidationError, match="one change"):
        EditSpec(changes=[change, Change(neutral="a face", target="a frown")], alphas=[1.0], mode="optimize")


def test_a_stored_edit_reads_back_without_validation_and_with_defaults_for_new_fields():
    """A row written before a field existed (no `inversion`) or under a higher limit still reads."""
    spec = EditSpec.stored({"changes": [{"neutral": "a", "target": "b" * 500, "weight": 1}], "alphas": [1],
                            "beta": 0.1, "mode": "global", "faces": "all", "output_format": "png"})
    assert spec.inversion is None and spec.steps is None and spec.faces == "all"  # the deployment's default
    assert spec.one_change() is not None and spec.pipeline_args(RENDER)["changes"][0]["target"] == "b" * 500


def test_the_inversion_is_the_edits_own_else_the_deployments_default_resolved_on_the_bundle():
    """`auto` picks the most faithful inverter the bundle has; an explicit one stays (the pipeline then says
    whether the bundle has its model); e4e is the plain cache key, SFE's key names its own model's version."""
    assert contract.resolve_inversion(None, "auto", ("e4e", "sfe")) == "sfe"
    assert contract.resolve_inversion(None, "auto", ("e4e",)) == "e4e"
    assert contract.resolve_inversion(None, "e4e", ("e4e", "sfe")) == "e4e"
    assert contract.resolve_inversion("sfe", "e4e", ("e4e",)) == "sfe"
    assert contract.resolve_inversion("e4e", "auto", ("e4e", "sfe")) == "e4e"
    assert set(contract.INVERSION_ROLES) == set(contract.INVERSIONS)
    change = Change(neutral="a face", target="a smile")
    versions = {"encoder": "e" * 12, "sfe": "5" * 12}
    e4e, sfe = (EditSpec(changes=[change], alphas=[1.0], inversion=name) for name in contract.INVERSIONS)
    assert (e4e.variant(INVERT), e4e.inverter_version(versions)) == ("", "")
    assert (sfe.variant(INVERT), sfe.inverter_version(versions)) == ("inversion=sfe", "5" * 12)
    with pytest.raises(ValidationError):
        EditSpec(changes=[change], alphas=[1.0], inversion="auto")  # a deployment's setting, not an edit's


def test_limits_published_to_the_app():
    public = EditLimits(max_alphas=5, max_changes=2, max_faces=3).public()
    assert public["max_changes"] == 2 and public["max_text_chars"] == contract.MAX_TEXT_CHARS
    assert public["weight"] == [-contract.MAX_CHANGE_WEIGHT, contract.MAX_CHANGE_WEIGHT]
    assert public["modes"] == list(contract.MODES) and "jpeg" in public["output_formats"]
