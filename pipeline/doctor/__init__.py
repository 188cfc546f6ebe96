"""``doctor``: does a model bundle hold the real models, and are they wired right? (``python -m pipeline doctor``)

``diagnose(directory)`` runs the checks of ``pipeline.doctor.checks`` and returns a ``Report``; the thresholds
and the pure decisions behind PASS and FAIL live in ``pipeline.doctor.verdicts`` with their sources.
"""

from pipeline.doctor.checks import SAMPLE_PHOTO, Report, diagnose
from pipeline.doctor.verdicts import Check, Status

__all__ = ["SAMPLE_PHOTO", "Check", "Report", "Status", "diagnose"]
