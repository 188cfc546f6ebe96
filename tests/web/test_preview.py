"""The first strength's preview in the app (issue 25): the result screen opens on the preview, marked as one,
then the full-size photo replaces it in the same place. Chromium at 390×844 against the real service (API +
worker, development bundle).

The dev bundle renders a strength in milliseconds, so the real preview stands in for its strength too briefly
to be seen between two polls; the test serves the edit resource as a CPU server does in that second (status
processing, no output yet, `preview` set, its image the photo's aspect ratio at the preview's size) until it
has seen the preview, then lets the real, finished resource through. The server's side (what it stores,
serves, announces and deletes) is tested in tests/api/test_edit_preview.py and tests/worker/."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Page, Route, expect

from tests.web.test_app import EDIT_TIMEOUT_MS, open_app, screen, shot

pytestmark = pytest.mark.browser

EDIT_RESOURCE = re.compile(r"/v1/edits/[^/?]+$")
PREVIEW_ROUTE = re.compile(r"/v1/edits/[^/?]+/preview$")
# The picture's drawn rectangle inside its element (object-fit: contain), and its natural size.
DRAWN = """() => {
  const img = document.getElementById("result-img");
  const box = img.getBoundingClientRect();
  const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
  const [w, h] = [img.naturalWidth * scale, img.naturalHeight * scale];
  return {natural: [img.naturalWidth, img.naturalHeight], box: [box.x, box.y, box.width, box.height],
          drawn: [box.x + (box.width - w) / 2, box.y + (box.height - h) / 2, w, h],
          figure: Object.values(document.getElementById("result-figure").getBoundingClientRect().toJSON())};
}"""


class PreviewFirst:
    """Serves the edit resource as a CPU server does while the first strength renders (processing, output
    null, `preview` standing in for the middle strength) until `release()`; records what it served."""

    def __init__(self, preview: bytes, size: tuple[int, int]):
        self.preview, self.size = preview, size
        self.holding = True
        self.previews_served = 0

    def resource(self, route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch()
        body = response.json()
        if self.holding and body.get("status") in ("processing", "succeeded"):
            middle = len(body["input"]["alphas"]) // 2
            body = {**body, "status": "processing", "completed_at": None, "output": None, "progress": 0.6,
                    "likeness": None, "preview": {"index": middle, "url": f"{route.request.url}/preview",
                                                  "width": self.size[0], "height": self.size[1]}}
            self.previews_served += 1
        route.fulfill(response=response, json=body)

    def image(self, route: Route) -> None:
        assert route.request.headers.get("authorization", "").startswith("Bearer "), "the preview needs the key"
        route.fulfill(status=200, body=self.preview, headers={"content-type": "image/jpeg"})


def test_the_preview_shows_first_then_the_full_size_photo_takes_its_place(phone: Page, service, photos,
                                                                          shots: Path, tmp_path: Path):
    page = phone
    photo = Image.open(photos["face"]).convert("RGB")
    # A photo that is not square, so the box and the aspect ratio say something: the face cropped to 4:3.
    wide = photo.crop((0, photo.height // 8, photo.width, photo.height // 8 + photo.width * 3 // 4))
    picked = tmp_path / "wide-face.jpg"
    wide.save(picked, quality=92)
    small = ImageOps.posterize(wide.resize((wide.width // 2, wide.height // 2)), 3)  # visibly not the result
    encoded = io.BytesIO()
    small.save(encoded, "JPEG", quality=80)
    fake = PreviewFirst(encoded.getvalue(), small.size)
    page.route(EDIT_RESOURCE, fake.resource)
    page.route(PREVIEW_ROUTE, fake.image)

    open_app(page, service.url)
    page.get_by_label("Choose a photo from the gallery").set_input_files(picked)
    expect(page.locator("#photo-img")).to_be_visible()
    page.get_by_role("button", name="Smiling").click()
    page.get_by_role("button", name="Create edit").click()

    # The preview: the result screen opens on it, marked as a preview; nothing to download yet.
    expect(screen(page, "result")).to_be_visible(timeout=EDIT_TIMEOUT_MS)
    expect(page.locator("#pending-badge")).to_have_text("Preview · full size coming")
    page.wait_for_function("document.getElementById('result-img').complete"
                           " && document.getElementById('result-img').naturalWidth > 0")
    before = page.evaluate(DRAWN)
    assert before["natural"] == list(small.size), before
    expect(page.locator("#strength-value")).to_have_text("3 of 5")
    expect(page.locator(".tick.preview")).to_have_count(1)
    expect(page.locator(".tick.done")).to_have_count(0)
    expect(page.get_by_role("button", name="Download")).to_be_disabled()
    assert "Preview" in page.locator("#result-img").get_attribute("alt")
    assert page.evaluate("getComputedStyle(document.getElementById('result-img')).filter") == "none", \
        "a preview is shown as it is, not dimmed like a strength still missing"
    shot(page, shots, "12-preview")

    # The full size: it replaces the preview in the same box, the same drawn rectangle (same aspect ratio).
    fake.holding = False
    page.wait_for_function(f"document.getElementById('result-img').naturalWidth === {wide.width}",
                           timeout=EDIT_TIMEOUT_MS)
    after = page.evaluate(DRAWN)
    assert after["natural"] == [wide.width, wide.height]
    assert after["figure"] == before["figure"] and after["box"] == before["box"], (before, after)
    assert all(abs(a - b) < 1.0 for a, b in zip(after["drawn"], before["drawn"], strict=True)), (before, after)
    expect(page.locator("#pending-badge")).to_be_hidden()
    expect(page.locator(".tick.done")).to_have_count(5, timeout=EDIT_TIMEOUT_MS)
    expect(page.locator(".tick.preview")).to_have_count(0)
    expect(page.get_by_role("button", name="Download")).to_be_enabled()
    assert fake.previews_served > 0
    shot(page, shots, "13-preview-replaced")
