"""The app's main journeys, written once (tests/web/phone.py) and run in Chromium and in WebKit, Safari's
engine: photo → texts → first strength → slider → download, history and settings; error screens; the
`#key=` link; a group photo's face choice; EXIF orientation and HEIC on the way up; dark mode and the
service worker. WebKit's screenshots go beside Chromium's as `webkit-*.png` (WEB_SCREENSHOTS=docs/screenshots).

Chromium's own checks that WebKit's driver cannot make (installability over CDP, a throttled uplink,
request interception) stay in test_app.py and test_group_photos.py."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.services.debian import WEBKIT_DRIVER, require
from tests.web.phone import (
    RECORDER,
    ChromiumPhone,
    Phone,
    button,
    open_app,
    page_errors,
    wait_until,
    webkit_phone,
    xvfb,
)

pytestmark = pytest.mark.browser

ENGINES = ["chromium", "webkit"]
EDIT_TIMEOUT_S = 240  # a dev-bundle edit on a busy 2-core CI machine, model loading included
DETECT_TIMEOUT_S = 120
GALLERY = "#file-gallery"
ALERT = "#create-alert"


@pytest.fixture(scope="session")
def webkit_display() -> Iterator[str]:
    """Xvfb's display for WebKit's windows, once WebKitWebDriver is known to be there (else the failure says how)."""
    require(WEBKIT_DRIVER)
    with xvfb() as display:
        yield display


@pytest.fixture(params=ENGINES)
def make_phone(request, tmp_path: Path) -> Iterator[Callable[..., Phone]]:
    """Make phones of the parametrized engine: `make_phone(dark=False)`."""
    engine, made = request.param, []
    # Set up before this fixture, so torn down after it: the pages are still open for the error check below.
    new_page = request.getfixturevalue("new_phone") if engine == "chromium" else None
    display = request.getfixturevalue("webkit_display") if engine == "webkit" else None
    with contextlib.ExitStack() as stack:

        def make(dark: bool = False) -> Phone:
            if new_page is not None:
                phone = ChromiumPhone(new_page(color_scheme="dark" if dark else "light"))
            else:
                phone = stack.enter_context(webkit_phone(display, tmp_path / "webkit-driver.log", dark=dark))
            made.append(phone)
            return phone

        yield make
        errors = {phone.engine: page_errors(phone) for phone in made}
        assert not any(errors.values()), f"the page reported errors: {errors}"


def shot(phone: Phone, folder: Path, name: str) -> None:
    """WebKit's screenshots only: Chromium's come from test_app.py and test_group_photos.py."""
    width = phone.js("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{phone.engine}: horizontal scroll, content {width[0]}px in {width[1]}px"
    if phone.engine == "webkit":
        phone.screenshot(folder / f"webkit-{name}.png")


def visible(target_js: str) -> str:
    return f"(() => {{ const el = {target_js}; return Boolean(el && el.offsetParent !== null); }})()"


def by_id(element_id: str) -> str:
    return f"document.getElementById({element_id!r})"


def alert_code(code: str) -> str:
    return f"document.getElementById('create-alert').dataset.code === {code!r}"


def test_edit_journey(make_phone, service, photos, shots: Path) -> None:
    """Photo → texts → the first strength → slider → download; then history and settings."""
    phone = make_phone()
    open_app(phone, f"{service.url}/")
    wait_until(phone, visible(by_id("screen-create")))
    assert phone.js("document.getElementById('submit').disabled"), "nothing to submit before a photo"
    shot(phone, shots, "1-start")

    phone.pick(GALLERY, photos["face"])
    wait_until(phone, f"{visible(by_id('photo-img'))} && {by_id('photo-img')}.naturalWidth > 0", what="preview")
    phone.click(button("Smiling"))
    assert phone.js("[...document.querySelectorAll('#edit-form input[type=text], #edit-form textarea')]"
                    ".map((el) => el.value)")[:2] == ["a face", "a smiling face"]  # fmt: skip
    shot(phone, shots, "2-photo")
    phone.js("document.getElementById('keep-likeness').scrollIntoView({block: 'center'})")  # above the dock
    phone.click("#keep-likeness")  # the test deployment's default is e4e: this edit asks for SFE
    phone.click(button("Create edit"))
    wait_until(phone, visible(by_id("screen-progress")) + " || " + visible(by_id("screen-result")))

    # The first strength shows as soon as it is out; then the others arrive and the slider is local.
    wait_until(phone, visible(by_id("screen-result")), EDIT_TIMEOUT_S, "the first strength")
    count = int(phone.js("document.getElementById('strength').max")) + 1
    assert count == 5, "one submit makes all five strengths"
    wait_until(phone, f"document.querySelectorAll('.tick.done').length === {count}", EDIT_TIMEOUT_S, "every strength")
    assert phone.js(visible(by_id("screen-result"))), f"{phone.engine} left the result: {page_errors(phone)}"
    assert phone.js("document.getElementById('made-with').dataset.inversion") == "sfe", "the switch reached the edit"
    shot(phone, shots, "4-result")
    sources = {}
    for key, index in (("Home", 0), ("End", count - 1)):
        phone.press("#strength", key)  # the keyboard route into <input type=range>: its input event
        wait_until(phone, f"document.getElementById('strength-value').textContent === '{index + 1} of {count}'")
        wait_until(phone, f"{by_id('result-img')}.complete && {by_id('result-img')}.naturalWidth > 0")
        sources[index] = phone.js(by_id("result-img") + ".src")
    assert sources[0] != sources[count - 1], "the slider must show another image"

    phone.js(RECORDER)
    phone.click(button("Download"))
    saved = wait_until(phone, "window.__saved.length && window.__saved", what="a download")[0]
    assert saved["name"] == f"faceedit-a-smiling-face-{count}.jpg", saved
    head = phone.js(f"fetch({saved['href']!r}).then((r) => r.arrayBuffer())"
                    ".then((b) => Array.from(new Uint8Array(b.slice(0, 3))))")  # fmt: skip
    assert head == [0xFF, 0xD8, 0xFF], "the download is the JPEG shown"

    phone.click("a[href='#history']")
    wait_until(phone, "document.querySelectorAll('.history-item').length === 1")
    assert "Done" in phone.js("document.querySelector('.history-item').textContent")
    shot(phone, shots, "7-history")
    phone.click("a[href='#settings']")
    wait_until(phone, "document.getElementById('key-status').textContent.includes('development key')")
    shot(phone, shots, "9-settings")


def test_error_screens_and_the_key_link(make_phone, service, photos, shots: Path) -> None:
    """The worker's no_face error in words with its next step; a key from an install link, a wrong one
    answered by the API as 401 in words; a second link asks before it replaces the key."""
    phone = make_phone()
    open_app(phone, f"{service.url}/")
    phone.pick(GALLERY, photos["landscape"])
    phone.click(button("Old"))
    phone.click(button("Create edit"))
    wait_until(phone, alert_code("no_face"), EDIT_TIMEOUT_S, "the no_face error")
    assert "No face found" in phone.js(by_id("create-alert") + ".textContent")
    wait_until(phone, visible("[...document.querySelectorAll('#create-alert button')]"
                              ".find((b) => b.textContent.trim() === 'Choose another photo')"))  # fmt: skip
    shot(phone, shots, "6-error")

    open_app(phone, f"{service.url}/#key=fe_not-a-real-key")
    assert "fe_" not in phone.url, "the key leaves the address bar at once"
    phone.click("a[href='#settings']")
    wait_until(phone, "document.getElementById('key-status').textContent.includes('own key')")
    phone.click("a[aria-label='Face Edit, new edit']")
    phone.pick(GALLERY, photos["face"])
    phone.click(button("Bald"))
    phone.click(button("Create edit"))
    wait_until(phone, alert_code("unauthorized"), what="401 in words")
    assert "Access key needed" in phone.js(by_id("create-alert") + ".textContent")

    open_app(phone, f"{service.url}/#key=fe_someone-elses-key")
    # (a modal <dialog> is in the top layer: fixed, so no offsetParent even when shown)
    wait_until(phone, "document.querySelector('dialog[open]')?.textContent.includes('Replace this app')",
               what="the replace-key question")
    assert "fe_someone" not in phone.url
    phone.click(button("Keep my key"))
    wait_until(phone, "!document.querySelector('dialog[open]')")
    assert phone.js("localStorage.getItem('faceedit.apiKey')") == "fe_not-a-real-key"


def test_group_photo_face_choice(make_phone, service, group_photo: Path, shots: Path) -> None:
    phone = make_phone()
    open_app(phone, f"{service.url}/")
    phone.pick(GALLERY, group_photo)
    wait_until(phone, "document.querySelectorAll('.face-box').length === 2", DETECT_TIMEOUT_S, "two faces")
    assert phone.js(by_id("faces-hint") + ".textContent") == "2 faces found. Tap the ones to change."
    pressed = "[...document.querySelectorAll('.face-box')].map((b) => b.getAttribute('aria-pressed'))"
    assert phone.js(pressed) == ["true", "false"], "the largest face is chosen, as the API's default"
    phone.click(".face-box[aria-label='Face 2']")
    phone.click(".face-box[aria-label='Face 1']")
    wait_until(phone, f"JSON.stringify({pressed}) === '[\"false\",\"true\"]'", what="only the second face")
    shot(phone, shots, "10-faces")


def test_orientation_and_heic_on_the_way_up(make_phone, service, photos, tmp_path: Path) -> None:
    """A big photo stored sideways with EXIF orientation 6 goes up upright (createImageBitmap's
    `imageOrientation: "from-image"`, or the <img> fallback); a HEIC goes up as the engine can: as is
    where it cannot decode it (the server converts), else re-encoded as JPEG."""
    sideways = tmp_path / "sideways.jpg"
    wide = Image.open(photos["face"]).convert("RGB").resize((3000, 2000))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: a portrait photo from a phone held upright
    wide.save(sideways, quality=90, exif=exif.tobytes())
    phone = make_phone()
    open_app(phone, f"{service.url}/")
    phone.js(RECORDER)
    phone.pick("#file-camera", sideways)  # "Take a photo": <input capture>, as a phone camera saves it
    upload = wait_until(phone, "window.__uploads.length && JSON.parse(window.__uploads[0].body)", 60, "the upload")
    assert upload["height"] > upload["width"], f"{phone.engine} uploaded it sideways: {upload}"
    assert max(upload["width"], upload["height"]) == 2048, upload

    open_app(phone, f"{service.url}/")
    phone.js(RECORDER)
    phone.pick(GALLERY, photos["heic"])
    upload = wait_until(phone, "window.__uploads.length && JSON.parse(window.__uploads[0].body)", 60, "the upload")
    decodes = phone.js("document.getElementById('photo-img').naturalWidth > 0")
    if decodes:  # Safari on iOS: shown, and sent as a JPEG
        assert upload["format"] == "jpeg", upload
    else:  # sent untouched, a placeholder says the server converts it
        assert upload["format"] == "heif" and upload["bytes"] == photos["heic"].stat().st_size, upload
        wait_until(phone, "document.getElementById('photo-placeholder').textContent.includes('HEIC')")


def test_dark_mode_and_service_worker(make_phone, service, photos, shots: Path) -> None:
    phone = make_phone(dark=True)
    open_app(phone, f"{service.url}/")
    assert phone.js("matchMedia('(prefers-color-scheme: dark)').matches"), f"{phone.engine} is not in dark mode"
    assert phone.js("getComputedStyle(document.body).backgroundColor") == "rgb(15, 15, 19)"
    phone.pick(GALLERY, photos["face"])
    phone.click(button("Blue hair"))
    wait_until(phone, f"{visible(by_id('photo-img'))} && {by_id('photo-img')}.naturalWidth > 0", what="preview")
    phone.js(by_id("photo-img") + ".decode().then(() => true)")
    shot(phone, shots, "2-photo-dark")
    scope = phone.js("navigator.serviceWorker.ready.then((r) => r.active && r.scope)")
    assert scope == f"{service.url}/", scope

