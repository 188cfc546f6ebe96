"""`python -m bench --only api-load`: 16 users against a real uvicorn on PostgreSQL + Redis, and its report
section (replaced in place, kept by runs that do not measure it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.load import run_load
from bench.report import API_LOAD_HEADING, NNPACK_HEADING, keep_sections, merge_api_load
from tests.conftest import FACE_PHOTO, REPO_ROOT

REPORT = "# Benchmarks\n\n## Machine\n\nmachine table\n\n## Medians\n\nmedians\n\n## Reproduce\n\n```\ncmd\n```\n"


def _load_result(per_s: float) -> dict:
    row = {"load_average_1m": 1.0, **{kind: {"per_s": per_s, "p50_ms": 10.0, "p99_ms": 20.0, "cpu_ms": 1.0, "n": 9,
                                             "statuses": {"200": 9}} for kind in ("submit", "list", "healthz")}}
    median = {kind: {"per_s": per_s, "p50_ms": 10.0, "p99_ms": 20.0, "cpu_ms": 1.0} for kind in ("submit", "list",
                                                                                                  "healthz")}
    return {"api_load": {"users": 16, "seconds_per_round": 1, "rounds": 1, "baseline": None,
                         "load_average_1m_start": 1.0, "load_average_1m_end": 1.0,
                         "trees": {"current": {"rounds": [row], "median": median}}}}


def test_the_section_is_replaced_in_place_and_kept_by_other_runs():
    first = merge_api_load(REPORT, _load_result(111), "python -m bench --only api-load")
    assert first.count(API_LOAD_HEADING) == 1 and first.index(API_LOAD_HEADING) < first.index("## Reproduce")
    assert "| `POST /v1/edits` | 111 |" in first and "**not met**" in first
    second = merge_api_load(first, _load_result(222), "python -m bench --only api-load")
    assert second.count(API_LOAD_HEADING) == 1 and "| 222 |" in second and "| 111 |" not in second
    assert "\n\n## Reproduce" in second
    assert "**met**" in second and "## Medians\n\nmedians" in second
    # a model-only run rewrites the report: the API section of the previous one stays
    kept = keep_sections(second, REPORT.replace("medians", "new medians"))
    assert "new medians" in kept and kept.count(API_LOAD_HEADING) == 1 and "| 222 |" in kept
    # so does the hand-measured NNPACK/allocator section
    with_nnpack = kept.replace("## Reproduce", NNPACK_HEADING + " (`FACEEDIT_NNPACK`)\n\nratios\n\n## Reproduce")
    rewritten = keep_sections(with_nnpack, REPORT)
    assert rewritten.count(NNPACK_HEADING) == 1 and "ratios" in rewritten
    assert rewritten.index(NNPACK_HEADING) < rewritten.index("## Reproduce")


def test_the_load_generator_only_targets_loopback():
    with pytest.raises(ValueError, match="loopback"):
        run_load("example.com", 80, [], 1)


@pytest.mark.services
@pytest.mark.skipif(not FACE_PHOTO.is_file(), reason="needs the golden face photo")
def test_api_load_runs_against_a_real_server(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(REPORT)
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "api-load", "--quick", "--json", "--out", str(out),
                           "--load-users", "4", "--load-seconds", "0.5"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    load = json.loads(proc.stdout.strip().splitlines()[-1])["api_load"]
    current = load["trees"]["current"]
    (round_,) = current["rounds"]
    assert set(round_["submit"]["statuses"]) == {"201"} and set(round_["list"]["statuses"]) == {"200"}
    for kind in ("submit", "list", "healthz"):
        assert current["median"][kind]["per_s"] > 0 and current["median"][kind]["cpu_ms"] > 0
        assert 0 < current["median"][kind]["p50_ms"] <= current["median"][kind]["p99_ms"]
    report = out.read_text()
    assert report.count(API_LOAD_HEADING) == 1 and "## Medians\n\nmedians" in report
