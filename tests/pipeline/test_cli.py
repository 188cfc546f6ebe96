"""``python -m pipeline``: edit end to end on a JPEG with EXIF, typed errors and exit codes, the other commands."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.cli.edit import output_paths
from pipeline.faces.photo import load_photo
from tests.pipeline.edit.test_editor import quad_masks
from tests.pipeline.images import REPO_ROOT, golden_dir, jpeg_bytes, noise_image


@pytest.fixture(scope="module")
def exif_face(tmp_path_factory):
    """The golden face as a JPEG carrying a camera make and a GPS position."""
    path = golden_dir() / "face_input.png"
    if not path.is_file():
        pytest.skip(f"golden fixtures not found in {golden_dir()} (set GOLDEN_DIR)")
    out = tmp_path_factory.mktemp("photos") / "face.jpg"
    out.write_bytes(jpeg_bytes(Image.open(path).convert("RGB"), gps=True))
    exif = Image.open(out).getexif()
    assert exif[0x010F] == "TestCam" and exif.get_ifd(0x8825)  # the input really has them
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_edit_writes_one_clean_full_size_photo_per_alpha(capsys, tmp_path, exif_face, dev_bundle, dev_editor):
    code, out, err = run(capsys, "edit", exif_face, "--neutral", "a face", "--target", "a smiling face",
                         "--alpha", "-2", "--alpha", "2.5", "--bundle", dev_bundle.dir, "--out", tmp_path / "e.png",
                         "--quiet")
    assert code == 0, err
    paths = [tmp_path / "e_a-2.png", tmp_path / "e_a2.5.png"]
    assert out.split() == [str(p) for p in paths]
    assert "development bundle" in err and "timing:" in err
    photo = np.asarray(load_photo(exif_face)).astype(int)
    inside, far = quad_masks(dev_editor.invert(exif_face.read_bytes()))
    for path in paths:
        image = Image.open(path)
        assert image.size == (photo.shape[1], photo.shape[0])
        assert not image.getexif() and "exif" not in image.info
        pixels = np.asarray(image.convert("RGB")).astype(int)
        assert np.array_equal(pixels[far], photo[far])
        assert np.abs(pixels[inside] - photo[inside]).mean() > 10


def test_edit_to_jpeg_drops_exif_and_gps(capsys, tmp_path, exif_face, dev_bundle):
    code, out, err = run(capsys, "edit", exif_face, "--neutral", "a face", "--target", "a face with glasses",
                         "--bundle", dev_bundle.dir, "--out", tmp_path / "e.jpg", "--quiet")
    assert code == 0, err
    data = (tmp_path / "e.jpg").read_bytes()
    assert b"Exif" not in data and b"TestCam" not in data
    image = Image.open(tmp_path / "e.jpg")
    assert image.format == "JPEG" and not image.getexif()
    assert image.size == Image.open(exif_face).size


def test_photo_without_a_face_exits_1_with_no_face(capsys, tmp_path, dev_bundle):
    photo = tmp_path / "wall.jpg"
    photo.write_bytes(jpeg_bytes(noise_image(320, 240)))
    code, out, err = run(capsys, "edit", photo, "--neutral", "a face", "--target", "a bald face",
                         "--bundle", dev_bundle.dir, "--out", tmp_path / "o.png", "--quiet")
    assert code == 1 and "error: no_face:" in err and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("args", [["--alpha", "100"], ["--alpha", "nan"], ["--beta", "1.5"], ["--beta", "0"],
                                  ["--mode", "optimize", "--steps", "0"]])
def test_invalid_parameters_exit_2_before_any_work(capsys, tmp_path, exif_face, dev_bundle, args):
    code, out, err = run(capsys, "edit", exif_face, "--neutral", "a face", "--target", "a bald face",
                         "--bundle", dev_bundle.dir, "--out", tmp_path / "o.png", *args)
    assert code == 2 and "error: invalid_parameter:" in err


def test_usage_errors_exit_2(capsys, tmp_path, exif_face):
    with pytest.raises(SystemExit) as exc:
        main(["edit", str(exif_face), "--neutral", "a", "--target", "b", "--out", str(tmp_path / "o.gif")])
    assert exc.value.code == 2 and "--out must end in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["edit", str(exif_face), "--target", "b", "--out", str(tmp_path / "o.png")])
    assert exc.value.code == 2


def test_missing_bundle_names_the_file_and_the_commands(capsys, tmp_path, exif_face):
    code, out, err = run(capsys, "edit", exif_face, "--neutral", "a", "--target", "b",
                         "--bundle", tmp_path / "nothing", "--out", tmp_path / "o.png")
    assert code == 1 and "error: model_missing:" in err
    assert "manifest.json" in err and "python -m pipeline download" in err and "make-dev-bundle" in err


def test_info_shows_licenses_and_the_dev_flag(capsys, dev_bundle):
    code, out, err = run(capsys, "info", "--bundle", dev_bundle.dir, "--verify")
    assert code == 0
    assert "DEVELOPMENT" in out and "sha256 verified" in out
    for role in ("generator", "encoder", "clip", "relevance"):
        assert f"\n{role}\n" in out


def test_verify_golden_rejects_unknown_families_and_non_fixtures(capsys, tmp_path):
    assert run(capsys, "verify-golden", tmp_path)[0] == 2
    code, _, err = run(capsys, "verify-golden", golden_dir(), "--only", "nonsense")
    assert code == 2 and "unknown check families" in err


def test_output_paths_get_an_alpha_suffix_only_for_several():
    assert [p.name for p in output_paths("x/out.webp", [1.0])] == ["out.webp"]
    assert [p.name for p in output_paths("out.png", [-1.5, 0.0, 2.0])] == ["out_a-1.5.png", "out_a0.png", "out_a2.png"]


def test_module_entry_point_help_teaches():
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for command in ("edit", "verify-golden", "download", "make-dev-bundle", "precompute-relevance", "info"):
        assert command in result.stdout
    assert "examples:" in result.stdout


def test_help_does_not_import_torch():
    """Every command's parser is built for ``--help``; none may pull torch (seconds) in to do it."""
    probe = ("import sys\nfrom pipeline.cli import build_parser\nbuild_parser()\n"
             "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'mediapipe') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_precompute_relevance_replaces_the_bundle_file_and_pins_it(capsys, tmp_path):
    from pipeline.edit.relevance import load_relevance
    from pipeline.weights.bundle import Bundle
    from pipeline.weights.dev_bundle import make_dev_bundle

    bundle = make_dev_bundle(tmp_path / "b16", size=16)  # 16² generator: the precompute renders in seconds
    before = bundle.manifest.models["relevance"].sha256
    code, out, err = run(capsys, "precompute-relevance", "--bundle", bundle.dir, "--images", "1", "--stats", "2048", "--quiet")
    assert code == 0, err
    entry = Bundle.load(bundle.dir, verify=True).manifest.models["relevance"]
    assert out.strip() == str(bundle.dir / entry.file) and entry.sha256 != before and entry.url is None
    relevance = load_relevance(bundle.dir / entry.file)
    assert relevance.meta["n_images"] == 1 and relevance.meta["n_stats"] == 2048
    assert "dev_random_fs3" not in relevance.meta
