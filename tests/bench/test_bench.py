"""`python -m bench`: the quick suite runs end to end and reports every number the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.timing import Timing, measure, measure_interleaved, paired_ratio
from tests.conftest import FACE_PHOTO, REPO_ROOT

DEVICE_KEYS = ("align_s", "invert_s", "text_direction_cold_s", "text_direction_cached_s", "synthesis_1024_s",
               "synthesis_1024_ref_s", "synthesis_fast_over_ref", "edit_cached_1024_s", "edits_per_s_1",
               "edits_per_s_4", "edits_per_s_16", "edit_first_output_1024_s", "edit_5_alphas_1024_s",
               "first_over_all", "new_photo_first_view_s", "new_photo_first_output_1024_s",
               "new_photo_prepared_first_view_s", "new_photo_prepared_first_output_1024_s", "sfe_invert_s",
               "sfe_invert_e4e_s", "sfe_edit_s", "sfe_edit_e4e_s", "sfe_edit_over_e4e", "sfe_invert_over_e4e")


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not FACE_PHOTO.is_file(), reason="needs the golden face photo")
def test_quick_suite_reports_every_number(tmp_path, dev_bundle):
    out = tmp_path / "BENCHMARKS.md"
    proc = run_bench("--quick", "--json", "--out", str(out), "--dev-bundle", str(dev_bundle))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    for key in DEVICE_KEYS:
        assert result[key] > 0, key
        assert result["devices"]["cpu"][key] == result[key]
    runs = result["devices"]["cpu"]["runs"]
    assert runs["synthesis_1024_s"] == runs["synthesis_1024_ref_s"]  # measured in pairs
    assert result["edits_per_s_4"] == pytest.approx(4 / result["edit_cached_1024_4_s"])
    assert all(n >= 1 for n in result["devices"]["cpu"]["runs"].values())
    assert 0 < result["api_submit_p50_s"] <= result["api_submit_p99_s"]
    assert result["api_submit_n"] == 10
    stages = result["editor_dev_bundle"]
    assert {"align_seconds", "invert_seconds", "direction_seconds", "synthesize_seconds", "paste_seconds",
            "invert_cpu_seconds", "edit_cpu_seconds"} <= set(stages)
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["commit"] and machine["cpu"]

    report = out.read_text()
    assert "## Machine" in report and "fast / reference" in report and machine["torch"] in report
    # results as they come: the first of five strengths is pasted before the last is rendered
    assert result["edit_first_output_1024_s"] < result["edit_5_alphas_1024_s"] and 0 < result["first_over_all"] < 1
    assert "## The first result, before the last" in report
    # a new photo and a new text: every stage, both ways, each in the same rounds as the cached first output
    new = result["devices"]["cpu"]["new_photo"]
    assert new["detect_on_upload_s"] > 0 and new["prepared"]["stages"]["invert"] == 0  # inverted at upload
    assert new["side_by_side"]["stages"]["invert_rest"] > 0  # e4e's last heads after the preview
    for way in ("serial", "side_by_side", "prepared"):
        assert set(new[way]["stages"]) == {"align", "invert", "direction", "synthesize_256", "preview_paste",
                                           "invert_rest", "synthesize", "paste"}
        assert sum(new[way]["stages"].values()) <= new[way]["first_output_s"]
        assert 0 < new[way]["first_view_s"] < new[way]["first_output_s"]  # the preview comes first
        assert new[way]["over_cached"] > new[way]["view_over_cached"] > 0
    assert "## A new photo's first result" in report and "| **call → first full-size output** |" in report
    assert "| **call → first view (the preview)** |" in report and "| inverted at upload |" in report
    assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # StyleFeatureEditor beside e4e, in the same run: both inversions and edits, every stage, the goals
    cpu = result["devices"]["cpu"]
    assert runs["sfe_edit_s"] == runs["sfe_edit_e4e_s"] and runs["sfe_invert_s"] == runs["sfe_invert_e4e_s"]
    assert all(v >= 0 for v in cpu["sfe_inversion_stages"].values()) and cpu["sfe_edit_stages"]["feature_editor"] > 0
    assert "## StyleFeatureEditor beside e4e" in report and "≤ 2×:" in report and "not measured yet" in report
    # jobs at once (bench/cross_job.py, the GPU group's scenario, tiny on the CPU): batched and alone, each row
    assert result["devices"]["cpu"]["gpu"]["cross_job"]["batched_error"] == 0  # the CPU renders sample by sample
    cross = result["devices"]["cpu"]["gpu"]["cross_job"]["settings"]
    assert {(row["jobs"], row["batched"]) for row in cross.values()} == {(1, False), (1, True), (2, True), (2, False)}
    for row in cross.values():
        assert row["edits_per_s"] > 0 and 0 < row["first_photo_p50_s"] <= row["job_p50_s"] <= row["job_p99_s"]
        assert row["jobs_done"] == row["jobs"] and row["faces_per_render"] >= 1
    assert "Jobs at once (`bench/cross_job.py`)" in report


def test_another_machines_columns_merge_into_the_report(tmp_path):
    """The H200 run kept in docs/bench/ (``--json`` output) beside a quick CPU run: its column, its machine
    table and its GPU section (precisions, graphs, batches, the goals) come through."""
    gpu_json = REPO_ROOT / "docs" / "bench" / "h200-gpu.json"
    out = tmp_path / "BENCHMARKS.md"
    proc = run_bench("--quick", "--only", "synthesis", "--json", "--out", str(out), "--merge", str(gpu_json))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["devices"]) == {"cpu", "cuda"} and result["merged_machines"]["cuda"]["gpu"] == "NVIDIA H200"
    report = out.read_text()
    assert "| step | cpu | cuda | runs |" in report and "Column `cuda` ran on another machine" in report
    assert "## The generator on cuda" in report and "served: tf32 graphs" in report
    assert "≥ 300 edits/s batched: 128/s, **not met**" in report


def test_bad_arguments_are_usage_errors(capsys):
    from bench.__main__ import parse_args

    for argv, message in ((["--only", "nonsense"], "unknown group"), (["--alphas", "0,4"], "between 1 and 16"),
                          (["--repeats", "0"], "at least 1")):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_measure_skips_the_warmup_and_respects_the_budget():
    calls = []

    def slow():
        calls.append(time.perf_counter())
        time.sleep(0.05)

    timing = measure(slow, repeats=10, budget_s=0.12)
    assert len(calls) == timing.n + 1  # the warm-up is not among the runs
    assert 1 <= timing.n <= 3 and all(r >= 0.05 for r in timing.runs)
    assert measure(slow, repeats=3, budget_s=100).n == 3
    assert measure(slow, repeats=3, budget_s=0.0).n == 1  # always one timed run


def test_percentiles_are_nearest_rank():
    timing = Timing(tuple(float(i) for i in range(1, 101)), None)
    assert timing.percentile(50) == 50 and timing.percentile(99) == 99 and timing.median == 50.5


def test_interleaved_measurement_alternates_and_pairs_its_rounds():
    calls: list[str] = []
    timings = measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  repeats=3, budget_s=100)
    assert calls == ["a", "b"] * 4  # one untimed call of each, then three rounds
    assert timings["a"].n == timings["b"].n == 3 and timings["a"].warmup_s is not None
    # the median of per-round ratios, not the ratio of medians
    fast, ref = Timing((1.0, 2.0, 9.0), None), Timing((4.0, 4.0, 10.0), None)
    assert paired_ratio(fast, ref) == 0.5


def test_the_new_photo_group_alone_replaces_only_its_section():
    from bench.report import merge_new_photo

    stages = {"align": 0.1, "invert": 0.9, "direction": 0.6, "synthesize_256": 0.2, "preview_paste": 0.02,
              "invert_rest": 0.1, "synthesize": 0.6, "paste": 0.04}
    way = {"first_output_s": 2.5, "first_view_s": 1.2, "over_cached": 2.8, "view_over_cached": 1.3,
           "stages": stages}
    ready = {**way, "first_view_s": 0.8, "view_over_cached": 0.9, "first_output_s": 1.4, "over_cached": 1.55}
    result = {"devices": {"cpu": {"new_photo": {"rounds": 3, "cached_first_output_s": 0.9, "load_average_1m": [1.2],
                                                "detect_on_upload_s": 0.15, "serial": way, "side_by_side": way,
                                                "prepared": ready, "served": "side_by_side"}}}}
    before = "# Benchmarks\n\n## Medians\n\nkept\n\n## Reproduce\n\n```\nx\n```\n"
    once = merge_new_photo(before, result, "python -m bench --only new-photo")
    assert once.index("## Medians") < once.index("## A new photo's first result") < once.index("## Reproduce")
    assert "kept" in once and "first full-size ≤ 2.0: **not met** (2.80)" in once
    assert "first view ≤ 1.5: **met** (1.30)" in once
    assert "Inverted at upload (the phone app's path" in once and "first view 0.90, first full-size 1.55" in once
    assert "`detect` at upload: 150 ms" in once
    assert merge_new_photo(once, result, "python -m bench --only new-photo") == once


def test_the_sfe_group_alone_replaces_only_its_section():
    from bench.report import merge_sfe

    stages = {"backbone": 3.0, "generator_feature": 0.2, "generator_feature_reference": 0.5, "fuser": 2.0, "e4e": 1.0}
    cpu = {"sfe_invert_e4e_s": 1.0, "sfe_invert_s": 6.2, "sfe_invert_over_e4e": 6.2, "sfe_edit_e4e_s": 0.9,
           "sfe_edit_s": 2.1, "sfe_edit_over_e4e": 2.33, "sfe_inversion_stages": stages,
           "sfe_edit_stages": {"feature_editor": 1.0}, "runs": {}}
    result = {"machine": {"load_average_1m": 3.1, "load_average_1m_end": 3.3, "cores": 2}, "devices": {"cpu": cpu}}
    before = "# Benchmarks\n\n## Medians\n\nkept\n\n## Reproduce\n\n```\nx\n```\n"
    once = merge_sfe(before, result, "python -m bench --only sfe")
    assert once.index("## Medians") < once.index("## StyleFeatureEditor beside e4e") < once.index("## Reproduce")
    assert "kept" in once and "≤ 2×: not met" in once and "3.1 at the start, 3.3 at the end, on 2 cores" in once
    assert merge_sfe(once, result, "python -m bench --only sfe") == once
