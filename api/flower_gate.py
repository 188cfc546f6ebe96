"""The gate in front of Flower: the operators' view answers only to the service's own login check.

Flower 2.2.0 (the newest release) compares Basic credentials as `str`, so a password with a non-ASCII
character makes it answer 500 (`hmac.compare_digest` refuses non-ASCII str). Flower itself therefore
listens on loopback on a private port, with a random ASCII password only this gate knows; the gate listens
where operators connect (FLOWER_PORT), checks `Authorization: Basic` as bytes in constant time against
`dev` + the dev key, and forwards what passes with Flower's private credentials. Anything else, whatever
its bytes or size, is a 401; an unreachable Flower is a 502. `/healthcheck` and `/metrics`, which Flower
serves without a login, need one here too. The gate's own `HEALTH_PATH` needs none (for probes): 200 when
Flower's health check answers, else 502, and nothing more.

    python -m api flower-gate --port 5555 --upstream http://127.0.0.1:5556   # what `make run` starts
    python -m api flower-gate --host 0.0.0.0 --port 5555 -- --purge_offline_workers=300   # starts Flower too
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

import httpx
from starlette.types import Receive, Scope, Send

from api.asgi import header
from api.processes import die_with_parent, stop_process

# A Basic credential longer than this is refused unread (a key is ~50 characters; the header's own cap is
# the server's, h11's 64 KiB).
MAX_CREDENTIAL_BYTES = 1024
# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the gate sets itself are not forwarded either way.
_NOT_FORWARDED = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade", b"host", b"authorization", b"content-length",
                  b"content-encoding"}  # fmt: skip


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def basic(self) -> bytes:
        """The `user:password` bytes a Basic header carries (UTF-8, as browsers send them)."""
        return f"{self.user}:{self.password}".encode()

    @classmethod
    def parse(cls, pair: str) -> Credentials:
        user, sep, password = pair.partition(":")
        if not (sep and user and password):
            raise ValueError("credentials must be `user:password`")
        return cls(user, password)


def presented(authorization: bytes | None) -> bytes | None:
    """The `user:password` bytes of a Basic header, or None for anything that is not one."""
    if authorization is None or len(authorization) > MAX_CREDENTIAL_BYTES:
        return None
    scheme, _, encoded = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class FlowerGate:
    """ASGI app: a login check, then Flower's answer."""

    def __init__(self, upstream: str, login: Credentials, upstream_login: Credentials):
        self.upstream = upstream.rstrip("/")
        self.expected = login.basic()
        self.upstream_auth = (upstream_login.user, upstream_login.password)
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # Flower 2 polls over HTTP; no websocket is forwarded
            return
        if scope["path"] == HEALTH_PATH:
            await self._health(send)
            return
        given = presented(header(scope, b"authorization"))
        # Bytes against bytes: compare_digest on str refuses non-ASCII, which is Flower's own 500.
        if given is None or not hmac.compare_digest(given, self.expected):
            await _answer(send, 401, {"code": "unauthorized", "message": "log in to the operators' view"},
                          [(b"www-authenticate", b'Basic realm="faceedit operators", charset="UTF-8"')])
            return
        await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(timeout=30, auth=self.upstream_auth)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _health(self, send: Send) -> None:
        client = self.client or httpx.AsyncClient(timeout=5)
        try:
            healthy = (await client.get(self.upstream + "/healthcheck", timeout=5)).status_code == 200
        except httpx.HTTPError:
            healthy = False
        finally:
            if client is not self.client:
                await client.aclose()
        await _answer(send, 200 if healthy else 502, {"status": "ok" if healthy else "flower unreachable"})

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        url = self.upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_FORWARDED]
        client = self.client or httpx.AsyncClient(timeout=30, auth=self.upstream_auth)
        try:
            answer = await client.request(scope["method"], url, headers=headers, content=bytes(body))
        except httpx.HTTPError as error:
            await _answer(send, 502, {"code": "upstream_unavailable",
                                      "message": f"Flower did not answer ({type(error).__name__})"})
            return
        finally:
            if client is not self.client:
                await client.aclose()
        kept = [(k, v) for k, v in answer.headers.raw if k.lower() not in _NOT_FORWARDED]
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": [*kept, (b"content-length", str(len(answer.content)).encode())]})
        await send({"type": "http.response.body", "body": answer.content})


async def _answer(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


HEALTH_PATH = "/gate-healthz"
UPSTREAM_AUTH_ENV = "FLOWER_BASIC_AUTH"  # Flower reads its own login from this variable too
LOGIN_ENV = "FLOWER_GATE_AUTH"  # the setting `flower_gate_auth` (common/settings.py)


def run_gate(host: str, port: int, upstream: str | None, flower_args: list[str]) -> int:
    """Serve the gate (credentials from the environment: never on a command line, which `ps` shows). Without
    `upstream`, start Flower itself (`flower_args` added), on a free loopback port with a random password
    only this process knows, and stop when it stops (what compose and Kubernetes run: one container, and a
    Flower that exits takes the gate along, so the container is restarted)."""
    import uvicorn

    from common.settings import Settings

    configured = Settings().flower_gate_auth
    if not configured:
        raise SystemExit(f"{LOGIN_ENV} is not set: the operators' login (user:password) the gate asks for")
    login = Credentials.parse(configured)
    flower = None
    if upstream is None:
        flower, upstream, inner = _start_flower(flower_args)
    else:
        inner = Credentials.parse(os.environ[UPSTREAM_AUTH_ENV])
    server = uvicorn.Server(uvicorn.Config(FlowerGate(upstream, login, inner), host=host, port=port,
                                           log_level="warning"))
    if flower is not None:
        threading.Thread(target=_stop_with, args=(flower, server), daemon=True).start()
    try:
        server.run()
    finally:
        if flower is not None and flower.poll() is None:
            stop_process(flower, timeout=10)
    return 1 if flower is not None and flower.returncode not in (None, 0, -signal.SIGTERM) else 0


def _start_flower(flower_args: list[str]) -> tuple[subprocess.Popen, str, Credentials]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inner = Credentials("gate", secrets.token_urlsafe(24))
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "flower", "--address=127.0.0.1", f"--port={port}",
            *flower_args]  # fmt: skip
    # Flower dies with the gate however the gate ends (a SIGKILL leaves no Flower holding the port or a pipe).
    flower = subprocess.Popen(argv, env={**os.environ, UPSTREAM_AUTH_ENV: f"{inner.user}:{inner.password}"},
                              preexec_fn=die_with_parent())
    return flower, f"http://127.0.0.1:{port}", inner


def _stop_with(flower: subprocess.Popen, server) -> None:
    """Flower exited: stop serving (the process exits non-zero and its supervisor restarts both)."""
    flower.wait()
    server.should_exit = True
