"""Group photos, several changes, likeness and results as they come (#17, #16.1): the phone app in Chromium
at 390×844 against the real service (API + worker, development bundle)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.web.test_app import EDIT_TIMEOUT_MS, open_app, screen, shot

pytestmark = pytest.mark.browser

DETECT_TIMEOUT_MS = 120_000  # the worker detects after the upload; on a cold worker its models load first
EDIT_RESOURCE = re.compile(r"/v1/edits/[^/?]+$")
NAMELESS_CONTROLS = """() => [...document.querySelectorAll("#screen-create button, #screen-create input")]
    .filter((el) => el.offsetParent)
    .filter((el) => !(el.getAttribute("aria-label") || (el.labels && el.labels.length) || el.textContent.trim()))
    .map((el) => el.outerHTML.slice(0, 80))"""


class Holdback:
    """Serves the real edit resource, except that while `holding` an edit with two or more strengths done is
    shown with only the first of them (the rest null, status processing): the shape the service serves
    between strengths. On a busy machine a real edit can finish all strengths between two polls; this makes
    "the first strength shows before the last is rendered" deterministic. Records what the page was served."""

    def __init__(self) -> None:
        self.holding = True
        self.served: list[dict] = []

    def __call__(self, route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch()
        body = response.json()
        done = [i for i, url in enumerate(body.get("output") or []) if url]
        if self.holding and len(done) >= 2:
            middle = len(body["output"]) // 2
            keep = middle if middle in done else done[0]
            body = {**body, "status": "processing", "completed_at": None,
                    "output": [url if i == keep else None for i, url in enumerate(body["output"])]}
            if body.get("likeness"):
                body["likeness"] = [v if i == keep else None for i, v in enumerate(body["likeness"])]
        self.served.append(body)
        route.fulfill(response=response, json=body)


def test_group_photo_changes_likeness_results_as_they_come(phone: Page, service, group_photo: Path,
                                                            shots: Path):
    page = phone
    api = service.client()
    posts: list[dict] = []
    page.on("request", lambda r: posts.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/v1/edits") else None)
    holdback = Holdback()
    page.route(EDIT_RESOURCE, holdback)

    # Two people: the server finds both; the largest is chosen, as the API's default would.
    open_app(page, service.url)
    page.get_by_label("Choose a photo from the gallery").set_input_files(group_photo)
    faces = [page.get_by_role("button", name=f"Face {n}", exact=True) for n in (1, 2)]
    expect(faces[1]).to_be_visible(timeout=DETECT_TIMEOUT_MS)
    expect(page.locator(".face-box")).to_have_count(2)
    expect(page.locator("#faces-hint")).to_have_text("2 faces found. Tap the ones to change.")
    expect(faces[0]).to_have_attribute("aria-pressed", "true")
    expect(faces[1]).to_have_attribute("aria-pressed", "false")
    boxes = [face.bounding_box() for face in faces]
    photo = page.locator("#photo-img").bounding_box()
    for box in boxes:  # over the picture, not the bars around it
        assert photo["x"] <= box["x"] and box["x"] + box["width"] <= photo["x"] + photo["width"] + 1, box
    assert abs(boxes[0]["x"] - boxes[1]["x"]) > 100, "the two people stand side by side"

    # Only the second person; two changes, the second at half weight.
    faces[1].click()
    faces[0].click()
    expect(faces[0]).to_have_attribute("aria-pressed", "false")
    page.get_by_role("button", name="Smiling").click()
    shot(page, shots, "10-faces")
    page.get_by_role("button", name="Add another change").click()
    expect(page.get_by_label("Change 2", exact=True)).to_be_focused()
    page.get_by_role("button", name="Blue hair").click()  # presets fill the text field in use
    expect(page.get_by_label("Change 2", exact=True)).to_have_value("a face with blue hair")
    expect(page.get_by_label("What it should become")).to_have_value("a smiling face")
    page.get_by_label("Weight of change 2").fill("0.5")
    expect(page.locator("#changes .weight-value")).to_have_text("0.5×")
    assert not page.evaluate(NAMELESS_CONTROLS)
    shot(page, shots, "11-changes")
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 15, 19)"
    page.locator("#photo-card").scroll_into_view_if_needed()
    shot(page, shots, "10-faces-dark")
    page.emulate_media(color_scheme="light")
    page.get_by_role("button", name="Create edit").click()

    # The first finished strength shows while the others are still null in the edit resource (the result screen
    # may open a moment earlier, on the real preview of that strength: tests/web/test_preview.py).
    expect(screen(page, "result")).to_be_visible(timeout=EDIT_TIMEOUT_MS)
    expect(page.locator(".tick.done")).to_have_count(1, timeout=EDIT_TIMEOUT_MS)
    assert any(None in (edit["output"] or []) for edit in holdback.served), "never served a partial edit"
    assert None in holdback.served[-1]["output"]
    expect(page.locator("#result-img")).to_have_attribute("src", re.compile("^blob:"))
    expect(page.locator("#arriving")).to_contain_text("4 more strengths on the way")
    expect(page.locator(".tick.done")).to_have_count(1)
    expect(page.locator(".tick.pending")).to_have_count(4)
    expect(page.locator("#strength-value")).to_have_text("3 of 5")
    expect(page.locator("#result-title")).to_have_text("a face → a smiling face + a face with blue hair (0.5×)")
    edit_id = page.url.rsplit("/", 1)[1]
    assert posts[0]["faces"] == [1]
    assert posts[0]["changes"] == [{"neutral": "a face", "target": "a smiling face", "weight": 1},
                                   {"neutral": "a face", "target": "a face with blue hair", "weight": 0.5}]
    assert "target" not in posts[0]
    page.get_by_label(re.compile("^Strength")).fill("0")  # not rendered yet: marked, last picture dimmed
    expect(page.locator("#pending-badge")).to_be_visible()
    expect(page.get_by_role("button", name="Download")).to_be_disabled()
    page.get_by_label(re.compile("^Strength")).fill("2")
    shot(page, shots, "12-first-strength")

    # The rest arrive and fill the slider; likeness (the dev bundle has an identity model) under it.
    holdback.holding = False
    expect(page.locator(".tick.done")).to_have_count(5, timeout=EDIT_TIMEOUT_MS)
    expect(page.locator("#arriving-text")).to_have_text("All 5 strengths ready.")
    edit = api.get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "succeeded" and edit["input"]["faces"] == [1]
    assert [m["index"] for m in edit["metrics"]["faces"]] == [1]
    assert len(edit["likeness"]) == 5 and all(isinstance(v, float) for v in edit["likeness"])
    percent = round(max(0.0, edit["likeness"][2]) * 100)
    expect(page.locator("#likeness")).to_have_text(re.compile(rf"Looks like you: {percent} %"))
    page.get_by_label(re.compile("^Strength")).fill("4")
    percent = round(max(0.0, edit["likeness"][4]) * 100)
    expect(page.locator("#likeness")).to_have_text(re.compile(rf"Looks like you: {percent} %"))
    shot(page, shots, "13-likeness")

    # Same photo, everyone, one change again: the simple form, faces "all". Canceled: the point is the request.
    page.get_by_role("button", name="New text, same photo").click()
    expect(faces[1]).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="Everyone").click()
    expect(faces[0]).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="Remove change 2").click()
    expect(page.get_by_label("Change 2", exact=True)).to_have_count(0)
    page.get_by_role("button", name="Create edit").click()
    expect(screen(page, "progress")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#create-alert")).to_have_attribute("data-code", "canceled", timeout=30_000)
    assert posts[1]["faces"] == "all"
    assert (posts[1]["neutral"], posts[1]["target"]) == ("a face", "a smiling face") and "changes" not in posts[1]


def test_face_choice_errors_read_as_such(phone: Page, service):
    """A refused face choice says so and leads back to the faces; a text that merely mentions a face does not."""
    page = phone
    open_app(page, service.url)
    words = page.evaluate("""async () => {
        const { describeError } = await import("/messages.js");
        return [
          describeError({ code: "invalid_parameter",
                          message: "face index 3 is out of range: the photo has 2 faces (valid indices 0..1)" }),
          describeError({ code: "invalid_parameter", message: "the photo has 12 faces and an edit changes at most 8" }),
          describeError({ code: "validation_error", message: "changes.1.target: 'a face with a hat' is too long" }),
          describeError({ code: "no_face", message: "no face was found in the photo" }),
        ];
    }""")
    assert [w["title"] for w in words[:2]] == ["Choose the faces again"] * 2
    assert words[0]["actionLabel"] == "Choose the faces" and "valid indices 0..1" in words[0]["text"]
    assert words[2]["title"] == "Check the texts"
    assert words[3]["title"] == "No face found"
