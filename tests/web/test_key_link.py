"""M5: an install link (`/#key=...`) may give a fresh install its key, but it must not silently replace a
key the app already has: anyone could send such a link and receive the person's next photos. The app
asks first, says what happens, and keeps the current key unless the person agrees."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

STORED = "faceedit.apiKey"


def _open(page: Page, url: str, route: str) -> None:
    """A fresh start of the app on `route` (a fragment-only change would not reload it)."""
    page.goto("about:blank")
    page.goto(f"{url}/{route}")
    page.wait_for_selector("body[data-ready=true]")


def _stored_key(page: Page) -> str | None:
    return page.evaluate(f"localStorage.getItem({STORED!r})")


def test_a_link_asks_before_replacing_the_stored_key(phone: Page, service):
    page = phone
    _open(page, service.url, "#key=fe_mine-0123456789")  # a fresh install takes its first key from the link
    assert _stored_key(page) == "fe_mine-0123456789"
    expect(page.get_by_role("dialog")).to_have_count(0)

    _open(page, service.url, "#key=fe_someone-elses-key")
    dialog = page.get_by_role("dialog", name="Replace this app's key?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("go to the account of whoever made the link")
    expect(dialog).to_contain_text("fe_someone")
    assert "fe_someone" not in page.url  # the key left the address bar (and history) at once
    assert _stored_key(page) == "fe_mine-0123456789"  # nothing replaced while the question is open
    dialog.get_by_role("button", name="Keep my key").click()
    expect(dialog).to_be_hidden()
    assert _stored_key(page) == "fe_mine-0123456789"

    _open(page, service.url, "#key=fe_someone-elses-key")
    page.keyboard.press("Escape")  # dismissing is a no
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert _stored_key(page) == "fe_mine-0123456789"

    _open(page, service.url, "#key=fe_new-key-I-asked-for")
    page.get_by_role("dialog").get_by_role("button", name="Use the new key").click()
    # the dialog's `close` event stores it, a task after the click: wait for it rather than race it
    page.wait_for_function(f"localStorage.getItem({STORED!r}) === 'fe_new-key-I-asked-for'", timeout=5_000)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_label("Access key")).to_have_value("fe_new-key-I-asked-for")

    _open(page, service.url, "#key=fe_new-key-I-asked-for")  # the same key again: nothing to ask
    expect(page.get_by_role("dialog")).to_have_count(0)


def test_a_link_followed_while_the_app_is_open_asks_too(phone: Page, service):
    page = phone
    _open(page, service.url, "#key=fe_mine-0123456789")
    page.evaluate("location.hash = '#key=fe_someone-elses-key'")  # no reload: the hashchange route
    dialog = page.get_by_role("dialog", name="Replace this app's key?")
    expect(dialog).to_be_visible()
    assert "fe_someone" not in page.url
    dialog.get_by_role("button", name="Keep my key").click()
    assert _stored_key(page) == "fe_mine-0123456789"
