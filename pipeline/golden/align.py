"""Golden checks for face alignment: the FFHQ quad, the aligned crops, and our own detector's quad."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from pipeline.faces.align import align_crop, face_quad
from pipeline.faces.detect import find_landmarks
from pipeline.faces.photo import load_photo
from pipeline.golden import Check, Fixture

QUAD_TOL_PX = 1e-6
CROP_MEAN_TOL = 0.5      # mean |ours - reference| over uint8 pixels
CROP_MAX_TOL = 16.0      # max |ours - reference|
DETECTOR_TOL = 0.02      # max corner distance / qsize
EXIF_ORIENTATION = 0x0112


def applies(fixture: Fixture) -> bool:
    return (fixture.dir / "face_align.npz").is_file()


def checks(fixture: Fixture) -> Iterator[Check]:
    meta = fixture.meta["face_align"]
    ref = fixture.npz("face_align")
    # load_photo applies EXIF orientation: a fixture photo stored sideways with an orientation tag is
    # aligned in its upright coordinates, as the service sees it.
    path = fixture.dir / meta["input_file"]
    photo = load_photo(path)
    with Image.open(path) as raw:
        orientation = raw.getexif().get(EXIF_ORIENTATION, 1)
    upright = f"; EXIF orientation {orientation}, compared upright" if orientation != 1 else ""

    quad, _ = face_quad(ref["landmarks68"])
    corner_err = float(np.abs(quad - ref["quad"]).max())
    yield Check("align: quad from landmarks68 (px)", corner_err, QUAD_TOL_PX, "max abs corner error in px")

    for name, settings in meta["settings"].items():
        ours = np.asarray(align_crop(photo, ref["quad"], settings["output_size"], settings["transform_size"]))
        expected = ref[name]
        if ours.shape != expected.shape:
            yield Check(f"align: {name} shape", np.inf, 0.0, f"{ours.shape} != {expected.shape}")
            continue
        diff = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
        yield Check(f"align: {name} mean abs (uint8)", float(diff.mean()), CROP_MEAN_TOL, upright[2:])
        yield Check(f"align: {name} max abs (uint8)", float(diff.max()), CROP_MAX_TOL, upright[2:])

    faces = find_landmarks(photo)
    if not faces:
        yield Check("align: detector quad / qsize", np.inf, DETECTOR_TOL, "no face detected")
        return
    ref_qsize = float(ref["qsize"])
    # The fixture's face is the largest (the one the reference aligned); match ours by nearest centre anyway.
    centres = [face_quad(lm)[0].mean(axis=0) for lm in faces]
    best = int(np.argmin([np.hypot(*(c - ref["quad"].mean(axis=0))) for c in centres]))
    det_quad, _ = face_quad(faces[best])
    err = float(np.hypot(*(det_quad - ref["quad"]).T).max()) / ref_qsize
    yield Check("align: detector quad / qsize", err, DETECTOR_TOL, f"{len(faces)} face(s) found{upright}")
