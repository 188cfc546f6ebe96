"""Settings: documented, validated, and docs/SETTINGS.md in sync with the class."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.settings import Settings
from common.settings_doc import DOC_PATH, render


def test_every_setting_has_a_description():
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_settings_doc_is_in_sync():
    assert DOC_PATH.read_text() == render(), "run `python -m common.settings_doc` and commit docs/SETTINGS.md"


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("MAX_ALPHAS", "3")
    monkeypatch.setenv("STORAGE_BACKEND", "s3")
    settings = Settings()
    assert settings.max_alphas == 3 and settings.storage_backend == "s3"


def test_visibility_timeout_must_exceed_the_job_deadline():
    # Otherwise Redis hands a still-running job to a second worker.
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT_SECONDS"):
        Settings(job_deadline_seconds=3600, visibility_timeout_seconds=600)
    with pytest.raises(ValidationError, match="HEARTBEAT_SECONDS"):
        Settings(lease_seconds=5, heartbeat_seconds=5)
