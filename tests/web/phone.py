"""One phone, two engines: the journeys in tests/web/test_journeys.py are written once against `Phone` and
run in Chromium (Playwright, Debian's chromium) and in WebKit (Selenium's WebKitGTK driver, Debian's
WebKitWebDriver and MiniBrowser in Xvfb). Where the app is checked, it is checked through the page itself
(JavaScript conditions, the DOM), so both engines are held to the same thing.

A target is a CSS selector, or `xpath=...` (to find a button by its words)."""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from api.processes import free_port
from tests.services.debian import WEBKIT_DRIVER, XVFB, require

PHONE = {"width": 390, "height": 844}  # iPhone 12–15 CSS pixels
WAIT_S = 30.0

# WebKitGTK's own small browser, what WebKitWebDriver drives; it comes with libwebkit2gtk (a driver dependency).
MINIBROWSER_GLOB = "/usr/lib/*/webkit2gtk-4.*/MiniBrowser"

# What the page reports as going wrong: uncaught errors, rejected promises, console.error (installed once the
# app started: WebDriver has no way in before the page's own scripts).
ERROR_COLLECTOR = """(() => {
  window.__errors = [];
  const note = (what) => window.__errors.push(String(what && (what.stack || what.message) || what).slice(0, 500));
  addEventListener("error", (event) => note(event.error || event.message));
  addEventListener("unhandledrejection", (event) => note(event.reason));
  const original = console.error;
  console.error = (...args) => { note(args.map(String).join(" ")); original.apply(console, args); };
  return true;
})()"""
# Records what the app saves and uploads, in either engine (installed after the app started, before the action).
RECORDER = """(() => {
  window.__saved = [];
  HTMLAnchorElement.prototype.click = function () { window.__saved.push({name: this.download, href: this.href}); };
  window.__uploads = [];
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (body) {
    this.addEventListener("loadend", () => window.__uploads.push({status: this.status, body: this.responseText}));
    return send.call(this, body);
  };
  return true;
})()"""


def button(words: str) -> str:
    """The button whose visible words are exactly `words`."""
    return f"xpath=//button[normalize-space()={json.dumps(words)}]"


class Phone(Protocol):
    engine: str

    def open(self, url: str) -> None: ...
    def pick(self, target: str, path: Path) -> None: ...
    def click(self, target: str) -> None: ...
    def press(self, target: str, key: str) -> None: ...
    def type(self, target: str, text: str) -> None: ...
    def js(self, expression: str) -> Any: ...
    def screenshot(self, path: Path) -> None: ...

    @property
    def url(self) -> str: ...


def wait_until(phone: Phone, condition: str, timeout_s: float = WAIT_S, what: str = "") -> Any:
    """Poll the JavaScript `condition` in the page until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = phone.js(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            state = phone.js("({phase: document.body.dataset.phase, alert: document.getElementById('create-alert')"
                             "?.textContent, screen: [...document.querySelectorAll('[id^=screen-]')]"
                             ".filter((s) => !s.hidden).map((s) => s.id), errors: window.__errors})")
            raise AssertionError(f"{phone.engine}: not true after {timeout_s}s: {what or condition}; page: {state}")
        time.sleep(0.1)


def open_app(phone: Phone, url: str) -> None:
    phone.open(url)
    wait_until(phone, "document.body.dataset.ready === 'true'", what="the app started")
    phone.js(ERROR_COLLECTOR)


def page_errors(phone: Phone) -> list[str]:
    """What went wrong in the page since the last `open_app` (see ERROR_COLLECTOR)."""
    return phone.js("window.__errors || []")


class ChromiumPhone:
    """A Playwright page of Debian's Chromium."""

    engine = "chromium"

    def __init__(self, page) -> None:
        self.page = page

    def _locator(self, target: str):
        return self.page.locator(target)

    def open(self, url: str) -> None:
        self.page.goto("about:blank")  # a fragment-only change would not reload the app
        self.page.goto(url)

    def pick(self, target: str, path: Path) -> None:
        self._locator(target).set_input_files(path)

    def click(self, target: str) -> None:
        self._locator(target).click()

    def press(self, target: str, key: str) -> None:
        self._locator(target).press(key)

    def type(self, target: str, text: str) -> None:
        self._locator(target).fill(text)

    def js(self, expression: str) -> Any:
        return self.page.evaluate(f"async () => ({expression})")

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=path, scale="css")

    @property
    def url(self) -> str:
        return self.page.url


