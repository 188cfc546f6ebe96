"""`make run` (`python -m api dev`) on a fresh folder: SQLite, local storage and an embedded Redis, an edit
worker, a light worker, beat and Flower, all supervised. One dev server serves the module's tests (upload →
edit → download, a hanging webhook receiver, a killed worker, Flower, SIGTERM); a second one is SIGKILLed. Nothing either
started may survive it."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.processes import child_pids, listening_sockets
from tests.conftest import REPO_ROOT, face_jpeg, free_port

_SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "STORAGE_BACKEND", "STORAGE_DIR", "S3_ENDPOINT_URL")
KEY = "dev-test-key"
EDIT = {"neutral": "a face", "target": "a smiling face", "alphas": [-2, 0, 2], "beta": 0.15}


# --- /proc ------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found = []
    for child in child_pids(pid):
        found += [child, *_descendants(child)]
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` or below (the children of a dev server run
    in its folder; its Redis in data/)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if (cwd == directory or directory in cwd.parents) and _alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


# --- one dev server ---------------------------------------------------------------------------------


@dataclass
class DevServer:
    process: subprocess.Popen
    folder: Path
    base: str
    flower: str

    @property
    def log(self) -> str:
        return (self.folder / "dev.log").read_text(errors="replace")

    def started(self) -> list[int]:
        """Every live process this server started: its descendants and whatever runs in its folder."""
        return sorted({*(p for p in _descendants(self.process.pid) if _alive(p)), *_running_in(self.folder)})

    def child(self, marker: str, timeout: float = 60) -> int:
        """The pid of the live child whose command line contains `marker`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [p for p in child_pids(self.process.pid) if marker in _cmdline(p) and _alive(p)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no child running {marker!r}:\n{self.log[-3000:]}"
            time.sleep(0.2)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)

    def stop(self, sig: signal.Signals) -> list[int]:
        """Send `sig`; returns the processes left running afterwards (and kills them)."""
        started = self.started()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the dev server did not stop on {sig.name}:\n{self.log[-3000:]}")
        leftovers = []
        deadline = time.monotonic() + 5  # the kernel's parent-death signals and the stops take a moment
        while time.monotonic() < deadline:
            leftovers = [p for p in {*started, *self.started()} if _alive(p)]
            if not leftovers:
                break
            time.sleep(0.1)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return [f"{pid} {_cmdline(pid)}" for pid in leftovers]


def start_dev_server(dev_bundle: Path, folder: Path, **env: str) -> DevServer:
    """``python -m api dev`` in a fresh folder, once /readyz answers."""
    port, flower_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
    environment.update(PYTHONPATH=str(REPO_ROOT), PORT=str(port), MODEL_DIR=str(dev_bundle), DEV_API_KEY=KEY,
                       METRICS_PORT=str(free_port()), LIVENESS_DIR=str(folder / "liveness"),
                       FLOWER_PORT=str(flower_port), **env)  # fmt: skip
    log = (folder / "dev.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "api", "dev"], cwd=folder, env=environment, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    server = DevServer(process, folder, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{flower_port}")
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, server.log[-3000:]
            assert time.monotonic() < deadline, "dev server not ready"
            try:
                if httpx.get(f"{server.base}/readyz").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.3)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise


@pytest.fixture(scope="module")
def dev_server(dev_bundle, tmp_path_factory) -> Iterator[DevServer]:
    # Webhooks to this machine allowed; a hanging receiver holds a delivery for the longest timeout there is.
    server = start_dev_server(dev_bundle, tmp_path_factory.mktemp("dev"), WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",
                              WEBHOOK_ALLOW_PORTS="1024-65535", WEBHOOK_TIMEOUT_SECONDS="60")  # fmt: skip
    yield server
    server.stop(signal.SIGKILL)


