"""api/flower_gate.py: the login in front of Flower refuses every credential but one, whatever its bytes,
and forwards the one with Flower's private credentials in its place (Flower itself is the dev server's
test: tests/api/test_dev_server.py)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading

import httpx
import pytest

from api.flower_gate import HEALTH_PATH, MAX_CREDENTIAL_BYTES, Credentials, FlowerGate, presented

LOGIN = Credentials("dev", "k3y-ünïcode")
INNER = Credentials("gate", "inner-secret")


def _basic(raw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(raw)


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Stands in for Flower: answers with the Authorization it was sent."""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = (self.headers.get("Authorization") or "").encode() + b"|" + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture(scope="module")
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _get(gate: FlowerGate, path: str, authorization: bytes | None) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=gate)  # header bytes reach the gate exactly as sent
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            headers = {"Authorization": authorization} if authorization is not None else {}
            return await client.get(path, headers=headers)

    return asyncio.run(send())


@pytest.mark.parametrize("authorization", [
    None, b"", b"Basic", b"Basic ", _basic(b""), _basic(b":"), _basic(b"dev"), _basic(b"dev:"),
    _basic("dev:été".encode()), _basic("dev:été".encode("latin-1")), _basic(b"\xff\xfe:\xff"),
    _basic(LOGIN.basic() + b"x"), _basic(LOGIN.basic()[:-1]), _basic("dev:k3y-ünïcode".encode("latin-1")),
    b"Basic !!!", b"Basic " + base64.b64encode(LOGIN.basic())[:-2], b"Bearer " + LOGIN.password.encode(),
    b"\xff\xfe", b"Basic \xc3\xa9", _basic(LOGIN.basic() + b" " * MAX_CREDENTIAL_BYTES),
    b"Basic " + b"A" * 100_000,
])  # fmt: skip
def test_every_other_credential_is_a_401(upstream, authorization):
    answer = _get(FlowerGate(upstream, LOGIN, INNER), "/api/workers", authorization)
    assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
    assert answer.headers["www-authenticate"].startswith("Basic ")


def test_the_login_passes_with_flowers_private_credentials_in_its_place(upstream):
    answer = _get(FlowerGate(upstream, LOGIN, INNER), "/api/task/info/x?refresh=1", _basic(LOGIN.basic()))
    assert answer.status_code == 200
    assert answer.content == _basic(INNER.basic()) + b"|/api/task/info/x?refresh=1"


def test_an_unreachable_flower_is_a_502():
    answer = _get(FlowerGate("http://127.0.0.1:9", LOGIN, INNER), "/", _basic(LOGIN.basic()))
    assert (answer.status_code, answer.json()["code"]) == (502, "upstream_unavailable")
    assert _get(FlowerGate("http://127.0.0.1:9", LOGIN, INNER), HEALTH_PATH, None).status_code == 502


def test_the_gates_health_needs_no_login_and_says_only_whether_flower_answers(upstream):
    answer = _get(FlowerGate(upstream, LOGIN, INNER), HEALTH_PATH, None)  # the stand-in answers 200 to anything
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("value,expected", [(_basic(b"a:b"), b"a:b"), (b"  basic   YTpi ", b"a:b"),
                                            (b"Basic YTpi\n", b"a:b"), (b"Digest YTpi", None)])
def test_presented(value, expected):
    assert presented(value) == expected


@pytest.mark.services
def test_the_gate_that_starts_flower_itself(redis_url, tmp_path):
    """What compose and Kubernetes run: `python -m api flower-gate` without --upstream starts Flower on loopback
    behind it, serves the login, and exits non-zero when Flower dies (so the container is restarted)."""
    import os
    import subprocess
    import sys
    import time

    from api.processes import child_pids, die_with_parent, free_port
    from tests.services.settings import REPO_ROOT

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REDIS_URL": redis_url, "FLOWER_GATE_AUTH": "admin:pässword",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "STORAGE_DIR": str(tmp_path / "storage"),
           "MODEL_DIR": str(tmp_path / "no-models"), "LIVENESS_DIR": str(tmp_path / "liveness")}
    gate = subprocess.Popen([sys.executable, "-m", "api", "flower-gate", "--port", str(port), "--",
                             "--purge_offline_workers=300"], env=env, cwd=REPO_ROOT, preexec_fn=die_with_parent(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}{HEALTH_PATH}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and gate.poll() is None, "the gate or its Flower never answered"
            time.sleep(0.3)
        login = base64.b64encode("admin:pässword".encode()).decode()
        assert httpx.get(f"{base}/api/workers", headers={"Authorization": f"Basic {login}"}).status_code == 200
        for hostile in ("dev:été", "admin:pässword" + "x", ":", "admin:p\u00e4ssword\u0000"):
            given = base64.b64encode(hostile.encode()).decode()
            assert httpx.get(f"{base}/api/workers", headers={"Authorization": f"Basic {given}"}).status_code == 401
        (flower,) = child_pids(gate.pid)
        os.kill(flower, 9)
        assert gate.wait(timeout=30) != 0
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()
