"""``doctor``: does a model bundle hold the real models, and are they wired right? (``python -m pipeline doctor``)

``diagnose(directory)`` runs the checks of ``pipeline.weights.doctor.checks`` and returns a ``Report``; the thresholds
and the pure decisions behind PASS and FAIL live in ``pipeline.weights.doctor.verdicts`` with their sources.
"""

from pipeline.weights.doctor.checks import SAMPLE_PHOTO, Report, diagnose
from pipeline.weights.doctor.verdicts import Check, Status

__all__ = ["SAMPLE_PHOTO", "Check", "Report", "Status", "diagnose"]
