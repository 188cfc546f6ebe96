"""``verify-golden``, the command: its report and exit status. The numbers themselves are asserted per model
family by the ``assert_golden`` tests (test_stylegan2, test_e4e, test_directions, test_align), which share one
run of each family per session."""

from __future__ import annotations

import re
import shutil

import numpy as np

from pipeline.cli import main


def run(capsys, *args) -> tuple[int, list[str]]:
    code = main(["verify-golden", *map(str, args)])
    return code, capsys.readouterr().out.strip().splitlines()


def test_reports_each_check_and_a_summary(capsys, assert_golden):
    from tests.pipeline.images import golden_dir

    code, lines = run(capsys, golden_dir(), "--only", "align")
    summary = re.fullmatch(r"golden: (\d+)/(\d+) checks within tolerance", lines[-1])
    assert summary, lines[-1]
    passed, total = map(int, summary.groups())
    assert code == 0 and passed == total > 0
    assert sum(line.startswith("ok ") for line in lines) == total


def test_a_wrong_reference_fails_with_a_non_zero_status(capsys, tmp_path, assert_golden):
    """The same fixture with one reference array perturbed: that check fails and the command says so."""
    from tests.pipeline.images import golden_dir

    fixture = tmp_path / "golden"
    shutil.copytree(golden_dir(), fixture)
    with np.load(fixture / "face_align.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["quad"] = arrays["quad"] + 0.5
    np.savez(fixture / "face_align.npz", **arrays)
    code, lines = run(capsys, fixture, "--only", "align")
    assert code != 0
    assert any(line.startswith("FAIL") and "quad" in line for line in lines), lines
    passed, total = map(int, re.fullmatch(r"golden: (\d+)/(\d+) checks within tolerance", lines[-1]).groups())
    assert passed < total