class WebKitPhone:
    """Selenium's WebKitGTK driver: WebKitWebDriver starting MiniBrowser (`--dark-mode` when asked)."""

    engine = "webkit"
    KEYS = {"Home": "\ue011", "End": "\ue010", "Escape": "\ue00c", "ArrowRight": "\ue014", "ArrowLeft": "\ue012"}

    def __init__(self, driver) -> None:
        self.driver = driver

    def _element(self, target: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        by, value = (By.XPATH, target[6:]) if target.startswith("xpath=") else (By.CSS_SELECTOR, target)
        return WebDriverWait(self.driver, WAIT_S).until(lambda d: d.find_element(by, value))

    def open(self, url: str) -> None:
        self.driver.get("about:blank")
        self.driver.get(url)

    def pick(self, target: str, path: Path) -> None:
        self._element(target).send_keys(str(path))  # the file input's own route (WebDriver "send keys")

    def click(self, target: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        element = self._element(target)
        WebDriverWait(self.driver, WAIT_S).until(lambda _: element.is_displayed() and element.is_enabled())
        element.click()

    def press(self, target: str, key: str) -> None:
        self._element(target).send_keys(self.KEYS[key])

    def type(self, target: str, text: str) -> None:
        element = self._element(target)
        element.clear()
        element.send_keys(text)

    def js(self, expression: str) -> Any:
        script = ("const done = arguments[arguments.length - 1];"
                  f"(async () => ({expression}))().then((v) => done({{v}}), (e) => done({{e: String(e)}}));")
        answer = self.driver.execute_async_script(script)
        if "e" in answer:
            raise AssertionError(f"webkit: {expression!r} threw {answer['e']}")
        return answer.get("v")

    def screenshot(self, path: Path) -> None:
        Path(path).write_bytes(base64.b64decode(self.driver.get_screenshot_as_base64()))

    @property
    def url(self) -> str:
        return self.driver.current_url


@contextlib.contextmanager
def xvfb() -> Iterator[str]:
    """A private X display (`:N`, picked by Xvfb itself) for the session's WebKit windows."""
    read, write = _pipe()
    process = subprocess.Popen([str(require(XVFB)), "-displayfd", str(write), "-screen", "0", "1280x1024x24",
                                "-nolisten", "tcp"], pass_fds=(write,), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with open(read) as numbers:
            display = numbers.readline().strip()
        assert display, "Xvfb did not report its display"
        yield f":{display}"
    finally:
        process.terminate()
        process.wait(timeout=20)


def _pipe() -> tuple[int, int]:
    import os

    read, write = os.pipe()
    os.set_inheritable(write, True)
    return read, write


def minibrowser() -> Path:
    found = sorted(glob.glob(MINIBROWSER_GLOB))
    assert found, f"no MiniBrowser at {MINIBROWSER_GLOB} (it comes with webkit2gtk-driver's libwebkit2gtk)"
    return Path(found[-1])


@contextlib.contextmanager
def webkit_phone(display: str, log: Path, dark: bool = False) -> Iterator[WebKitPhone]:
    """A WebKit window at phone size on `display`; its driver's log in `log`."""
    from selenium import webdriver
    from selenium.webdriver.webkitgtk.options import Options
    from selenium.webdriver.webkitgtk.service import Service

    options = Options()
    options.binary_location = str(minibrowser())
    options.add_argument("--automation")
    if dark:
        options.add_argument("--dark-mode")
    service = Service(executable_path=str(require(WEBKIT_DRIVER)), port=free_port(), log_output=str(log),
                      env={"DISPLAY": display, "PATH": "/usr/bin:/bin"})  # fmt: skip
    driver = webdriver.WebKitGTK(options=options, service=service)
    try:
        driver.set_script_timeout(WAIT_S)
        _fit_viewport(driver)
        yield WebKitPhone(driver)
    finally:
        driver.quit()


def _fit_viewport(driver) -> None:
    """Size the window so that the page's viewport (not the window) is the phone's."""
    driver.set_window_rect(width=PHONE["width"], height=PHONE["height"])
    for _ in range(3):
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        rect = driver.get_window_rect()
        width = rect["width"] + PHONE["width"] - inner[0]
        height = rect["height"] + PHONE["height"] - inner[1]
        if (width, height) == (rect["width"], rect["height"]):
            return
        driver.set_window_rect(width=width, height=height)
