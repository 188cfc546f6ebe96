"""Editor and Inversion on the development bundle: the whole pipeline, its validation, cancel and caches."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline import Bundle, Canceled, Editor, Inversion, PipelineError
from pipeline.edit.editor import Change, Output, render_order
from pipeline.errors import EMPTY_DIRECTION, INVALID_PARAMETER, NO_FACE
from tests.pipeline.images import golden_dir, jpeg_bytes, noise_image


@pytest.fixture(scope="module")
def inversion(dev_editor, face_bytes) -> Inversion:
    return dev_editor.invert(face_bytes)


def quad_masks(inv: Inversion, margin: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """(inside the quad, far outside it: beyond the quad grown by ``margin`` of its size on every side)."""
    w, h = inv.photo_size
    centre = inv.quad.mean(axis=0)

    def polygon(scale: float) -> np.ndarray:
        img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(img).polygon([tuple(centre + scale * (p - centre)) for p in inv.quad], fill=1)
        return np.asarray(img).astype(bool)

    return polygon(0.6), ~polygon(1 + 2 * margin)


def test_dev_bundle_is_marked_and_verifies(dev_bundle):
    assert dev_bundle.is_dev
    again = Bundle.load(dev_bundle.dir, verify=True)
    assert all(len(e.sha256) == 64 for e in again.manifest.models.values())


def test_dev_bundle_loads_through_the_official_loaders(dev_bundle):
    from pipeline.edit.relevance import load_relevance
    from pipeline.models.clip_model import load_clip
    from pipeline.models.e4e import load_encoder
    from pipeline.models.stylegan2 import load_generator

    g = load_generator(dev_bundle.path("generator"))
    e4e = load_encoder(dev_bundle.path("encoder"))
    clip = load_clip(dev_bundle.path("clip"))
    relevance = load_relevance(dev_bundle.path("relevance"))
    assert e4e.encoder.style_count == g.n_latent == 14 and e4e.latent_avg.shape[-1] == g.style_dim
    n_conv = sum(d for d, rgb in zip(g.style_dims, g.style_is_torgb, strict=True) if not rgb)
    assert relevance.fs3.shape == (n_conv, clip.text_projection.shape[1])
    assert relevance.style_std.shape == (sum(g.style_dims),)


def test_versions_are_file_hashes(dev_editor, dev_bundle):
    versions = dev_editor.versions
    assert set(versions) == {"generator", "encoder", "clip", "relevance", "identity", "sfe"}
    assert dev_editor.encoder_version == dev_bundle.manifest.models["encoder"].sha256[:12]


def test_invert_finds_the_face(inversion, dev_editor, face_bytes):
    g = dev_editor.models.generator
    assert inversion.codes.shape == (g.n_latent, g.style_dim) and inversion.codes.dtype == np.float32
    assert inversion.n_faces == 1 and inversion.quad.shape == (4, 2) and inversion.qsize > 64
    assert inversion.photo == face_bytes
    assert inversion.photo_size == Image.open(golden_dir() / "face_input.png").size
    assert inversion.versions["encoder"] == dev_editor.encoder_version


def test_inversion_round_trips_through_bytes_and_edits_identically(dev_editor, inversion, face_bytes):
    blob = inversion.to_bytes()
    again = Inversion.from_bytes(blob)
    assert np.array_equal(again.codes, inversion.codes) and again.codes.dtype == np.float32
    assert np.array_equal(again.quad, inversion.quad)
    assert (again.qsize, again.n_faces, again.note, again.photo_size, again.versions, again.face_index,
            again.box) == (inversion.qsize, inversion.n_faces, inversion.note, inversion.photo_size,
                           inversion.versions, 0, inversion.box)
    assert inversion.box is not None
    a = dev_editor.edit(inversion, "a face", "a smiling face", [2.0])
    b = dev_editor.edit(again, "a face", "a smiling face", [2.0], photo=face_bytes)
    c = dev_editor.edit(again.with_photo(face_bytes), "a face", "a smiling face", [2.0])
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_stored_inversions_hold_no_photo(dev_editor, inversion, face_bytes):
    """The photo is stored once, where it was uploaded: deleting it there must leave no copy in the cache."""
    blob = inversion.to_bytes()
    assert inversion.photo == face_bytes and face_bytes[1000:1064] not in blob
    assert len(blob) < len(face_bytes) // 4  # codes, quad and sizes only
    again = Inversion.from_bytes(blob)
    assert again.photo is None
    with pytest.raises(PipelineError) as err:
        dev_editor.edit(again, "a face", "a smiling face", [1.0])
    assert err.value.code == INVALID_PARAMETER and "photo=" in err.value.message


def test_format_1_blobs_with_a_photo_inside_are_refused(inversion, face_bytes):
    """A cache written before the photo left it reads as unreadable: the worker recomputes and overwrites."""
    buf = io.BytesIO()
    np.savez(buf, format=np.int64(1), codes=inversion.codes, quad=inversion.quad, qsize=np.float64(inversion.qsize),
             n_faces=np.int64(1), note=np.str_(""), photo=np.frombuffer(face_bytes, np.uint8),
             photo_size=np.array(inversion.photo_size, np.int64), versions=np.str_("{}"))
    with pytest.raises(PipelineError) as err:
        Inversion.from_bytes(buf.getvalue())
    assert err.value.code == INVALID_PARAMETER and "format 1" in err.value.message


def test_a_photo_of_another_size_is_refused(dev_editor, inversion):
    other = jpeg_bytes(Image.open(golden_dir() / "face_input.png").convert("RGB").resize((300, 200)))
    with pytest.raises(PipelineError) as err:
        dev_editor.edit(inversion, "a face", "a smiling face", [1.0], photo=other)
    assert err.value.code == INVALID_PARAMETER and "300x200" in err.value.message


def test_inversion_bytes_are_not_pickles():
    with pytest.raises(PipelineError) as err:
        Inversion.from_bytes(b"not an npz")
    assert err.value.code == INVALID_PARAMETER


def test_edit_returns_full_photos_changed_only_around_the_face(dev_editor, inversion, face_bytes):
    progress, metrics = [], {}
    images = dev_editor.edit(inversion, "a face", "a smiling face", [-3, 0, 3], beta=0.15,
                             progress=lambda s, f: progress.append((s, f)), metrics=metrics)
    photo = np.asarray(Image.open(golden_dir() / "face_input.png").convert("RGB")).astype(int)
    inside, far = quad_masks(inversion)
    assert len(images) == 3
    for image in images:
        out = np.asarray(image).astype(int)
        assert image.size == inversion.photo_size and image.mode == "RGB"
        assert np.array_equal(out[far], photo[far])
        assert np.abs(out[inside] - photo[inside]).mean() > 10
    # the alphas differ from each other inside the face
    assert np.abs(np.asarray(images[0]).astype(int) - np.asarray(images[2]))[inside].mean() > 1
    assert {s for s, _ in progress} == {"direction", "synthesize", "paste"}
    assert {"direction_seconds", "synthesize_seconds", "paste_seconds"} <= set(metrics)


def test_one_batch_equals_separate_calls(dev_editor, inversion):
    both = dev_editor.edit(inversion, "a face", "a face with glasses", [-2, 2])
    single = [dev_editor.edit(inversion, "a face", "a face with glasses", [a])[0] for a in (-2, 2)]
    for x, y in zip(both, single, strict=True):
        assert np.abs(np.asarray(x).astype(int) - np.asarray(y)).max() <= 1  # float summation order only


def test_an_unwritable_direction_cache_never_fails_an_edit(dev_bundle, inversion, tmp_path, caplog):
    """A read-only bundle (or a full disk) costs recomputation, not the edit. Root can write anywhere, so the
    cache folder is put under a regular file, where nobody can create it."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    editor = Editor(dev_bundle, directions_dir=blocker / "directions")
    for target in ("a face with a red hat", "a face with a blue hat"):  # pairs no other test has cached
        (image,) = editor.edit(inversion, "a face", target, [1.0])
        assert image.size == inversion.photo_size
    warnings = [r for r in caplog.records if "not cached on disk" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"  # said once, not once per edit


def test_direction_is_cached_on_disk(dev_bundle, inversion, tmp_path):
    editor = Editor(dev_bundle, directions_dir=tmp_path)
    first = editor.edit(inversion, "a face", "a bald face", [1.5])
    assert len(list(tmp_path.glob("*.npy"))) == 1
    second = Editor(dev_bundle, directions_dir=tmp_path).edit(inversion, "a face", "a bald face", [1.5])
    assert np.array_equal(np.asarray(first[0]), np.asarray(second[0]))
    assert len(list(tmp_path.glob("*.npy"))) == 1


@pytest.mark.parametrize("kwargs", [
    {"alphas": []}, {"alphas": [float("nan")]}, {"alphas": [100.0]}, {"alphas": ["x"]}, {"alphas": [1.0] * 17},
    {"beta": 0.0}, {"beta": 1.0}, {"beta": -0.1}, {"beta": float("inf")},
    {"mode": "magic"}, {"neutral": ""}, {"target": "   "}, {"target": "x" * 1000},
])
def test_invalid_parameters_are_typed_errors(dev_editor, inversion, kwargs):
    args = {"neutral": "a face", "target": "a smiling face", "alphas": [1.0], "beta": 0.15, "mode": "global"}
    args.update(kwargs)
    with pytest.raises(PipelineError) as err:
        dev_editor.edit(inversion, **args)
    assert err.value.code == INVALID_PARAMETER


def test_a_beta_above_every_relevance_is_an_empty_direction(dev_editor, inversion):
    with pytest.raises(PipelineError) as err:
        dev_editor.edit(inversion, "a face", "a smiling face", [1.0], beta=0.99)
    assert err.value.code == EMPTY_DIRECTION and "beta" in err.value.message


def test_codes_of_another_generator_are_refused(dev_editor, inversion):
    other = Inversion(np.zeros((18, 512), np.float32), inversion.quad, inversion.qsize, 1, "", inversion.photo_size,
                      photo=inversion.photo)
    with pytest.raises(PipelineError) as err:
        dev_editor.edit(other, "a face", "a smiling face", [1.0])
    assert err.value.code == INVALID_PARAMETER and "invert the photo again" in err.value.message


def test_cancel_between_stages(dev_editor, inversion, face_bytes):
    with pytest.raises(Canceled):
        dev_editor.invert(face_bytes, should_cancel=lambda: True)
    stages = []

    def cancel_after_direction() -> bool:
        return "direction" in stages

    with pytest.raises(Canceled) as err:
        dev_editor.edit(inversion, "a face", "a smiling face", [1.0], progress=lambda s, f: stages.append(s),
                        should_cancel=cancel_after_direction)
    assert err.value.code == "canceled" and "synthesize" not in stages


def test_photo_without_a_face_is_no_face(dev_editor):
    with pytest.raises(PipelineError) as err:
        dev_editor.invert(jpeg_bytes(noise_image(320, 240)))
    assert err.value.code == NO_FACE


def test_exif_orientation_is_applied_and_kept(dev_editor, face_bytes):
    rotated = Image.open(golden_dir() / "face_input.png").convert("RGB").transpose(Image.Transpose.ROTATE_90)
    # stored sideways with orientation 6 ("rotate 270 to view"): upright after EXIF transpose
    blob = jpeg_bytes(rotated, orientation=6)
    inv = dev_editor.invert(blob)
    upright = Image.open(golden_dir() / "face_input.png").size
    assert inv.photo_size == upright and inv.n_faces == 1
    (image,) = dev_editor.edit(inv, "a face", "a smiling face", [1.0])
    assert image.size == upright


# --- render: several changes, results as they come, likeness -------------------------------------------------

def test_one_change_of_weight_one_renders_exactly_todays_edit(dev_editor, inversion, face_bytes):
    """The edit as it was computed before ``render`` (one direction, all alphas in one batch, one paste per
    alpha), pixel for pixel."""
    from pipeline.edit.directions import apply, style_direction
    from pipeline.faces.paste import paste_back_many
    from pipeline.faces.paste_gpu import to_uint8
    from pipeline.faces.photo import load_photo

    alphas = [-2.0, 0.0, 3.0]
    m, g = dev_editor.models, dev_editor.models.generator
    with torch.no_grad():
        dt = dev_editor._directions.get(m.clip, "a face", "a smiling face")
        direction = style_direction(m.fs3, dt, 0.15, m.style_std, g.style_dims, g.style_is_torgb)
        faces = m.renderer.render(apply(g.styles(torch.from_numpy(inversion.codes.copy())[None]), direction, alphas))
    before = paste_back_many(load_photo(face_bytes), [Image.fromarray(f) for f in to_uint8(faces)], inversion.quad)
    outputs = dev_editor.render(face_bytes, [inversion], [Change("a face", "a smiling face", 1.0)], alphas)
    edited = dev_editor.edit(inversion, "a face", "a smiling face", alphas)
    for old, output, image in zip(before, outputs, edited, strict=True):
        assert np.array_equal(np.asarray(old), np.asarray(output.image))
        assert np.array_equal(np.asarray(old), np.asarray(image))


def test_outputs_come_middle_strength_first(dev_editor, inversion, face_bytes):
    seen: list[Output] = []
    handed_over: list[float] = []  # when each output reached the caller
    metrics: dict = {}
    alphas = [-4.0, -2.0, 0.0, 2.0, 4.0]
    start = time.perf_counter()
    outputs = dev_editor.render(face_bytes, [inversion], [Change("a face", "a smiling face")], alphas,
                                on_output=lambda o: (seen.append(o), handed_over.append(time.perf_counter())),
                                metrics=metrics)
    assert [o.index for o in seen] == render_order(5) == [2, 1, 3, 0, 4]
    assert [o.index for o in outputs] == [0, 1, 2, 3, 4] and [o.alpha for o in outputs] == alphas
    assert all(o is seen[[s.index for s in seen].index(o.index)] for o in outputs)
    # the metric is the first hand-over, measured inside the call (an order check, not a speed check)
    assert 0 < metrics["first_output_seconds"] <= handed_over[0] - start < handed_over[-1] - start
    assert metrics["faces"] == [{"index": 0}]
    order = []
    dev_editor.render(face_bytes, [inversion], [Change("a face", "a smiling face")], alphas[:3], order=[0, 2, 1],
                      on_output=lambda o: order.append(o.index))
    assert order == [0, 2, 1]
    assert render_order(4) == [2, 1, 3, 0] and render_order(1) == [0]


def test_a_preview_of_the_first_strength_comes_before_it_and_changes_nothing(dev_editor, inversion, face_bytes):
    """``on_preview``: one ``Preview`` of the first strength (the middle one), before its ``Output``, the photo's
    aspect ratio at most ``PREVIEW_MAX_SIDE`` long, the face changed like the full-size one; the outputs are bit
    for bit those of a render without a preview (the same render, gone on from the preview's block)."""
    from pipeline.edit.editor import PREVIEW_MAX_SIDE, Preview, preview_size

    events: list = []
    metrics: dict = {}
    alphas = [-3.0, 0.0, 3.0]
    change = [Change("a face", "a smiling face")]
    outputs = dev_editor.render(face_bytes, [inversion], change, alphas, on_output=events.append,
                                on_preview=events.append, metrics=metrics)
    plain = dev_editor.render(face_bytes, [inversion], change, alphas)
    assert [type(e).__name__ for e in events] == ["Preview", "Output", "Output", "Output"]
    preview: Preview = events[0]
    assert (preview.index, preview.alpha) == (1, 0.0) and events[1].index == 1
    assert preview.image.size == preview_size(inversion.photo_size)
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(outputs, plain, strict=True))
    assert 0 < metrics["first_preview_seconds"] < metrics["first_output_seconds"]
    # the preview is the full-size result, seen smaller: close where the face is, the same photo elsewhere
    full = np.asarray(outputs[1].image.resize(preview.image.size, Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(preview.image, dtype=np.float32) - full).mean() < 6
    assert preview_size((4032, 3024)) == (PREVIEW_MAX_SIDE, 768) and preview_size((300, 200)) == (300, 200)
    assert preview_size((1000, 3000)) == (341, PREVIEW_MAX_SIDE)


def test_a_staged_inversion_finishes_after_the_preview_and_changes_nothing(dev_editor, inversion, face_bytes):
    """``invert(staged=True)``: the rows the preview reads now, the others computed once the preview is shown;
    the preview, every output and the finished inversion are bit for bit those of a whole inversion."""
    from pipeline.edit.inversion import PendingInversion

    change, alphas = [Change("a face", "a smiling face")], [-3.0, 0.0, 3.0]
    pending = dev_editor.invert(face_bytes, staged=True)
    assert isinstance(pending, PendingInversion) and not pending.finished
    assert 0 < pending.ready.shape[0] < pending.n_latent == inversion.codes.shape[0]
    events: list = []

    def on_preview(preview):
        assert not pending.finished  # shown before the last rows are computed
        events.append(preview)

    staged = dev_editor.render(face_bytes, [pending], change, alphas, on_preview=on_preview, on_output=events.append)
    assert pending.finished and [type(e).__name__ for e in events] == ["Preview", "Output", "Output", "Output"]
    whole_events: list = []
    whole = dev_editor.render(face_bytes, [inversion], change, alphas, on_preview=whole_events.append)
    np.testing.assert_array_equal(pending.finish().codes, inversion.codes)
    assert Inversion.from_bytes(pending.finish().to_bytes()).codes.tobytes() == inversion.codes.tobytes()
    assert np.array_equal(np.asarray(events[0].image), np.asarray(whole_events[0].image))
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(staged, whole, strict=True))


