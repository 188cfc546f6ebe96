"""M2 (ingress part): no 500 where the client did nothing wrong. A phone JPEG with a Multi-Picture
segment (Pillow: "MPO") crashed the upload check; a photo whose stored object is gone crashed
`GET /v1/images/{id}/file`. (A chunked JSON body over the limit: test_ingress_auth_first.)"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from common.storage_layout import original_key
from tests.services.api import running_service
from tests.services.attack_counts import count
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture(scope="module")
def service(module_pg_url, tmp_path_factory):
    with running_service(local_settings(module_pg_url, tmp_path_factory.mktemp("storage"))) as svc:
        yield svc


def _mpo(size=(320, 240)) -> bytes:
    """A JPEG with an MPF second frame, as phones write them (portrait mode, previews)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 150, 120)).save(buffer, "MPO", save_all=True,
                                                 append_images=[Image.new("RGB", size, (0, 0, 0))])
    return buffer.getvalue()


def test_a_phone_mpo_jpeg_is_a_jpeg(service):
    data = _mpo()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    response = service.post_image(data=data)
    count("cases tried")
    assert response.status_code == 201, response.text
    image = response.json()
    assert (image["format"], image["width"], image["height"]) == ("jpeg", 320, 240)
    served = service.client.get(f"/v1/images/{image['id']}/file", headers=service.auth())
    assert served.headers["content-type"] == "image/jpeg" and served.content == data


def test_a_missing_stored_photo_is_a_404_not_a_500(service):
    image_id = service.post_image().json()["id"]
    service.client.app.state.storage.delete_prefix(original_key(image_id))
    response = service.client.get(f"/v1/images/{image_id}/file", headers=service.auth())
    count("cases tried")
    assert (response.status_code, response.json()["code"]) == (404, "image_file_missing")
