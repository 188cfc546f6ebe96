"""``python -m pipeline doctor``: the decisions on stubbed scores, and the real checks end to end on the
development bundle and on a broken copy of it."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.doctor import SAMPLE_PHOTO, Status, diagnose
from pipeline.doctor import verdicts as v
from pipeline.weights.bundle import text_instead_of_model
from tests.pipeline.images import REPO_ROOT

FILE_CHECKS = ("manifest", "bundle")
MODEL_CHECKS = ("load:generator", "load:encoder", "load:clip", "load:relevance", "load:identity", "load:sfe",
                "wiring:encoder", "wiring:relevance", "wiring:sfe", "render")
SEMANTIC = ("clip-face", "reconstruction", "smile-edit", "reconstruction-sfe")


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def run_json(capsys, *argv) -> tuple[int, dict]:
    code = main(["doctor", *map(str, argv), "--json"])
    return code, json.loads(capsys.readouterr().out)


# --- the decisions, on stubbed scores ----------------------------------------------------------------------------

@pytest.mark.parametrize("head, expected", [
    (b"<!DOCTYPE html><html><head><title>Sign in</title>", "an HTML page"),
    (b"\n\n  <html lang='en'>captive portal", "an HTML page"),
    (b"\xef\xbb\xbf<?xml version='1.0'?><Error><Code>AccessDenied</Code>", "an XML document"),
    (b'{"error": "Repository not found"}', "a text file"),
    ("Zugriff verweigert: Anmeldung nö".encode()[:-1], "a text file"),  # a character cut by the sample's end
    (b"", "an empty file"),
    (b"PK\x03\x04\x00\x00\x08\x08\x00\x00archive/data.pkl", None),   # torch.save zip, npz
    (b"\x80\x02}q\x00(X\x05\x00\x00\x00g_ema", None),              # pickle (legacy torch, S_mean_std)
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'", None),              # .npy
])
def test_text_saved_in_place_of_a_model_is_named(head, expected):
    assert text_instead_of_model(head) == expected


def test_no_model_file_of_the_dev_bundle_looks_like_text(dev_bundle):
    for entry in dev_bundle.manifest.models.values():
        with open(dev_bundle.dir / entry.file, "rb") as f:
            assert text_instead_of_model(f.read(4096)) is None, entry.file


@pytest.mark.parametrize("shape, finite, inside, std, dev, status, words", [
    ((1, 3, 1024, 1024), True, 0.999, 0.5, False, Status.PASS, "within"),
    ((1, 3, 1024, 1024), True, 0.60, 1.5, True, Status.PASS, "not judged"),
    ((1, 3, 1024, 1024), True, 0.60, 1.5, False, Status.FAIL, "not a trained generator"),
    ((1, 3, 1024, 1024), True, 1.0, 0.01, False, Status.FAIL, "almost flat"),
    ((1, 3, 1024, 1024), False, 0.999, 0.5, True, Status.FAIL, "NaN"),
    ((1, 3, 1024, 1024), True, 1.0, 0.0, True, Status.FAIL, "flat colour"),
    ((1, 3, 512, 512), True, 0.999, 0.5, False, Status.FAIL, "expected [1, 3, 1024, 1024]"),
])
def test_render_verdict(shape, finite, inside, std, dev, status, words):
    check = v.judge_render(shape, 1024, finite, inside, std, dev)
    assert check.status is status and words in check.reason


def clip_cosines(face: float, others: float) -> dict[str, float]:
    return {v.FACE_PROMPT: face, **{p: others - 0.01 * i for i, p in enumerate(v.NON_FACE_PROMPTS)}}


def test_clip_face_passes_when_face_wins_clearly_at_clips_logit_scale():
    check = v.judge_clip_face(clip_cosines(0.28, 0.18), logit_scale=100.0)
    assert check.status is Status.PASS and check.values["face_probability"] > 0.99


@pytest.mark.parametrize("cosines, scale, words", [
    (clip_cosines(0.28, 0.18), 14.3, "only p="),        # an untrained logit scale: no confidence
    (clip_cosines(0.20, 0.195), 100.0, "only p="),      # a face barely ahead is not "well above"
    (clip_cosines(0.15, 0.25), 100.0, "it prefers 'a photo of a car'"),
])
def test_clip_face_fails_without_a_clear_margin(cosines, scale, words):
    check = v.judge_clip_face(cosines, logit_scale=scale)
    assert check.status is Status.FAIL and words in check.reason


def test_clip_face_threshold_is_the_softmax_probability():
    # two prompts, logit gap g: p = 1 / (1 + e^-g); p = 0.8 at g = ln 4
    gap = math.log(4) / 100
    just_above = v.judge_clip_face({v.FACE_PROMPT: 0.3 + gap + 1e-4, "a photo of a car": 0.3}, 100.0)
    just_below = v.judge_clip_face({v.FACE_PROMPT: 0.3 + gap - 1e-4, "a photo of a car": 0.3}, 100.0)
    assert (just_above.status, just_below.status) == (Status.PASS, Status.FAIL)


@pytest.mark.parametrize("mse, average, identity, lpips, status, words", [
    (0.047, 0.20, None, None, Status.PASS, "MSE 0.0470"),
    (0.047, 0.20, 0.55, 0.19, Status.PASS, "identity 0.550, lpips 0.190"),
    (0.10, 0.20, None, None, Status.PASS, "<= 0.1"),
    (0.12, 0.20, None, None, Status.FAIL, "MSE 0.1200 > 0.1"),
    (0.08, 0.08, None, None, Status.FAIL, "the encoder ignores its input"),
    (0.05, 0.20, 0.12, None, Status.FAIL, "identity cosine 0.120 < 0.3"),
    (0.05, 0.20, None, 0.45, Status.FAIL, "LPIPS 0.450 > 0.35"),
    (float("nan"), 0.20, None, None, Status.FAIL, "MSE nan"),
])
def test_reconstruction_verdict(mse, average, identity, lpips, status, words):
    check = v.judge_reconstruction(mse, average, identity, lpips)
    assert check.status is status and words in check.reason, check.reason


@pytest.mark.parametrize("scores, status, words", [
    ((0.010, 0.018, 0.027), Status.PASS, "rises with alpha"),
    ((0.010, 0.009, 0.030), Status.FAIL, "does not rise"),
    ((0.010, 0.030, 0.030), Status.FAIL, "does not rise"),       # flat is not a rise
    ((0.010, 0.012, 0.014), Status.FAIL, "rises only 0.0040"),   # monotonic, but noise-sized
    ((0.010, float("nan"), 0.03), Status.FAIL, "does not rise"),
])
def test_smile_verdict(scores, status, words):
    check = v.judge_smile(v.SMILE_ALPHAS, scores)
    assert check.status is status and words in check.reason


@pytest.mark.parametrize("sfe, e4e, status, words", [
    (0.002, 0.047, Status.PASS, "23.5x closer"),
    (0.047, 0.047, Status.FAIL, "not closer"),
    (0.08, 0.047, Status.FAIL, "not closer"),
    (float("nan"), 0.047, Status.FAIL, "MSE nan"),
])
def test_sfe_reconstruction_verdict(sfe, e4e, status, words):
    check = v.judge_sfe_reconstruction(sfe, e4e)
    assert check.status is status and words in check.reason, check.reason


def test_smile_verdict_needs_one_score_per_ascending_alpha():
    with pytest.raises(ValueError):
        v.judge_smile((4, 2, 0), (0.1, 0.2, 0.3))
    with pytest.raises(ValueError):
        v.judge_smile((0, 2, 4), (0.1, 0.2))


# --- the real checks, end to end ---------------------------------------------------------------------------------

def test_dev_bundle_passes_and_says_the_semantic_checks_need_real_weights(capsys, dev_bundle):
    """The command as a user runs it: every check that can run passes, the semantic ones are skipped, exit 0."""
    code = main(["doctor", "--bundle", str(dev_bundle.dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = {line.split()[1]: line for line in out.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")}
    for role in dev_bundle.manifest.models:
        assert lines[f"file:{role}"].startswith("PASS") and "sha256 verified" in lines[f"file:{role}"]
    for name in FILE_CHECKS + MODEL_CHECKS:
        assert lines[name].startswith("PASS"), lines[name]
    assert "256x256, finite" in lines["render"]
    for name in SEMANTIC:
        assert lines[name].startswith("SKIP") and "needs the real weights" in lines[name]
    assert "semantic checks need the real ones" in out.splitlines()[-1]


@pytest.fixture
def broken_bundle(dev_bundle, tmp_path):
    """A copy of the dev bundle with four kinds of damage: truncated, wrong hash, missing, an HTML page."""
    directory = tmp_path / "broken"
    directory.mkdir()
    for entry in dev_bundle.manifest.models.values():
        shutil.copy2(dev_bundle.dir / entry.file, directory / entry.file)
    manifest = json.loads((dev_bundle.dir / "manifest.json").read_text())
    files = {role: manifest[role]["file"] for role in ("generator", "encoder", "clip", "relevance")}
    with open(directory / files["generator"], "r+b") as f:
        f.truncate(manifest["generator"]["bytes"] // 2)
    manifest["encoder"]["sha256"] = "0" * 64
    (directory / files["clip"]).unlink()
    (directory / files["relevance"]).write_text("<!DOCTYPE html>\n<html><body>Please log in to continue</body></html>")
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory, files


def test_broken_bundle_fails_naming_each_file(capsys, broken_bundle):
    directory, files = broken_bundle
    code, report = run_json(capsys, "--bundle", directory)
    assert code == 1 and not report["ok"] and report["exit_code"] == 1
    checks = by_name(report)
    expected = {"generator": "bytes, the manifest says", "encoder": "sha256", "clip": "is missing",
                "relevance": "is an HTML page"}
    for role, words in expected.items():
        check = checks[f"file:{role}"]
        assert check["status"] == "fail" and check["reason"].startswith(files[role]) and words in check["reason"]
        assert checks[f"load:{role}"]["status"] == "skip"
    assert checks["file:identity"]["status"] == "pass" and checks["load:identity"]["status"] == "pass"
    assert checks["bundle"]["status"] == "skip"
    assert all(checks[name]["status"] == "skip" and "failed" in checks[name]["reason"] for name in SEMANTIC)


def test_broken_bundle_human_report_and_fast(capsys, broken_bundle):
    directory, files = broken_bundle
    assert main(["doctor", "--bundle", str(directory), "--fast"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(--fast)")
    assert any(line.startswith("FAIL  file:clip") and files["clip"] in line for line in out)
    assert all(any(line.startswith(f"SKIP  {name}") and "--fast" in line for line in out) for name in SEMANTIC)
    assert out[-1].startswith("FAILED (") and "first failure: file:generator" in out[-1]


def test_random_weights_labelled_real_fail(capsys, dev_bundle, tmp_path):
    """A bundle that says it holds real weights gets the real-weight judgement: random ones do not pass."""
    for entry in dev_bundle.manifest.models.values():
        (tmp_path / entry.file).symlink_to(dev_bundle.dir / entry.file)
    manifest = json.loads((dev_bundle.dir / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "dev": False}))
    code, report = run_json(capsys, "--bundle", tmp_path)
    checks = by_name(report)
    assert code == 1 and report["dev"] is False
    assert checks["render"]["status"] == "fail" and "not a trained generator" in checks["render"]["reason"]
    assert all(checks[name]["status"] == "skip" and "render failed" in checks[name]["reason"] for name in SEMANTIC)


def test_a_bundle_without_sfe_skips_its_checks_saying_how_to_add_it(capsys, dev_bundle, tmp_path):
    manifest = json.loads((dev_bundle.dir / "manifest.json").read_text())
    del manifest["sfe"]
    for entry in manifest.values():
        if isinstance(entry, dict) and "file" in entry:
            (tmp_path / entry["file"]).symlink_to(dev_bundle.dir / entry["file"])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code, report = run_json(capsys, "--bundle", tmp_path, "--fast")
    checks = by_name(report)
    assert code == 0, report
    for name in ("load:sfe", "wiring:sfe"):
        assert checks[name]["status"] == "skip" and "--only sfe" in checks[name]["reason"]


def test_no_manifest_fails_naming_it(capsys, tmp_path):
    code, report = run_json(capsys, "--bundle", tmp_path)
    assert code == 1
    assert report["checks"][0]["name"] == "manifest" and "manifest.json not found" in report["checks"][0]["reason"]


def test_semantic_checks_run_end_to_end_on_the_dev_bundle(dev_bundle):
    """Forced on random weights: the numbers mean nothing, but every semantic check runs through the real
    Editor, alignment of the shipped sample photo, CLIP and the decisions, and reports its measurements."""
    assert SAMPLE_PHOTO.stat().st_size < 150_000
    report = diagnose(dev_bundle.dir, semantic_on_dev=True)
    checks = {c.name: c for c in report.checks}
    for name in SEMANTIC:
        assert checks[name].status in (Status.PASS, Status.FAIL), (name, checks[name].reason)
    assert 0 < checks["clip-face"].values["face_probability"] < 1
    recon = checks["reconstruction"].values
    assert all(math.isfinite(recon[k]) for k in ("mse", "average_face_mse", "identity"))  # dev has an identity model
    assert all(math.isfinite(checks["reconstruction-sfe"].values[k]) for k in ("sfe_mse", "e4e_mse"))
    assert len(checks["smile-edit"].values["smile_scores"]) == len(v.SMILE_ALPHAS)


def test_help_imports_no_torch():
    code = ("import sys, contextlib, io\n"
            "from pipeline.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "    main(['doctor', '--help'])\n"
            "assert '--fast' in out.getvalue() and '--json' in out.getvalue()\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