def test_a_staged_inversion_without_a_preview_finishes_first(dev_editor, inversion, face_bytes):
    pending = dev_editor.invert(face_bytes, staged=True)
    (output,) = dev_editor.render(face_bytes, [pending], [Change("a face", "a smiling face")], [2.0])
    (whole,) = dev_editor.render(face_bytes, [inversion], [Change("a face", "a smiling face")], [2.0])
    assert pending.finished and np.array_equal(np.asarray(output.image), np.asarray(whole.image))


def test_cancel_between_strengths_keeps_the_finished_ones(dev_editor, inversion, face_bytes):
    seen: list[Output] = []
    with pytest.raises(Canceled):
        dev_editor.render(face_bytes, [inversion], [Change("a face", "a smiling face")], [-2.0, 0.0, 2.0],
                          on_output=seen.append, should_cancel=lambda: bool(seen))
    assert [o.index for o in seen] == [1]


def test_likeness_per_face_with_an_identity_model_none_without(dev_bundle, dev_editor, inversion, face_bytes):
    import dataclasses

    (output,) = dev_editor.render(face_bytes, [inversion], [Change("a face", "a smiling face")], [2.0])
    assert dev_bundle.has("identity")
    assert isinstance(output.likeness, tuple) and len(output.likeness) == 1 and -1 <= output.likeness[0] <= 1
    # the same models without an identity model (what a bundle without the optional entry loads)
    plain = Editor(dev_bundle)
    plain._models, plain._directions = dataclasses.replace(dev_editor.models, identity=None), dev_editor._directions
    (without,) = plain.render(face_bytes, [inversion], [Change("a face", "a smiling face")], [2.0])
    assert without.likeness is None
    assert np.array_equal(np.asarray(without.image), np.asarray(output.image))