def _edit(client: httpx.Client, image_id: str, **extra) -> str:
    response = client.post("/v1/edits", json={"image": image_id, **EDIT, **extra})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _finish(server: DevServer, client: httpx.Client, edit_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (state := client.get(f"/v1/edits/{edit_id}").json())["status"] in ("starting", "processing"):
        assert time.monotonic() < deadline, f"{edit_id} still {state['status']} after {timeout} s:\n{server.log[-3000:]}"
        time.sleep(0.2)
    return state


# --- the tests --------------------------------------------------------------------------------------


@pytest.mark.services
def test_everything_it_opens_listens_on_loopback(dev_server: DevServer):
    """The workers' metrics exporters listened on 0.0.0.0 while the API and Flower kept to 127.0.0.1: every
    socket `make run` opens is on loopback unless a setting (HOST, METRICS_HOST) says otherwise."""
    workers = [dev_server.child("-Q edits"), dev_server.child("-n io@")]
    deadline = time.monotonic() + 60
    while {pid for _, _, pid in listening_sockets(workers)} != set(workers):  # each worker's exporter is up
        assert time.monotonic() < deadline, f"a worker never listened:\n{dev_server.log[-3000:]}"
        time.sleep(0.3)
    sockets = listening_sockets(dev_server.started())
    assert {port for _, port, _ in sockets} >= {int(dev_server.base.rsplit(":", 1)[1]),
                                                int(dev_server.flower.rsplit(":", 1)[1])}
    wide = [f"{address}:{port} ({_cmdline(pid)[:120]})" for address, port, pid in sockets
            if address not in ("127.0.0.1", "::1")]
    assert wide == [], wide


@pytest.mark.services  # no external services, but worker processes and the dev bundle
def test_edit_end_to_end_with_embedded_defaults(dev_server: DevServer):
    config = httpx.get(f"{dev_server.base}/app-config.json").json()
    assert (config["api_base"], config["dev_api_key"]) == ("/v1", KEY) and config["limits"]["max_changes"] >= 1
    with dev_server.client() as client:
        image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
        edit_id = _edit(client, image["id"])
        state = _finish(dev_server, client, edit_id)
        assert state["status"] == "succeeded", state
        for url in state["output"]:
            assert url.startswith(f"{dev_server.base}/v1/edits/{edit_id}/outputs/")
            assert httpx.get(url).status_code == 401  # local-storage URLs need the key
            assert client.get(url).headers["content-type"] == "image/jpeg"
    assert (dev_server.folder / "data" / "faceedit.db").is_file()


class HangingReceiver:
    """A webhook receiver that accepts connections and never answers (nor closes)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.mark.services
def test_edits_flow_while_a_webhook_receiver_hangs(dev_server: DevServer):
    """Deliveries run on their own worker: a receiver that never answers holds a delivery thread, not edits."""
    receiver = HangingReceiver()
    try:
        with dev_server.client() as client:
            image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
            hooked = _edit(client, image["id"], webhook=receiver.url)
            deadline = time.monotonic() + 60
            while not receiver.connections:  # a delivery is now stuck on the receiver
                assert time.monotonic() < deadline, f"no webhook delivery reached the receiver:\n{dev_server.log[-3000:]}"
                time.sleep(0.1)
            submitted = time.monotonic()
            plain = _finish(dev_server, client, _edit(client, image["id"]), timeout=120)
            waited = time.monotonic() - submitted
            assert plain["status"] == "succeeded", plain
            # One edit takes seconds on the dev bundle; behind the stuck delivery it would wait ≥ 60 s.
            assert waited < 40, f"an edit waited {waited:.0f} s behind a hanging webhook receiver"
            assert _finish(dev_server, client, hooked, timeout=60)["status"] == "succeeded"
    finally:
        receiver.close()


@pytest.mark.services
def test_a_killed_edit_worker_is_restarted(dev_server: DevServer):
    old = dev_server.child("-Q edits")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "edit worker exited with code -9; restarting in 2 s (restart 1)" not in dev_server.log:
        assert dev_server.process.poll() is None, f"the dev server died with its worker:\n{dev_server.log[-3000:]}"
        assert time.monotonic() < deadline, f"no restart announced:\n{dev_server.log[-3000:]}"
        time.sleep(0.2)
    new = dev_server.child("-Q edits")
    assert new != old
    with dev_server.client() as client:
        image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
        assert _finish(dev_server, client, _edit(client, image["id"]))["status"] == "succeeded"


@pytest.mark.services
def test_flower_shows_the_workers_and_a_finished_edit_behind_the_dev_key(dev_server: DevServer):
    """The operators' view: Flower on the embedded broker, announced in the banner, login `dev` + the API key."""
    assert f"Flower: {dev_server.flower}   login: dev / the API key" in dev_server.log
    for auth in (None, ("dev", "wrong"), ("admin", KEY)):
        assert httpx.get(f"{dev_server.flower}/api/workers", auth=auth).status_code == 401
    assert httpx.get(f"{dev_server.flower}/", auth=None).status_code == 401
    with dev_server.client() as client:
        image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
        edit_id = _edit(client, image["id"])
        assert _finish(dev_server, client, edit_id)["status"] == "succeeded"
    flower = httpx.Client(base_url=dev_server.flower, auth=("dev", KEY), timeout=30)
    deadline, task, workers = time.monotonic() + 60, {}, {}
    while time.monotonic() < deadline:  # Flower learns of both through the broker, a moment later
        workers = flower.get("/api/workers", params={"refresh": 1}).json()
        answer = flower.get(f"/api/task/info/{edit_id}")  # the Celery task id is the edit id
        task = answer.json() if answer.status_code == 200 else {}
        if task.get("state") == "SUCCESS" and any(name.startswith("edits@") for name in workers):
            break
        time.sleep(0.5)
    assert task.get("state") == "SUCCESS" and task.get("name") == "worker.tasks.process_edit", task
    assert task.get("worker", "").startswith("edits@"), task
    assert {name.split("@")[0] for name in workers} >= {"edits", "io"}, sorted(workers)
    page = flower.get("/tasks")
    assert page.status_code == 200 and "Flower" in page.text


def _basic(raw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(raw)


# Flower 2.2.0 compared credentials as str: any non-ASCII one was a 500 (issue 23). None reaches it now.
HOSTILE_CREDENTIALS = [
    _basic("dev:été".encode()), _basic("été:été".encode()), _basic(f"dev:{KEY}é".encode()),
    _basic(b"dev:" + KEY.encode("latin-1") + b"\xff"), _basic(b"\xff\xfe:\xff"), _basic("dev:été".encode("latin-1")),
    b"", b"Basic", b"Basic =", b"Basic ====", _basic(b":"), _basic(b"dev"), _basic(b"dev:"),
    b"Basic !!!not-base64", b"Basic " + base64.b64encode(b"dev:" + KEY.encode())[:-3], b"Bearer " + KEY.encode(),
    b"basic " + base64.b64encode(b"dev:wrong"), _basic(b"dev:" + b"x" * 8000), _basic(b"dev:" + b"\xc3\xa9" * 4000),
]  # fmt: skip


@pytest.mark.services
@pytest.mark.parametrize("authorization", HOSTILE_CREDENTIALS, ids=range(len(HOSTILE_CREDENTIALS)))
def test_no_credential_makes_flower_fail(dev_server: DevServer, authorization):
    for path in ("/api/workers", "/api/tasks", "/", "/healthcheck", "/metrics"):
        answer = httpx.get(f"{dev_server.flower}{path}", headers={"Authorization": authorization}, timeout=30)
        assert answer.status_code == 401, (path, answer.status_code, answer.text[:300])


@pytest.mark.services
def test_a_huge_credential_is_refused_not_a_crash(dev_server: DevServer):
    answer = httpx.get(f"{dev_server.flower}/api/workers", headers={"Authorization": _basic(b"dev:" + b"y" * 60_000)})
    assert 400 <= answer.status_code < 500, answer.status_code


@pytest.mark.services
def test_sigterm_stops_everything_it_started(dev_server: DevServer):
    """What a process manager (docker stop, systemd) sends: a clean stop, exit 0, nothing left."""
    names = {"redis-server", "-Q edits", "-Q io", "beat", "flower"}
    running = " | ".join(_cmdline(p) for p in dev_server.started())
    assert all(name in running for name in names), f"not all children running: {running}"
    leftovers = dev_server.stop(signal.SIGTERM)
    assert leftovers == [], "SIGTERM left processes running"
    assert dev_server.process.returncode == 0, dev_server.log[-3000:]


@pytest.mark.services
def test_sigkill_of_the_dev_server_leaves_nothing(dev_bundle, tmp_path):
    """The kernel takes the children along (parent-death signal): no orphaned worker, beat or Redis."""
    server = start_dev_server(dev_bundle, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len([p for p in server.started() if "celery" in _cmdline(p)]) < 2:  # a worker and beat, at least
            assert time.monotonic() < deadline, f"worker and beat never both started:\n{server.log[-3000:]}"
            time.sleep(0.2)
    finally:
        leftovers = server.stop(signal.SIGKILL)
    assert leftovers == [], "SIGKILL of the dev server left processes running"


def test_flower_is_skipped_when_its_port_is_taken_and_never_gets_the_key_on_its_command_line(capsys):
    from api.dev import _flower
    from common.settings import Settings

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert _flower(Settings(dev_api_key=KEY, flower_port=port)) == []
    assert f"Flower not started: 127.0.0.1:{port} is in use" in capsys.readouterr().err
    assert _flower(Settings(dev_api_key=KEY, flower_port=0)) == []
    flower, gate = _flower(Settings(dev_api_key=KEY, flower_port=free_port()))
    # The operators' login goes to the gate only; Flower gets a random password the gate alone holds.
    assert gate.env["FLOWER_GATE_AUTH"] == f"dev:{KEY}" and "FLOWER_GATE_AUTH" not in flower.env
    assert flower.env["FLOWER_BASIC_AUTH"] == gate.env["FLOWER_BASIC_AUTH"] and KEY not in flower.env["FLOWER_BASIC_AUTH"]
    assert "--address=127.0.0.1" in flower.argv and gate.argv[gate.argv.index("--host") + 1] == "127.0.0.1"
    assert not any(KEY in arg for spec in (flower, gate) for arg in spec.argv)
