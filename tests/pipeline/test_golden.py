"""``verify-golden`` on the shared fixtures: every check of every model family passes (full-size models)."""

from __future__ import annotations

import re

import pytest

from pipeline.cli import main
from tests.pipeline.images import golden_dir


@pytest.mark.slow
def test_verify_golden_passes_on_the_shared_fixtures(capsys):
    directory = golden_dir()
    if not (directory / "meta.json").is_file():
        pytest.skip(f"golden fixtures not found in {directory} (set GOLDEN_DIR)")
    code = main(["verify-golden", str(directory)])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = re.fullmatch(r"golden: (\d+)/(\d+) checks within tolerance", lines[-1])
    assert summary, lines[-1]
    passed, total = map(int, summary.groups())
    failed = [line for line in lines if line.startswith("FAIL")]
    assert code == 0 and passed == total and total > 0, "\n".join(failed)