@pytest.mark.parametrize("kwargs", [
    {"changes": []},
    {"changes": [Change("a face", "a smiling face", 0.0)]},
    {"changes": [Change("a face", "a smiling face"), Change("a face", "an old face")], "mode": "optimize"},
    {"order": [0, 0]},
    {"inversions": []},
])
def test_render_parameters_are_typed_errors(dev_editor, inversion, face_bytes, kwargs):
    args = {"inversions": [inversion], "changes": [Change("a face", "a smiling face")], "alphas": [1.0, 2.0]}
    args.update(kwargs)
    with pytest.raises(PipelineError) as err:
        dev_editor.render(face_bytes, **args)
    assert err.value.code == INVALID_PARAMETER
    with pytest.raises(PipelineError) as err:
        dev_editor.render(face_bytes, [inversion, inversion], [Change("a face", "a smiling face")], [1.0])
    assert err.value.code == INVALID_PARAMETER and "once" in err.value.message


def test_cli_edits_every_face_with_two_changes(dev_bundle, tmp_path, capsys):
    from pipeline.cli import main
    from tests.pipeline.images import two_faces

    photo = tmp_path / "pair.png"
    two_faces().save(photo)
    code = main(["edit", str(photo), "--change", "a face", "a smiling face", "1", "--change", "a face",
                 "a face with blue hair", "0.5", "--faces", "all", "--alpha", "-1", "--alpha", "2",
                 "--bundle", str(dev_bundle.dir), "--out", str(tmp_path / "out.png"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.split() == [str(tmp_path / "out_a-1.png"), str(tmp_path / "out_a2.png")]
    assert "faces: 2 found, edited 0, 1" in err and "likeness out_a2.png:" in err
    with pytest.raises(SystemExit):
        main(["edit", str(photo), "--change", "a face", "a smiling face", "x", "--out", str(tmp_path / "o.png")])
    with pytest.raises(SystemExit):
        main(["edit", str(photo), "--neutral", "a", "--target", "b", "--change", "a", "b", "1",
              "--out", str(tmp_path / "o.png")])
    code = main(["edit", str(photo), "--neutral", "a face", "--target", "a smiling face", "--faces", "0,5",
                 "--bundle", str(dev_bundle.dir), "--out", str(tmp_path / "o.png"), "--quiet"])
    assert code == 2 and "0-1" in capsys.readouterr().err


def test_warm_up_renders_once_so_the_first_job_pays_no_setup(dev_bundle, tmp_path):
    editor = Editor(dev_bundle, directions_dir=tmp_path)
    assert editor._models is None
    seconds = editor.warm_up()
    snapshots = editor.models.renderer.snapshots()
    assert seconds > 0 and "cpu" in snapshots  # the CPU renderer's derived weights are built
    editor.warm_up()
    assert editor.models.renderer.snapshots()["cpu"] is snapshots["cpu"]  # built once
