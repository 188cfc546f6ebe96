"""Privacy end to end: a photo with GPS EXIF gives results without any EXIF and an inversion cache without
any of its bytes; the API key, the webhook secret and the photo bytes never reach the logs (API in process,
worker log file)."""

import io
import logging
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import face_jpeg
from tests.services.api import running_service
from tests.services.settings import GENEROUS_LIMITS

pytestmark = [pytest.mark.trust, pytest.mark.services]


def _with_gps(jpeg: bytes) -> bytes:
    image = Image.open(io.BytesIO(jpeg))
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.0), "E", (2.0, 17.0, 40.0)
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=92)
    return out.getvalue()


def test_results_have_no_exif_and_logs_no_secrets(settings, worker, caplog):
    trust = settings.model_copy(update=GENEROUS_LIMITS)
    photo = _with_gps(face_jpeg())
    assert Image.open(io.BytesIO(photo)).getexif().get_ifd(0x8825)  # the upload really has GPS
    caplog.set_level(logging.DEBUG)  # the service resets the level to its own LOG_LEVEL
    with running_service(trust, owner_suffix="-privacy", drop_queues=False) as svc:
        secret = svc.client.get("/v1/webhooks/secret", headers=svc.auth()).json()["key"]
        image_id = svc.post_image(data=photo).json()["id"]
        edit_id = svc.submit(image_id, output_format="jpeg").json()["id"]
        deadline = time.monotonic() + 240
        while (edit := svc.client.get(f"/v1/edits/{edit_id}", headers=svc.auth()).json())["status"] in (
                "starting", "processing") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert edit["status"] == "succeeded", edit
        for url in edit["output"]:
            response = httpx.get(url, timeout=30) if url.startswith("http://127.0.0.1") else svc.client.get(
                url, headers=svc.auth())
            assert response.status_code == 200
            result = Image.open(io.BytesIO(response.content))
            assert not result.getexif(), dict(result.getexif())
            assert "exif" not in result.info and "icc_profile" not in result.info
        keys = [svc.keys[who] for who in ("alice", "bob")]
        # H4: the photo (GPS and all) is stored once, as the original; the inversion cache holds none of it
        storage = svc.client.app.state.storage
        (cached,) = storage.list(f"inversions/{image_id}/")
        derived = [storage.get(key) for key in (cached, *storage.list(f"results/{edit_id}/"))]
        middle = photo[len(photo) // 2 : len(photo) // 2 + 64]  # image data (headers are alike in every JPEG)
        assert all(b"SpyCam" not in blob and middle not in blob for blob in derived)
    logs = caplog.text + worker.log()
    assert edit_id in worker.log()  # the worker did log this edit's processing: the check has teeth
    for needle in [*keys, secret, secret.removeprefix("whsec_")]:
        assert needle not in logs
    assert "SpyCam" not in logs and photo[100:140].hex() not in logs
