"""Browser-test fixtures: the real service (`python -m api dev`, dev bundle) and Debian's Chromium
(found, or installed once where we are root: tests/services/browser.py; missing, the tests fail naming
the command that gets it).

`FACEEDIT_WEB_URL=http://host:port` points the tests at a service that is already running instead (its
`/app-config.json` must hand out a development key). `WEB_SCREENSHOTS=docs/screenshots` keeps the phone-size
screenshots the journey test takes (otherwise they go to a temporary folder).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pillow_heif
import pytest
from PIL import Image
from playwright.sync_api import Page

from api.processes import die_with_parent, free_port, kill_group
from tests.services.browser import require_chromium

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}  # iPhone 12–15 CSS pixels
GOLDEN = Path(os.environ.get("GOLDEN_DIR", REPO.parent / "shared" / "golden"))
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class Service:
    url: str
    key: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)


def _wait_ready(url: str, process: subprocess.Popen | None, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"`python -m api dev` exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service at {url} was not ready after {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`make run`'s launcher (API + worker, SQLite, local storage, embedded Redis) with the development
    bundle, on a free port, its data in a temp folder."""
    external = os.environ.get("FACEEDIT_WEB_URL")
    if external:
        url = external.rstrip("/")
        _wait_ready(url, None, Path(os.devnull))
        yield Service(url, httpx.get(f"{url}/app-config.json").json()["dev_api_key"])
        return
    bundle = request.getfixturevalue("dev_bundle")  # tests/conftest.py: written once per session
    data = tmp_path_factory.mktemp("service")
    port = free_port()
    env = {
        key: value for key, value in os.environ.items()
        if key not in ("REDIS_URL", "DEV_API_KEY", "STORAGE_BACKEND")  # the launcher's embedded defaults
    }
    env.update({
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{data / 'faceedit.db'}",
        "STORAGE_DIR": str(data / "storage"),
        "MODEL_DIR": str(bundle),
        "DEFAULT_INVERSION": "e4e",  # as every test deployment (tests/services/settings.py); a journey asks for SFE
    })
    log = data / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "api", "dev"], cwd=data, env={**env, "PYTHONPATH": str(REPO)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),  # the launcher stops its worker and Redis itself
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        key = httpx.get(f"{url}/app-config.json").json()["dev_api_key"]
        assert key, "`python -m api dev` must hand the web app a development key"
        yield Service(url, key)
    finally:
        process.terminate()  # the launcher stops its worker and Redis itself...
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        # ...and whatever of its session is left (a worker in warm shutdown) must not outlive the tests.
        kill_group(process.pid)
        process.wait()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium binary (Playwright drives it; never `playwright install`)."""
    return require_chromium()


# Module scope, not session: while sync_playwright is open an event loop runs in the main thread, and every later
# test that calls asyncio.run (the webhook sender does) would fail "cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser_type(chromium):
    """Playwright's Chromium driver, pointed at Debian's chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright.chromium


@pytest.fixture(scope="module")
def browser(browser_type, chromium):
    browser = browser_type.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def new_phone(browser):
    """Make fresh phone-sized pages (own storage, touch); uncaught errors in them fail the test."""
    contexts, errors = [], []

    def make(**options) -> Page:
        context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
                                      **options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def phone(new_phone) -> Page:
    return new_phone()


@pytest.fixture
def profile_phone(browser_type, chromium, tmp_path: Path) -> Iterator[Page]:
    """A phone page in a persistent profile: Chromium never offers to install from an incognito context."""
    context = browser_type.launch_persistent_context(tmp_path / "profile", viewport=PHONE, is_mobile=True,
                                                     executable_path=str(chromium), args=CHROMIUM_ARGS)
    yield context.pages[0] if context.pages else context.new_page()
    context.close()


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Test photos: a real face (the golden fixture), a picture without a face, a huge JPEG, a HEIC."""
    face = GOLDEN / "face_input.png"
    if not face.exists():
        pytest.skip(f"{face} is missing (the shared golden fixtures; set GOLDEN=...)")
    folder = tmp_path_factory.mktemp("photos")
    # No face: sky over a meadow, big enough to pass the size checks.
    landscape = Image.new("RGB", (640, 480), (120, 170, 230))
    landscape.paste((70, 140, 60), (0, 300, 640, 480))
    landscape.save(folder / "landscape.jpg", quality=90)
    # Huge: the face upscaled to 4096 × 4096 (16 MP, like a phone camera), re-encoded at high quality.
    big = io.BytesIO()
    Image.open(face).convert("RGB").resize((4096, 4096), Image.Resampling.BICUBIC).save(big, "JPEG", quality=95)
    (folder / "huge.jpg").write_bytes(big.getvalue())
    # HEIC, as iPhones save photos: Chromium can't decode it, so the app must upload it untouched.
    pillow_heif.register_heif_opener()
    Image.open(face).convert("RGB").save(folder / "face.heic", "HEIF", quality=80)
    return {"face": face, "landscape": folder / "landscape.jpg", "huge": folder / "huge.jpg",
            "heic": folder / "face.heic"}


@pytest.fixture(scope="session")
def group_photo(photos, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two people side by side: the golden face and the astronaut sample, each 512 px high."""
    height = 512
    people = [Image.open(path).convert("RGB") for path in (photos["face"], REPO / "pipeline/samples/astronaut.jpg")]
    people = [p.resize((round(p.width * height / p.height), height), Image.Resampling.LANCZOS) for p in people]
    group = Image.new("RGB", (sum(p.width for p in people), height))
    group.paste(people[0], (0, 0))
    group.paste(people[1], (people[0].width, 0))
    path = tmp_path_factory.mktemp("group") / "two-people.jpg"
    group.save(path, quality=90)
    return path


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WEB_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
